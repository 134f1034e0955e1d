"""The topic × time heatmap grid: columns are window ends, cells negative share and volume, gaps stay gaps."""

from __future__ import annotations

from datetime import timedelta

from factories import T0, window_stat

from finsent.records import WindowStat
from finsent.web.heatmap import heatmap


def window(key: str, minute: int, count: int, negative: int, width_s: int = 300) -> WindowStat:
    return window_stat(key, at=T0 + timedelta(minutes=minute), width_s=width_s, count=count, negative=negative)


def test_rows_busiest_first_cells_aligned_on_window_ends_and_gaps_left_empty():
    windows = {
        ("topic:Macro", 300): [window("topic:Macro", 0, 4, 1), window("topic:Macro", 2, 4, 3)],
        ("topic:Energy | Oil", 300): [window("topic:Energy | Oil", 1, 10, 5)],
        ("topic:Energy | Oil", 900): [window("topic:Energy | Oil", 0, 50, 5, width_s=900)],  # other width: not shown
        ("ticker:XOM", 300): [window("ticker:XOM", 1, 99, 99)],  # other prefix: not shown
        ("topic:Empty", 300): [window("topic:Empty", 1, 0, 0)],  # no volume: no row
    }
    grid = heatmap(windows, "topic:", 300)
    assert grid["width"] == 300 and len(grid["ends"]) == 3 and grid["ends"] == sorted(grid["ends"])
    assert [r["key"] for r in grid["rows"]] == ["topic:Energy | Oil", "topic:Macro"]
    oil, macro = grid["rows"]
    assert oil["cells"] == [None, [0.5, 10], None] and oil["count"] == 10
    assert macro["cells"] == [[0.25, 4], None, [0.75, 4]] and macro["count"] == 8


def test_only_the_newest_columns_are_kept():
    windows = {("topic:Macro", 300): [window("topic:Macro", m, 2, 1) for m in range(10)]}
    grid = heatmap(windows, "topic:", 300, columns=3)
    assert len(grid["ends"]) == 3 and grid["rows"][0]["count"] == 6
    assert grid["ends"][-1] == (T0 + timedelta(minutes=9, seconds=300)).isoformat()
