"""``finsent backtest``: the live pipeline's pure steps over the archive, without a broker.

Same lines as the worker and the aggregator: ``to_scored`` → ``Aggregation`` (windows + surge
detector) — only the I/O differs: items come from the archive in event-time order, scores from the
classifier in large batches or from a cache keyed by (item id, model version), so a second run with
other window/surge settings does no inference at all.

Items pass the same edge check as in the worker (``checked_item``: future times clamped, tickers capped).

Outputs in ``--out`` (a folder): ``alerts.jsonl`` (the final SurgeAlerts, firing and resolved, with
evidence: provisional early firings that were confirmed or retracted are folded in), ``alerts-changelog.jsonl``
(every alert record in the order the live worker would publish it), ``windows.parquet`` (every window
result: key, width, start, end, revision, counts, negative share, mean score; keep the highest revision),
``scores.parquet`` (item id, published, tickers, topic, sentiment, probabilities) for event studies,
and ``run.json`` (model version, settings, data range, counts, timings).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from finsent.errors import ConfigError
from finsent.files import move_aside
from finsent.heap import fewer_young_collections
from finsent.osthreads import prompt_gil_handoff
from finsent.records import NewsItem, Prediction, SurgeAlert, checked_item
from finsent.settings import Settings
from finsent.stream.pipeline import Aggregation, final_alerts, text_of, to_scored
from finsent.stream.windows import Closed

log = logging.getLogger("finsent.backtest.run")


# What the windows need from a prediction (and what an event study reads), without the model: the prediction.
CachedScore = Prediction


# Every file a backtest (and its report) writes into --out; a new run removes them first, so that nothing in the
# folder describes another run (a rerun without --prices, or one stopped with Ctrl-C, left the old report beside it).
OUTPUTS = (
    "scores.parquet",
    "windows.parquet",
    "alerts-changelog.jsonl",
    "alerts.jsonl",
    "run.json",
    "report.html",
    "eventstudy.json",
)


class ScoreCache:
    """Predictions by (item id, model version) in SQLite: a rerun with other settings skips inference.

    A row keeps the labels as text and both heads' probabilities as one packed float64 array (exact: a cached
    score is the float the model gave), in the order of the model's labels, kept once per model. As JSON,
    encoding 23 probabilities was a sixth of a backtest's bookkeeping (15 us against 0.8 per headline).
    Caches of the JSON layout (table ``scores``) are left as they are and not read: those items are scored again.
    """

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open(path)
        except sqlite3.DatabaseError as err:  # not a database, or a damaged one: only scores, so scored again
            moved = move_aside(path)
            log.error(
                "score cache unreadable: moved aside, starting an empty one (its items are scored again)",
                extra={"path": str(path), "moved_to": str(moved), "error": str(err)},
            )
            self._open(path)
        self._labels: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def _open(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self._create()
        except BaseException:
            self.db.close()
            raise

    def _create(self) -> None:
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS predictions (model TEXT NOT NULL, item_id TEXT NOT NULL, topic TEXT NOT NULL,"
            " sentiment TEXT NOT NULL, name TEXT NOT NULL, flag TEXT, probs BLOB NOT NULL, PRIMARY KEY (model, item_id))"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS labels (model TEXT PRIMARY KEY, topics TEXT NOT NULL, sentiments TEXT NOT NULL)"
        )
        self.db.execute("SELECT COUNT(*) FROM labels").fetchone()  # a damaged file fails here, not mid-run

    def _labels_of(self, model: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        labels = self._labels.get(model)
        if labels is None:
            row = self.db.execute("SELECT topics, sentiments FROM labels WHERE model = ?", [model]).fetchone()
            if row is None:
                return None
            labels = self._labels[model] = (tuple(json.loads(row[0])), tuple(json.loads(row[1])))
        return labels

    def get_many(self, model: str, ids: list[str]) -> dict[str, CachedScore]:
        labels = self._labels_of(model)
        if labels is None:
            return {}
        topics, sentiments = labels
        n = len(topics)
        out: dict[str, CachedScore] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            rows = self.db.execute(
                "SELECT item_id, topic, sentiment, name, flag, probs FROM predictions"
                f" WHERE model = ? AND item_id IN ({','.join('?' * len(part))})",
                [model, *part],
            ).fetchall()
            for item_id, topic, sentiment, name, flag, blob in rows:
                probs = array("d")
                probs.frombytes(blob)
                values = probs.tolist()
                out[item_id] = CachedScore(
                    topic, dict(zip(topics, values[:n])), sentiment, dict(zip(sentiments, values[n:])), name, flag
                )
        return out

    def put_many(self, model: str, scores: dict[str, CachedScore]) -> None:
        if not scores:
            return
        labels = self._labels_of(model)
        if labels is None:
            first = next(iter(scores.values()))
            labels = (tuple(first.topic_probs), tuple(first.sentiment_probs))
        topics, sentiments = labels
        rows = []
        for item_id, s in scores.items():
            if tuple(s.topic_probs) != topics or tuple(s.sentiment_probs) != sentiments:
                raise ValueError(f"{item_id}: its labels are not those cached for {model}: {topics}, {sentiments}")
            probs = array("d", [*s.topic_probs.values(), *s.sentiment_probs.values()])
            rows.append((model, item_id, s.topic, s.sentiment, s.model, s.flag, probs.tobytes()))
        with self.db:
            if model not in self._labels:
                self.db.execute(
                    "INSERT OR IGNORE INTO labels (model, topics, sentiments) VALUES (?,?,?)",
                    [model, json.dumps(topics), json.dumps(sentiments)],
                )
                self._labels[model] = labels
            self.db.executemany("INSERT OR REPLACE INTO predictions VALUES (?,?,?,?,?,?,?)", rows)

    def close(self) -> None:
        self.db.close()


@dataclass
class BacktestReport:
    items: int
    inferred: int
    cached: int
    windows: int
    alerts: list[SurgeAlert]
    seconds: float
    inference_seconds: float  # summed over the model calls: above ``seconds`` when they ran side by side
    out_dir: Path

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0


def _batches(items: Iterable[NewsItem], size: int) -> Iterator[list[NewsItem]]:
    batch: list[NewsItem] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


WINDOW_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("width_s", pa.int32()),
        ("start", pa.timestamp("s", tz="UTC")),
        ("end", pa.timestamp("s", tz="UTC")),
        ("revision", pa.int32()),
        ("count", pa.int32()),
        ("negative", pa.int32()),
        ("neutral", pa.int32()),
        ("positive", pa.int32()),
        ("negative_share", pa.float32()),
        ("mean_score", pa.float32()),
    ]
)
SCORE_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("published", pa.timestamp("s", tz="UTC")),
        ("source", pa.string()),
        ("tickers", pa.list_(pa.string())),
        ("topic", pa.string()),
        ("sentiment", pa.string()),
        ("p_negative", pa.float32()),
        ("p_neutral", pa.float32()),
        ("p_positive", pa.float32()),
        ("score", pa.float32()),
    ]
)


def window_table(rows: list[Closed]) -> pa.Table:
    """Window results as ``WINDOW_SCHEMA`` columns. The derived columns (start, count, negative share, mean score)
    are computed per column, not per row: read through each result's properties they were an eighth of a
    backtest's bookkeeping (ten results per headline). Same values as the properties: the same float64
    division and clamp, then the column's float32."""
    width = np.fromiter((c.width_s for c in rows), np.int64, len(rows))
    end = np.fromiter((c.end_s for c in rows), np.int64, len(rows))
    negative = np.fromiter((c.negative for c in rows), np.int64, len(rows))
    neutral = np.fromiter((c.neutral for c in rows), np.int64, len(rows))
    positive = np.fromiter((c.positive for c in rows), np.int64, len(rows))
    score_sum = np.fromiter((c.score_sum for c in rows), np.float64, len(rows))
    count = negative + neutral + positive
    held = count > 0  # a window result always holds a headline; guarded anyway, as the properties are
    safe = np.where(held, count, 1)
    return pa.Table.from_pydict(
        {
            "key": [c.key for c in rows],
            "width_s": width,
            "start": end - width,  # epoch seconds: the column's own unit
            "end": end,
            "revision": np.fromiter((c.revision for c in rows), np.int64, len(rows)),
            "count": count,
            "negative": negative,
            "neutral": neutral,
            "positive": positive,
            "negative_share": np.where(held, negative / safe, 0.0),
            "mean_score": np.where(held, np.clip(score_sum / safe, -1.0, 1.0), 0.0),
        },
        schema=WINDOW_SCHEMA,
    )


