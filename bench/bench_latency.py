"""Surge alert latency with the production window/surge settings, through the whole ``finsent demo`` stack.

    .venv/bin/python bench/bench_latency.py [--tickers 16] [--history-min 30] [--rate-per-min 3] [--gap-s 10]
                                            [--burst-tail 6] [--budget-s 480] [--no-confirm] [--keep]

Measured, per synthetic ticker, from the *published time of the headline that made the window cross the
threshold* to:

(a) the SurgeAlert on ``finsent.alerts`` (its Kafka record timestamp, ms), goal p99 <= 5 s;
(b) the compliance receiver's audit-log row for that ticker (``received_at`` in its SQLite audit DB: worker
    gauge -> Prometheus scrape + rule ``for: 4s`` -> Alertmanager group_wait -> webhook), goal p99 <= 30 s.

Set-up: ``finsent demo`` (embedded broker, Prometheus, Alertmanager, feeds + ingest, receiver, worker, API) on
free ports and a fresh state dir, with the *default* windows and surge settings (60 s buckets, 5 min surge
window, warm-up 5 windows, z 3.0, min_volume 5, 120 s watermark delay): setting FINSENT_WINDOWS__BUCKET_SECONDS
explicitly keeps the demo from applying its compressed time scale. The demo feeds' own scripted oil burst is
moved past the end of the run so that the only surges are ours.

Experiment: ``--tickers`` keys no demo headline uses (ZQA01, ...), each its own surge key ``ticker:<T>``.

1. Baseline: ``--history-min`` minutes of background headlines per ticker (``--rate-per-min`` each, event-time
   order, demo "background" rows) published straight to ``finsent.news.raw``; then wait until the worker has
   scored them and its watermark has closed enough 5-min windows for the warm-up. (The demo's feed backlog
   reaches the worker first, so most of this history goes in as *late* items: counted in their own buckets,
   windows revised, detector re-judged; the detector ends up in the same state either way.)
2. Live: background continues per ticker with published = now; then, one ticker at a time, ``--gap-s``
   apart, a burst of negative headlines (demo "burst" rows) one every ``--burst-interval-s`` with published =
   the wall time of the send, until the ticker's firing SurgeAlert shows up on ``finsent.alerts``
   (or ``--max-burst`` items), then ``--burst-tail`` more: a burst stopped right at the threshold is diluted by
   the background still arriving in its bucket, and the complete window then retracts the early alert.
3. Crossing headline: the alert's window [window_start, window_end) of that ticker holds the items we sent
   there; sorted by published time, the crossing headline is the ``alert.count``-th (count = items in the
   window when it fired). The first firing record per ticker (early or close) is used. Cross-checked with
   the scored topic's sentiments: the first prefix of the window that meets the firing rule against the
   alert's baseline should end at the same headline.
4. With ``--confirm`` (default) the run waits for the close-time judgement of every first firing (window end +
   the 120 s watermark delay) and reports it confirmed, retracted or still pending.

The SurgeAlert record timestamps are CreateTime: set by the worker's producer as it sends the record (the
embedded broker keeps them); same host clock as the headlines' publish times.

The whole run is bounded by ``--budget-s`` (startup included; fewer tickers get a burst if time runs out),
and the demo and all its children are stopped on exit, on Ctrl-C and on SIGTERM. On a 2-core machine the
benchmark, the broker, the worker, Prometheus, Alertmanager, ingest, the receiver and the API share the
cores, plus whatever else runs there (the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
from benchkit import command_of, write_results
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from finsent.kafka import read_all
from finsent.local.feeds import load_rows
from finsent.net import free_port
from finsent.records import NewsItem, ScoredItem, SurgeAlert
from finsent.settings import Settings, Surge, Windows, load
from finsent.stream.pipeline import final_alerts

ROOT = Path(__file__).resolve().parents[1]
GOAL_A_S = 5.0
GOAL_B_S = 30.0


# -- settings and the demo process ---------------------------------------------------------------------
def demo_env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    ports = [
        "BROKER__PORT",
        "SERVICES__PROMETHEUS_PORT",
        "SERVICES__ALERTMANAGER_PORT",
        "SERVICES__ALERTMANAGER_CLUSTER_PORT",
        "STREAM__METRICS_PORT",
        "RECEIVER__PORT",
        "WEB__PORT",
        "INGEST__METRICS_PORT",
        "INGEST__DEMO_FEEDS_PORT",
    ]
    env.update({f"FINSENT_{name}": str(free_port()) for name in ports})
    env.update(
        {
            "FINSENT_PATHS__STATE_DIR": str(state),
            # Any FINSENT_WINDOWS__*/FINSENT_SURGE__* variable turns the demo's compressed time scale off; these
            # are the defaults, spelled out.
            "FINSENT_WINDOWS__BUCKET_SECONDS": "60",
            "FINSENT_SURGE__WINDOW_S": "300",
            "FINSENT_INGEST__DEMO_BURST_AT_S": "86400",  # the demo feeds' oil burst: not during this run
        }
    )
    return env


def settings_for(env: dict[str, str]) -> Settings:
    """The Settings the demo's children see with ``env``."""
    saved = dict(os.environ)
    try:
        for k in [k for k in os.environ if k.startswith("FINSENT_")]:
            del os.environ[k]
        os.environ.update({k: v for k, v in env.items() if k.startswith("FINSENT_")})
        return load()
    finally:
        os.environ.clear()
        os.environ.update(saved)


