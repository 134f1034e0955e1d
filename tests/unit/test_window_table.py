"""The backtest's ``windows.parquet`` columns are computed per column; they must equal each result's own properties."""

import random

import numpy as np
import pyarrow.parquet as pq

from finsent.backtest.run import WINDOW_SCHEMA, window_table
from finsent.stream.windows import Closed


def test_window_columns_equal_each_results_properties(tmp_path):
    rng = random.Random(7)
    rows = []
    for i in range(2_000):
        negative, neutral, positive = rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 9)
        count = negative + neutral + positive
        # score sums inside [-count, count], and some outside it (float drift), which the mean clamps to [-1, 1]
        score_sum = rng.uniform(-1.2, 1.2) * count
        width = rng.choice((300, 900, 3600))
        rows.append(
            Closed(f"topic:{i % 7}", width, 1_700_000_000 + 60 * i, negative, neutral, positive, score_sum, i % 3, ())
        )
    rows.append(Closed("all", 300, 1_700_000_000, 0, 0, 0, 0.0, 0, ()))  # empty: shares and means are 0
    table = window_table(rows)
    assert table.schema.equals(WINDOW_SCHEMA)
    pq.write_table(table, tmp_path / "w.parquet")
    table = pq.read_table(tmp_path / "w.parquet")  # as a reader of the backtest's output sees it
    got = table.to_pylist()
    assert len(got) == len(rows)
    for row, c in zip(got, rows, strict=True):
        assert row["key"] == c.key and row["width_s"] == c.width_s and row["revision"] == c.revision
        assert row["start"] == c.start and row["end"] == c.end
        assert (row["count"], row["negative"], row["neutral"], row["positive"]) == (
            c.count,
            c.negative,
            c.neutral,
            c.positive,
        )
        assert row["negative_share"] == float(np.float32(c.negative_share))
        assert row["mean_score"] == float(np.float32(c.mean_score))
    assert any(abs(c.score_sum) > c.count > 0 for c in rows)  # the clamp was exercised