def run_backtest(
    settings: Settings,
    items: Iterable[NewsItem],
    out_dir: Path,
    model: str,
    predict: Callable[[list[str]], list] | None,
    cache: ScoreCache,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    data_range: tuple[datetime | None, datetime | None] = (None, None),
    calls_at_once: int = 1,
) -> BacktestReport:
    """``items`` in event-time order (``Archive.read`` gives that); ``predict`` may be None when all is cached.
    ``calls_at_once``: batches scored side by side (``predict`` must then be thread-safe, as
    ``Classifier.predict`` is); their results are used strictly in order either way."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file; the backtest writes its outputs into a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in OUTPUTS:  # a reused --out held the last run's report and study beside this run's files
        (out_dir / stale).unlink(missing_ok=True)
    agg = Aggregation(settings)
    started = time.perf_counter()
    inference_s = 0.0
    n = inferred = cached_n = n_windows = 0
    records: list[SurgeAlert] = []
    last: datetime | None = None
    windows_writer = pq.ParquetWriter(out_dir / "windows.parquet", WINDOW_SCHEMA)
    scores_writer = pq.ParquetWriter(out_dir / "scores.parquet", SCORE_SCHEMA)
    changelog = (out_dir / "alerts-changelog.jsonl").open("wb")
    now = datetime.now(UTC)
    w = settings.windows

    closed_rows: list[Closed] = []  # window results since the last write: one Parquet write per batch, not per item

    def emit(out) -> None:
        closed_rows.extend(out.windows)
        for alert in out.alerts:
            records.append(alert)
            changelog.write(alert.to_json() + b"\n")

    def write_windows() -> None:
        nonlocal n_windows
        if not closed_rows:
            return
        windows_writer.write_table(window_table(closed_rows))
        n_windows += len(closed_rows)
        closed_rows.clear()

    def timed_predict(texts: list[str]) -> tuple[list, float]:
        t0 = time.perf_counter()
        preds = predict(texts)  # type: ignore[misc]  # checked before it is submitted
        return preds, time.perf_counter() - t0

    def submit(batch: list[NewsItem]) -> tuple[list[NewsItem], dict, list[NewsItem], Future | None]:
        """Look batch up in the cache and start scoring what is missing, in a model thread."""
        known = cache.get_many(model, [it.id for it in batch])
        missing = [it for it in batch if it.id not in known]
        if not missing:
            return batch, known, missing, None
        if predict is None:
            raise RuntimeError(f"{len(missing)} items are not in the score cache for {model} and no model was given")
        return batch, known, missing, model_threads.submit(timed_predict, [text_of(it) for it in missing])

    def finish(batch: list[NewsItem], known: dict, missing: list[NewsItem], scoring: Future | None) -> None:
        """Wait for the batch's scores, cache them, then windows, surges and the Parquet rows, in order."""
        nonlocal inference_s, inferred, cached_n, n, last
        if scoring is not None:
            preds, seconds = scoring.result()
            inference_s += seconds
            fresh = {
                it.id: CachedScore(p.topic, p.topic_probs, p.sentiment, p.sentiment_probs, p.model, p.flag)
                for it, p in zip(missing, preds)
            }
            cache.put_many(model, fresh)
            known.update(fresh)
            inferred += len(missing)
        cached_n += len(batch) - len(missing)
        checked = [checked_item(it, now, w.future_tolerance_s, w.max_tickers_per_item)[0] for it in batch]
        scored_batch = [to_scored(it, known[it.id], it.published) for it in checked]
        scores_writer.write_table(
            pa.Table.from_pydict(
                {
                    "item_id": [s.item.id for s in scored_batch],
                    "published": [s.item.published for s in scored_batch],
                    "source": [s.item.source for s in scored_batch],
                    "tickers": [list(s.item.tickers) for s in scored_batch],
                    "topic": [s.topic for s in scored_batch],
                    "sentiment": [s.sentiment for s in scored_batch],
                    "p_negative": [s.sentiment_probs["negative"] for s in scored_batch],
                    "p_neutral": [s.sentiment_probs["neutral"] for s in scored_batch],
                    "p_positive": [s.sentiment_probs["positive"] for s in scored_batch],
                    "score": [s.score for s in scored_batch],
                },
                schema=SCORE_SCHEMA,
            )
        )
        for scored in scored_batch:
            emit(agg.add(scored))
            last = scored.item.published
        emit(agg.end_step())
        write_windows()
        n += len(batch)
        if progress:
            progress(len(batch))
        if n // 10_000 != (n - len(batch)) // 10_000:  # a log line per 10k items, for runs without a terminal
            log.info(
                "backtest progress",
                extra={
                    "items": n,
                    "inferred": inferred,
                    "alert_records": len(records),
                    "items_per_s": round(n / (time.perf_counter() - started), 1),
                    "at": last.isoformat() if last else None,
                },
            )

    # The next batches are scored in model threads while this thread caches, aggregates and writes the oldest:
    # the model (which releases the GIL) is never idle for the bookkeeping (measured: 16 % of a backtest's time
    # when it ran in between). Results are processed strictly in order, so the output is the same. Each model thread
    # has a batch queued behind the one it runs: with only the running ones submitted, a thread finishing while this
    # thread did the bookkeeping of the previous batch waited for it (model calls ran 1.88 x the wall time of 2).
    model_threads = ThreadPoolExecutor(max_workers=calls_at_once, thread_name_prefix="finsent-backtest-model")
    # finsent.heap: the bookkeeping's garbage is freed by reference counting; finsent.osthreads: a model thread
    # returning from a forward gets the GIL from the bookkeeping at once, not after up to 5 ms with its core idle
    with fewer_young_collections(), prompt_gil_handoff(settings.model.gil_handoff_s):
        try:
            pending: deque = deque()
            for batch in _batches(items, batch_size):
                pending.append(submit(batch))
                if len(pending) > 2 * calls_at_once:
                    finish(*pending.popleft())
            while pending:
                finish(*pending.popleft())
            if last is not None:
                # The end of the data: what the live idle timer does once the stream goes quiet.
                emit(
                    agg.advance(
                        last + timedelta(seconds=max(w.rolling_seconds) + w.watermark_delay_s + w.bucket_seconds)
                    )
                )
                emit(agg.end_step())
        finally:
            try:
                # What is still buffered: the end of the data's windows, or those of a batch that failed part-way
                # (its alerts are in the changelog already, so its windows go out too).
                write_windows()
            finally:
                model_threads.shutdown(wait=True, cancel_futures=True)  # a batch being scored finishes; none is started
                windows_writer.close()
                scores_writer.close()
                changelog.close()
    alerts = final_alerts(records)
    with (out_dir / "alerts.jsonl").open("wb") as fh:
        fh.writelines(a.to_json() + b"\n" for a in alerts)
    seconds = time.perf_counter() - started
    report = BacktestReport(n, inferred, cached_n, n_windows, alerts, seconds, inference_s, out_dir)
    start, end = data_range
    (out_dir / "run.json").write_text(
        json.dumps(
            {
                "model": model,
                "items": n,
                "inferred": inferred,
                "cached": cached_n,
                "windows": n_windows,
                "alerts": len(alerts),
                "firing": sum(a.state == "firing" for a in alerts),
                "seconds": round(seconds, 3),
                "inference_seconds": round(inference_s, 3),
                "items_per_s": round(report.items_per_s, 1),
                "data_range": [start.isoformat() if start else None, end.isoformat() if end else None],
                "settings": {"windows": settings.windows.model_dump(), "surge": settings.surge.model_dump()},
                "finished_at": datetime.now(UTC).isoformat(),
            },
            indent=2,
        )
    )
    log.info(
        "backtest done",
        extra={
            "items": n,
            "inferred": inferred,
            "cached": cached_n,
            "alerts": len(alerts),
            "seconds": round(seconds, 2),
            "out": str(out_dir),
        },
    )
    return report