class Demo:
    """``finsent demo`` as a child in its own session; stop() ends it (and with it every service it started)."""

    def __init__(self, env: dict[str, str], state: Path, log: Path):
        self.env, self.state, self.log = env, state, log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float) -> dict:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "finsent.cli", "demo"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        info = self.state / "demo.json"
        deadline = time.monotonic() + timeout_s
        while not info.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"finsent demo exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"finsent demo not up after {timeout_s:.0f} s:\n{self.tail()}")
            time.sleep(0.2)
        time.sleep(0.2)  # written in one go, but do not race the write
        return json.loads(info.read_text())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=45)
        except subprocess.TimeoutExpired:  # its children go too: they die with their parent (PDEATHSIG)
            self.proc.kill()
            self.proc.wait()

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


# -- probes -----------------------------------------------------------------------------------------------
def metrics(url: str) -> dict[str, float]:
    """Samples of a /metrics page: 'name{labels}' -> value."""
    out = {}
    for line in httpx.get(url, timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def msum(samples: dict[str, float], name: str, contains: str = "") -> float:
    return sum(v for k, v in samples.items() if (k == name or k.startswith(name + "{")) and contains in k)


class AlertTail(threading.Thread):
    """Follows ``finsent.alerts`` (1 partition) from the beginning: (offset, record timestamp ms, its type, alert)."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True, name="alert-tail")
        self.bootstrap, self.topic = bootstrap, topic
        self.records: list[tuple[int, int, int, SurgeAlert]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100
            )  # Tansu holds an empty fetch for the whole wait
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            while not self.stopping.is_set():
                for records in consumer.poll(timeout_ms=200).values():
                    with self.lock:
                        self.records += [
                            (r.offset, r.timestamp, r.timestamp_type, SurgeAlert.from_json(r.value)) for r in records
                        ]
            consumer.close()
        except BaseException as err:
            self.error = err

    def snapshot(self) -> list[tuple[int, int, int, SurgeAlert]]:
        with self.lock:
            return list(self.records)

    def first_firing(self, key: str, since_ms: int) -> tuple[int, int, int, SurgeAlert] | None:
        for rec in self.snapshot():
            a = rec[3]
            if a.key == key and a.state == "firing" and not a.retracted and rec[1] >= since_ms:
                return rec
        return None


def audit_rows(db: Path) -> list[dict]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        cur = con.execute(
            "SELECT seq, received_at, status, alertname, severity, dim, name, starts_at, surge_alert_id,"
            " receiver FROM notifications ORDER BY seq"
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]
    except sqlite3.OperationalError:  # the receiver has not created its tables yet
        return []
    finally:
        con.close()


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def quantiles(xs: list[float]) -> dict:
    xs = sorted(xs)
    if not xs:
        return {"n": 0}
    if len(xs) == 1:
        return {"n": 1, "p50_s": xs[0], "p99_s": xs[0], "min_s": xs[0], "max_s": xs[0], "mean_s": xs[0]}
    q = statistics.quantiles(xs, n=100, method="inclusive")  # few samples: interpolate, never extrapolate
    return {
        "n": len(xs),
        "p50_s": q[49],
        "p99_s": q[98],
        "min_s": xs[0],
        "max_s": xs[-1],
        "mean_s": statistics.fmean(xs),
    }


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# -- the experiment -----------------------------------------------------------------------------------------
class Feed:
    """Our headlines: the per-ticker background schedule, bursts, and everything sent (for the analysis)."""

    def __init__(
        self,
        producer: KafkaProducer,
        topic: str,
        tickers: list[str],
        rate_per_min: float,
        history_start: float,
        horizon: float,
        seed: int = 7,
    ):
        rows = load_rows()
        self.background = [t for kind, t in rows if kind == "background"]
        self.burst = [t for kind, t in rows if kind == "burst"]
        self.rng = random.Random(seed)
        self.producer, self.topic = producer, topic
        self.sent: dict[str, list[NewsItem]] = {t: [] for t in tickers}
        self.n = 0
        # Each ticker: rate_per_min items per minute at random offsets (event times), sorted overall.
        sched = []
        step = 60.0 / rate_per_min
        for t in tickers:
            k = 0
            while (at := history_start + (k + self.rng.random()) * step) < horizon:
                sched.append((at, t))
                k += 1
        self.schedule = sorted(sched)
        self.next = 0

    def _item(self, ticker: str, title: str, published: datetime, kind: str) -> NewsItem:
        self.n += 1
        return NewsItem(
            id=f"bench-{ticker}-{kind}{self.n}",
            title=title,
            source="bench-latency",
            published=published,
            fetched=published,
            tickers=(ticker,),
        )

    def history(self, until: float) -> int:
        """Every scheduled item before ``until``, with its scheduled publish time, in event-time order."""
        n = 0
        while self.next < len(self.schedule) and self.schedule[self.next][0] < until:
            at, ticker = self.schedule[self.next]
            item = self._item(ticker, self.rng.choice(self.background), datetime.fromtimestamp(at, UTC), "h")
            self.producer.send(self.topic, key=item.id.encode(), value=item.to_json())
            self.sent[ticker].append(item)
            self.next += 1
            n += 1
        self.producer.flush(60)
        return n

    def pump(self) -> None:
        """Send the background items that came due, each published now."""
        while self.next < len(self.schedule) and self.schedule[self.next][0] <= time.time():
            _, ticker = self.schedule[self.next]
            self.send(ticker, self.rng.choice(self.background), "b")
            self.next += 1

    def send(self, ticker: str, title: str, kind: str) -> NewsItem:
        item = self._item(ticker, title, datetime.now(UTC), kind)
        self.producer.send(self.topic, key=item.id.encode(), value=item.to_json())
        self.producer.flush(30)  # on the broker now: published ~ appended
        self.sent[ticker].append(item)
        return item

    def idle(self, seconds: float) -> None:
        """Sleep, keeping the background going."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.pump()
            time.sleep(min(0.05, left))


def wait_settled(
    feed: Feed, url: str, scored_before: float, n_history: int, need_watermark: float, timeout_s: float
) -> dict:
    """Until the worker scored the history, both its consumers are caught up, its watermark has closed the
    windows the warm-up needs and the window output has been quiet for 2 s."""
    started = time.monotonic()
    last_out, quiet_since, m = None, time.monotonic(), {}
    while True:
        feed.idle(1.0)
        m = metrics(url)
        scored = msum(m, "finsent_worker_items_scored_total")
        lag = msum(m, "finsent_worker_consumer_lag")
        wm = msum(m, "finsent_window_watermark_timestamp_seconds")
        out = (msum(m, "finsent_windows_closed_total"), msum(m, "finsent_window_revisions_total"))
        if out != last_out:
            last_out, quiet_since = out, time.monotonic()
        # revisions of the backfill stop; on-time closes go on once a minute
        if (
            scored >= scored_before + n_history
            and lag == 0
            and wm >= need_watermark
            and time.monotonic() - quiet_since >= 2
        ):
            break
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(
                f"worker not settled after {timeout_s:.0f} s: scored {scored - scored_before:.0f}/"
                f"{n_history}, lag {lag:.0f}, watermark {wm:.0f} (need {need_watermark:.0f})"
            )
    return {
        "seconds": time.monotonic() - started,
        "watermark": wm,
        "late_items": msum(m, "finsent_window_late_items_total"),
        "rejected_items": msum(m, "finsent_window_rejected_items_total"),
        "windows_closed": msum(m, "finsent_windows_closed_total"),
        "window_revisions": msum(m, "finsent_window_revisions_total"),
    }


def busy(alerts: list[SurgeAlert], key: str, s: Settings, horizon: float) -> str | None:
    """Why ``key`` cannot raise a new alert before ``horizon`` (epoch s), from the alerts changelog as it
    stands: a firing (or provisional) surge not resolved yet, or the cool-down after a resolved one."""
    by_id: dict[str, list[SurgeAlert]] = {}
    for a in final_alerts(a for a in alerts if a.key == key):
        by_id.setdefault(a.alert_id, []).append(a)
    for xs in by_id.values():
        resolved = [x for x in xs if x.state == "resolved"]
        if not resolved:
            return f"already firing from background noise ({xs[-1].trigger}, window end {xs[-1].window_end:%H:%M})"
        quiet_until = max(x.window_end.timestamp() for x in resolved) + s.surge.cooldown_s
        if quiet_until > horizon:
            return f"in cool-down after a background-noise surge until {datetime.fromtimestamp(quiet_until, UTC):%H:%M}"
    return None


def crossing_prefix(items: list[tuple[NewsItem, str | None]], alert: SurgeAlert, s: Settings) -> int | None:
    """1-based index of the first prefix of the window (by published time) that meets the firing rule against
    the alert's baseline, among the prefixes the early judgement sees: those ending in the window's last bucket
    (the window is the open one only then). Had the detector judged after every single item, it would have
    fired on this one."""
    neg = 0
    open_from = alert.window_end.timestamp() - s.windows.bucket_seconds
    for k, (item, sentiment) in enumerate(items, 1):
        if sentiment is None:
            return None
        neg += sentiment == "negative"
        share = neg / k
        z = (share - alert.baseline_mean) / max(alert.baseline_std, 0.05)
        if (
            item.published.timestamp() >= open_from
            and k >= s.surge.min_volume
            and share >= s.surge.min_negative_share
            and z >= s.surge.z_threshold - 1e-3
        ):
            return k
    return None


def run(args: argparse.Namespace, tmp: Path) -> dict:
    t_start = time.monotonic()
    deadline = t_start + args.budget_s
    state = tmp / "state"
    env = demo_env(state)
    s = settings_for(env)
    assert s.windows == Windows() and s.surge == Surge(), "not the default window/surge settings"
    demo = Demo(env, state, tmp / "demo.log")
    tickers = [f"ZQA{i:02d}" for i in range(1, args.tickers + args.spares + 1)]
    results: dict = {
        "params": {k: v for k, v in vars(args).items() if k != "out"},
        "settings": {
            "windows": s.windows.model_dump(mode="json"),
            "surge": s.surge.model_dump(mode="json"),
            "scrape_interval_s": s.services.scrape_interval_s,
            "evaluation_interval_s": s.services.evaluation_interval_s,
            "rule_for": "4s",
            "alertmanager_group_wait": "2s (critical: 0s)",
        },
        "loadavg_before": loadavg(),
    }
    tail: AlertTail | None = None
    producer: KafkaProducer | None = None
    try:
        info = demo.start(timeout_s=min(240, args.budget_s / 2))
        results["startup_s"] = time.monotonic() - t_start
        print(f"demo up in {results['startup_s']:.0f} s (state {state})", flush=True)
        bootstrap = info["urls"]["kafka"]
        worker_url = info["urls"]["worker metrics"]
        audit_db = s.audit_db
        tail = AlertTail(bootstrap, s.topics.alerts.name)
        tail.start()
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)

        # 1. baseline history
        now = time.time()
        history_start = now - args.history_min * 60
        feed = Feed(producer, s.topics.raw.name, tickers, args.rate_per_min, history_start, now + args.budget_s)
        scored_before = msum(metrics(worker_url), "finsent_worker_items_scored_total")
        n_history = feed.history(until=now)
        print(
            f"published {n_history} history items ({args.history_min:g} min x {len(tickers)} tickers x "
            f"{args.rate_per_min:g}/min)",
            flush=True,
        )
        bucket = s.windows.bucket_seconds
        first_end = (int(history_start) // bucket + 1) * bucket
        need_wm = first_end + bucket * (s.surge.warmup_windows + 1)
        settled = wait_settled(
            feed, worker_url, scored_before, n_history, need_wm, timeout_s=max(30.0, deadline - time.monotonic() - 120)
        )
        settled["judged_windows_per_ticker"] = int((settled["watermark"] - first_end) // bucket) + 1
        results["history"] = {"items": n_history, **settled}
        print(
            f"worker settled in {settled['seconds']:.0f} s: ~{settled['judged_windows_per_ticker']} judged windows per "
            f"ticker, {settled['late_items']:.0f} late items, {settled['rejected_items']:.0f} rejected",
            flush=True,
        )

        # 2. live: background + one burst per ticker
        feed.idle(args.gap_s)
        bursts: dict[str, dict] = {}
        drain_s = 70.0  # audit rows (~10 s after the last alert) + the reserve for analysis and shutdown
        next_at = time.monotonic()
        skipped: dict[str, str] = {}
        for ticker in tickers:
            if len(bursts) == args.tickers:
                break
            if time.monotonic() + (args.max_burst + args.burst_tail) * args.burst_interval_s + drain_s > deadline:
                print(f"time budget: {ticker} and later tickers get no burst", flush=True)
                break
            feed.idle(max(0.0, next_at - time.monotonic()))
            key = f"ticker:{ticker}"
            # A key already in a surge (or in its cool-down after one) cannot raise a new alert: background noise
            # does that now and then (see busy()); such a ticker is skipped and a spare takes its place.
            horizon = (
                time.time() + s.windows.bucket_seconds + (args.max_burst + args.burst_tail) * args.burst_interval_s
            )
            if (reason := busy([r[3] for r in tail.snapshot()], key, s, horizon)) is not None:
                skipped[ticker] = reason
                print(f"  {ticker}: skipped, {reason}", flush=True)
                continue
            start_ms = int(time.time() * 1000)
            pre = [r[3] for r in tail.snapshot() if r[3].key == key]
            sent = []
            got = None
            while len(sent) < args.max_burst:
                sent.append(feed.send(ticker, feed.rng.choice(feed.burst), "x"))
                t_next = time.monotonic() + args.burst_interval_s
                while time.monotonic() < t_next and not (got := tail.first_firing(key, start_ms)):
                    feed.pump()
                    time.sleep(0.02)
                if got:
                    break
            n_before = len(sent)
            if got:  # a surge does not stop at the threshold: the complete window should confirm it at close
                for _ in range(args.burst_tail):
                    feed.idle(args.burst_interval_s)
                    sent.append(feed.send(ticker, feed.rng.choice(feed.burst), "x"))
            bursts[ticker] = {
                "start_ms": start_ms,
                "items": len(sent),
                "items_to_alert": n_before,
                "alert_seen": got is not None,
                "records_before_burst": [
                    ("retracted " if a.retracted else "") + f"{a.trigger} {a.state} (window end {a.window_end:%H:%M})"
                    for a in pre
                ],
            }
            print(
                f"  {ticker}: alert on finsent.alerts after {n_before} burst items: {'yes' if got else 'NO'}"
                f" ({len(sent)} sent)",
                flush=True,
            )
            next_at = time.monotonic() + max(4.0, args.gap_s - len(sent) * args.burst_interval_s)

        # drain: until every alerted ticker has its audit row and (--confirm) the close-time judgement of its first
        # firing is out (confirmed or retracted: window end + watermark delay), or the budget is spent
        reserve_s = 25.0
        while time.monotonic() < deadline - reserve_s:
            firing = {
                r["name"]
                for r in audit_rows(audit_db)
                if r["alertname"] == "NegativeSentimentSurge" and r["status"] == "firing" and r["dim"] == "ticker"
            }
            firsts = {t: tail.first_firing(f"ticker:{t}", b["start_ms"]) for t, b in bursts.items()}
            records = tail.snapshot()
            rows_ok = all(t in firing for t, r in firsts.items() if r)
            judged = all(
                any(x[0] > r[0] and x[3].transition == r[3].transition for x in records) for r in firsts.values() if r
            )
            if rows_ok and (judged or not args.confirm):
                break
            feed.idle(1.0)
        results["loadavg_after"] = loadavg()
        results["skipped_tickers"] = skipped

        # 3. analysis
        if tail.error is not None:
            raise RuntimeError(f"following {s.topics.alerts.name} failed: {tail.error!r}")
        records = tail.snapshot()
        rows = audit_rows(audit_db)
        wm = metrics(worker_url)
        scored = {}
        for r in read_all(bootstrap, s.topics.scored.name, timeout_s=90):
            if r.key and r.key.startswith(b"bench-"):
                sc = ScoredItem.from_json(r.value)
                scored[sc.item.id] = (sc.sentiment, r.timestamp)
        demo_log = demo.log.read_text(errors="replace")
        results["worker_restarts"] = demo_log.count('"msg": "restarting"')
        results["analysis"] = analyse(s, tickers, feed, bursts, records, rows, scored)
        results["worker_end"] = {
            "late_items": msum(wm, "finsent_window_late_items_total"),
            "rejected_items": msum(wm, "finsent_window_rejected_items_total"),
            "surge_alerts_total": {k: v for k, v in wm.items() if k.startswith("finsent_surge_alerts_total{")},
        }
        results["wall_s"] = time.monotonic() - t_start
        return results
    finally:
        if tail is not None:
            tail.stopping.set()
        if producer is not None:
            producer.close(timeout=5)
        demo.stop()
        if tail is not None:
            tail.join(timeout=5)
        if args.keep:
            print(f"demo log: {demo.log}", flush=True)


def analyse(
    s: Settings,
    tickers: list[str],
    feed: Feed,
    bursts: dict[str, dict],
    records: list,
    rows: list[dict],
    scored: dict[str, tuple[str, int]],
) -> dict:
    per: dict[str, dict] = {}
    lat_a, lat_b, lat_scored, lat_rule, lat_am = [], [], [], [], []
    triggers: Counter = Counter()
    ts_types: Counter = Counter()
    retracted_ours = 0
    ours = {f"ticker:{t}" for t in tickers}
    for ticker in tickers:
        b = bursts.get(ticker)
        if b is None:
            continue
        key = f"ticker:{ticker}"
        d: dict = {
            "burst_items": b["items"],
            "burst_items_to_alert": b["items_to_alert"],
            "records_before_burst": b["records_before_burst"],
            "audit_statuses": [
                f"{r['status']} {r['severity']}"
                for r in rows
                if r["dim"] == "ticker" and r["name"] == ticker and r["alertname"] == "NegativeSentimentSurge"
            ],
        }
        per[ticker] = d
        first = next(
            (
                r
                for r in records
                if r[3].key == key and r[3].state == "firing" and not r[3].retracted and r[1] >= b["start_ms"]
            ),
            None,
        )
        if first is None:
            d["error"] = "no firing SurgeAlert on finsent.alerts"
            continue
        offset, rec_ms, rec_type, alert = first
        triggers[alert.trigger] += 1
        ts_types["LogAppendTime" if rec_type == 1 else "CreateTime"] += 1
        later = [r[3] for r in records if r[0] > offset and r[3].transition == alert.transition]
        d.update(
            {
                "trigger": alert.trigger,
                "severity": alert.severity,
                "zscore": alert.zscore,
                "count": alert.count,
                "negative": alert.negative,
                "baseline_mean": alert.baseline_mean,
                "baseline_std": alert.baseline_std,
                "window_end": alert.window_end.isoformat(),
                "record_timestamp_type": rec_type,
                "later_records_of_transition": [("retracted " if a.retracted else "") + a.trigger for a in later],
                "close_outcome": ("retracted" if later[-1].retracted else "confirmed") if later else "pending",
            }
        )
        d["records_after_burst"] = [
            f"{'retracted ' if a.retracted else ''}{a.trigger} {a.state} {a.severity} (window end {a.window_end:%H:%M})"
            for o, t_ms, _, a in records
            if a.key == key and t_ms >= b["start_ms"]
        ]
        if d["close_outcome"] == "retracted":
            # The surge may stand under another transition: the same window escalated to critical at close, or an
            # earlier window end (a burst straddling a bucket boundary) that fired at its own close first.
            other = [
                a
                for a in final_alerts(r[3] for r in records if r[3].key == key)
                if a.state == "firing"
                and a.transition != alert.transition
                and a.window_end >= alert.window_start
                and a.window_end.timestamp() * 1000 >= b["start_ms"] - 60_000
            ]
            if other:
                d["close_outcome"] = (
                    f"retracted, surge stands as {other[0].trigger} {other[0].severity} "
                    f"({'same window' if other[0].alert_id == alert.alert_id else 'window end ' + format(other[0].window_end, '%H:%M')})"
                )
        ws, we = alert.window_start, alert.window_end
        window = sorted((it for it in feed.sent[ticker] if ws <= it.published < we), key=lambda it: it.published)
        if alert.count > len(window):
            d["error"] = f"alert counts {alert.count} items, only {len(window)} of ours in its window"
            continue
        crossing = window[alert.count - 1]
        pub = crossing.published.timestamp()
        d["crossing_item"] = crossing.id
        d["crossing_is_burst"] = "-x" in crossing.id
        d["a_s"] = rec_ms / 1000 - pub
        lat_a.append(d["a_s"])
        sc = scored.get(crossing.id)
        if sc is not None:
            d["published_to_scored_s"] = sc[1] / 1000 - pub
            lat_scored.append(d["published_to_scored_s"])
        k = crossing_prefix([(it, scored.get(it.id, (None,))[0]) for it in window], alert, s)
        d["first_crossing_prefix"] = k
        if k is not None and k != alert.count:
            d["a_from_first_crossing_s"] = rec_ms / 1000 - window[k - 1].published.timestamp()
        row = next(
            (
                r
                for r in rows
                if r["alertname"] == "NegativeSentimentSurge"
                and r["status"] == "firing"
                and r["dim"] == "ticker"
                and r["name"] == ticker
                and ts(r["received_at"]) * 1000 >= b["start_ms"]
            ),
            None,
        )
        if row is None:
            d["error_b"] = "no firing row in the audit log"
            continue
        d["b_s"] = ts(row["received_at"]) - pub
        d["audit_severity"] = row["severity"]
        d["audit_surge_alert_id"] = row["surge_alert_id"]
        lat_b.append(d["b_s"])
        # The webhook's startsAt is Prometheus's FiredAt: the evaluation at which the rule went from pending to
        # firing (after `for:`); what follows is Alertmanager (group_wait) and the webhook.
        d["alert_to_rule_firing_s"] = ts(row["starts_at"]) - rec_ms / 1000
        d["rule_firing_to_audit_s"] = ts(row["received_at"]) - ts(row["starts_at"])
        lat_rule.append(d["alert_to_rule_firing_s"])
        lat_am.append(d["rule_firing_to_audit_s"])
    for _, _, _, a in records:
        if a.key in ours and a.retracted:
            retracted_ours += 1
    other_rows = [r for r in rows if not (r["dim"] == "ticker" and r["name"] in tickers)]
    # Surges of our keys that no burst caused: background noise (in the backfilled history or live).
    standing = final_alerts(r[3] for r in records if r[3].key in ours)
    noise = [
        a
        for a in standing
        if a.state == "firing"
        and ((b := bursts.get(a.key.split(":", 1)[1])) is None or a.window_end.timestamp() * 1000 <= b["start_ms"])
    ]
    noise_records = [
        a
        for _, t_ms, _, a in records
        if a.key in ours
        and a.state == "firing"
        and not a.retracted
        and ((b := bursts.get(a.key.split(":", 1)[1])) is None or t_ms < b["start_ms"])
    ]
    noise_rows = [
        r
        for r in rows
        if r["dim"] == "ticker"
        and r["name"] in tickers
        and r["status"] == "firing"
        and (r["name"] not in bursts or ts(r["received_at"]) * 1000 < bursts[r["name"]]["start_ms"])
    ]
    return {
        "per_ticker": per,
        "a": quantiles(lat_a),
        "b": quantiles(lat_b),
        "breakdown": {
            "published_to_scored": quantiles(lat_scored),
            "alert_to_rule_firing": quantiles(lat_rule),
            "rule_firing_to_audit": quantiles(lat_am),
        },
        "bursts": len(per),
        "alerts_on_topic": sum(1 for d in per.values() if "a_s" in d),
        "audit_rows": sum(1 for d in per.values() if "b_s" in d),
        "first_firing_by_trigger": dict(triggers),
        "alert_record_timestamp_types": dict(ts_types),
        "retraction_records_for_our_keys": retracted_ours,
        "tickers_with_records_before_burst": sum(1 for d in per.values() if d["records_before_burst"]),
        "noise_firing_records": len(noise_records),
        "noise_firing_records_by_trigger": dict(Counter(a.trigger for a in noise_records)),
        "noise_surges_standing": len(noise),
        "noise_surges_by_trigger": dict(Counter(a.trigger for a in noise)),
        "noise_surge_keys": sorted({a.key for a in noise}),
        "noise_audit_rows": len(noise_rows),
        "noise_audit_row_list": [
            f"{r['name']} {r['status']} {r['severity']} at {r['received_at'][11:19]}" for r in noise_rows
        ],
        "close_outcomes": dict(Counter(d["close_outcome"] for d in per.values() if "close_outcome" in d)),
        "retracted_but_in_audit_log": sum(
            1 for d in per.values() if d.get("close_outcome", "").startswith("retracted") and "b_s" in d
        ),
        "crossing_prefix_mismatches": sum(
            1 for d in per.values() if d.get("first_crossing_prefix") not in (None, d.get("count"))
        ),
        "alert_records_total": len(records),
        "alert_records_by_key_dim": dict(
            Counter(a.key.split(":")[0] + ("" if not a.retracted else " retracted") for _, _, _, a in records)
        ),
        "other_audit_rows": [{k: r[k] for k in ("status", "alertname", "severity", "dim", "name")} for r in other_rows],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tickers", type=int, default=16, help="bursts (one synthetic ticker each)")
    ap.add_argument(
        "--spares",
        type=int,
        default=6,
        help="extra tickers with a baseline, for those that background noise already put in a surge",
    )
    ap.add_argument("--history-min", type=float, default=30.0)
    ap.add_argument("--rate-per-min", type=float, default=3.0, help="background headlines per ticker per minute")
    ap.add_argument("--gap-s", type=float, default=10.0, help="seconds between the starts of two bursts")
    ap.add_argument("--burst-interval-s", type=float, default=0.5)
    ap.add_argument("--max-burst", type=int, default=60, help="burst items at most before giving up on a ticker")
    ap.add_argument("--burst-tail", type=int, default=6, help="burst items sent after the alert showed up")
    ap.add_argument(
        "--confirm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for the close-time judgement of each first firing (confirmed or retracted)",
    )
    ap.add_argument("--budget-s", type=float, default=480.0, help="wall-time bound of the whole run")
    ap.add_argument("--keep", action="store_true", help="keep the state dir (logs, audit DB) for inspection")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latency-cpu.json")
    args = ap.parse_args()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="finsent-latency-"))
    try:
        results = run(args, tmp)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    an = results["analysis"]
    a, b = an["a"], an["b"]
    print(
        f"bursts: {an['bursts']}, SurgeAlerts: {an['alerts_on_topic']} (first firing by trigger: "
        f"{an['first_firing_by_trigger']}), at window close: {an['close_outcomes']}, "
        f"audit rows: {an['audit_rows']}",
        flush=True,
    )
    for label, q, goal in (
        ("(a) crossing headline -> SurgeAlert on finsent.alerts", a, GOAL_A_S),
        ("(b) crossing headline -> receiver audit row", b, GOAL_B_S),
    ):
        if q["n"]:
            q["goal_s"] = goal
            q["p50_vs_goal"] = q["p50_s"] / goal
            q["p99_vs_goal"] = q["p99_s"] / goal
            print(
                f"{label}: p50 {q['p50_s']:.2f} s, p99 {q['p99_s']:.2f} s, max {q['max_s']:.2f} s over {q['n']} "
                f"tickers; goal <= {goal:g} s: p99 = {q['p99_vs_goal']:.2f} x goal",
                flush=True,
            )
        else:
            print(f"{label}: no samples", flush=True)
    bd = an["breakdown"]
    if bd["published_to_scored"]["n"] and bd["alert_to_rule_firing"]["n"]:
        print(
            f"  breakdown p50 (p99): published->scored {bd['published_to_scored']['p50_s']:.2f} "
            f"({bd['published_to_scored']['p99_s']:.2f}) s; SurgeAlert->Prometheus rule firing (webhook startsAt, "
            f"after scrape + evaluation + for: 4s) {bd['alert_to_rule_firing']['p50_s']:.2f} "
            f"({bd['alert_to_rule_firing']['p99_s']:.2f}) s; rule firing->audit row (Alertmanager group_wait + "
            f"webhook) {bd['rule_firing_to_audit']['p50_s']:.2f} ({bd['rule_firing_to_audit']['p99_s']:.2f}) s",
            flush=True,
        )
    print(
        f"  background noise on our keys (no burst): {an['noise_firing_records']} firing records "
        f"{an['noise_firing_records_by_trigger']}, {an['noise_surges_standing']} still standing at the end, "
        f"{an['noise_audit_rows']} firing rows in the audit log {an['noise_audit_row_list']}; tickers skipped for it: "
        f"{len(results['skipped_tickers'])}; first firings retracted at close but in the audit log: "
        f"{an['retracted_but_in_audit_log']}",
        flush=True,
    )
    print(
        f"  SurgeAlert record timestamps: {an['alert_record_timestamp_types']}; crossing headline = first prefix "
        f"meeting the rule: {an['bursts'] - an['crossing_prefix_mismatches']}/{an['bursts']}; retraction records on "
        f"our keys: {an['retraction_records_for_our_keys']}; worker restarts: {results['worker_restarts']}; "
        f"load average before/after: {results['loadavg_before']} / {results['loadavg_after']}",
        flush=True,
    )
    for t, d in an["per_ticker"].items():
        if "error" in d or "error_b" in d:
            print(f"  {t}: {d.get('error') or d.get('error_b')}", flush=True)
    results["goals"] = {
        "a_p99_s": GOAL_A_S,
        "b_p99_s": GOAL_B_S,
        "a_met": bool(a["n"]) and a["p99_s"] <= GOAL_A_S,
        "b_met": bool(b["n"]) and b["p99_s"] <= GOAL_B_S,
    }
    write_results(results, command_of("bench/bench_latency.py", ap, args), args.out)


if __name__ == "__main__":
    main()