def served_backend(model_dir: Path, backend: str, device: str) -> str:
    """The name of the backend (``Backend.name``) a classifier loaded with these settings serves, found without
    loading it, by ``finsent.model.backends.make_backend``'s own rules: on a GPU torch (fp16), else the model's
    measured choice (export.json), else ONNX fp32 when ONNX Runtime is there, else torch.

    The score cache is keyed by it, not by the setting: "auto" names no backend (ONNX int8 on one machine, fp16
    torch on a GPU), and their scores differ in the last digits, so an "auto" key let one backend's scores pass
    for another's."""
    from finsent.model.backends import auto_cpu_backend, resolve_device

    on_gpu = resolve_device(device).type == "cuda"
    if backend == "auto":
        if on_gpu:
            return "torch-cuda"
        backend = auto_cpu_backend(model_dir)
    if backend == "torch" and on_gpu:
        return "torch-cuda"
    return backend


SERVED_RECIPES = {"torch": "fp32", "torch-cuda": "fp16", "torch-int8": "int8-dynamic", "onnx": "fp32"}


def served_recipe(model_dir: Path, served: str) -> str:
    """The graph (``Backend.recipe``) backend ``served`` runs for this model, found without loading it: for ONNX int8
    the recipe ``finsent.model.backends.int8_choice`` picks (the gate's, else the plan's static, else dynamic)."""
    if served != "onnx-int8":
        return SERVED_RECIPES[served]
    from finsent.model.backends import int8_choice

    return f"int8-{int8_choice(model_dir).recipe}"


def score_key(model_dir: Path, served: str, reads_as: str = "news") -> str:
    """The score cache's key: model version, backend served, its graph, the weights' SHA-256 and, for static int8,
    the plan's SHA-256.

    Why more than version and backend: a model directory retrained or edited in place keeps its version but not
    its scores, and a re-made static int8 plan (or another int8 recipe accepted) changes the graph and its scores
    without touching the weights; a key of version and backend alone handed out the stale scores of either."""
    from finsent.model import artifact, int8_static, onnxbuild

    recipe = served_recipe(model_dir, served)
    meta = artifact.load_meta(model_dir)
    parts = [
        meta.full_name,
        served,
        recipe,
        f"weights:{onnxbuild.weights_digest(model_dir)[:16]}",
    ]
    if recipe == "int8-static":
        parts.append(f"plan:{(int8_static.current_plan_digest(model_dir) or 'none')[:16]}")
    if meta.domain_prefixes:  # a tagged model scores tweets and headlines differently
        parts.append(f"reads:{reads_as}")
    return "/".join(parts)


def backtest_archive(
    settings: Settings,
    items: Iterable[NewsItem],
    out_dir: Path,
    model_dir: Path,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    data_range: tuple[datetime | None, datetime | None] = (None, None),
) -> BacktestReport:
    """``run_backtest`` with the settings' model and the on-disk score cache: the model is loaded only when
    something is not cached yet, and scores are cached per ``score_key`` (model version, backend served, its graph,
    weights and static plan). Batches are scored side by side, one single-threaded call per core unless
    ``model.threads`` says otherwise (``finsent.model.placement``; the model loads lazily, so the count cannot depend
    on the backend: with torch the calls share its threads)."""
    from finsent.model import Classifier
    from finsent.model.placement import calls_for_threads, side_by_side

    choice = side_by_side(settings.model)
    calls = calls_for_threads(choice.threads)

    classifier = None
    loading = threading.Lock()

    served = served_backend(model_dir, choice.backend, choice.device)
    recipe = served_recipe(model_dir, served)

    def predict(texts: list[str]) -> list:
        nonlocal classifier
        with loading:  # called from several model threads: load once
            if classifier is None:  # only when something is not cached
                loaded = Classifier.from_settings(model_dir, choice)
                name = getattr(loaded.backend, "name", served)
                if name != served:  # auto fell back (an int8 graph that would not build): not the key's scores
                    raise ConfigError(
                        f"model.backend {choice.backend} served {name}, not {served} as expected; "
                        f"set model.backend (FINSENT_MODEL__BACKEND) to {name} and run the backtest again"
                    )
                graph = getattr(loaded.backend, "recipe", recipe)
                if graph != recipe:  # the model directory changed since the key was made: not the key's scores
                    raise ConfigError(f"{served} served {graph}, not {recipe} as expected; run the backtest again")
                loaded.ready_for_calls(calls)
                classifier = loaded
        return classifier.predict(texts)

    # by the backend and graph that score, and the weights: not the setting ("auto" scores are not reused for
    # another backend), nor a version's name alone (retrained in place, or re-planned, it scores differently)
    model_key = score_key(model_dir, served, choice.reads_as)
    cache = ScoreCache(settings.paths.state_dir / "backtest" / "scores.sqlite")
    try:
        return run_backtest(
            settings,
            items,
            out_dir,
            model_key,
            predict,
            cache,
            batch_size,
            progress=progress,
            data_range=data_range,
            calls_at_once=calls,
        )
    finally:
        cache.close()


__all__ = [
    "BacktestReport",
    "CachedScore",
    "ScoreCache",
    "backtest_archive",
    "run_backtest",
    "score_key",
    "served_backend",
    "served_recipe",
]
