"""The ``finsent`` command. Thin: parse options, load settings, call into the rooms.

Every command exists because its feature exists; there are no placeholder commands.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from finsent import logs
from finsent.settings import Settings, SettingsError, load

app = typer.Typer(
    help="finsent: financial-news sentiment monitoring (feeds -> Kafka -> BERT -> windows, surges, alerts).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="TOML settings file (else $FINSENT_CONFIG; env FINSENT_* overrides it)."),
]


def _settings(config: Path | None) -> Settings:
    try:
        return load(config)
    except SettingsError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None


@app.callback()
def main(
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
    log_json: Annotated[Optional[bool], typer.Option("--log-json/--log-text", help="Default: JSON when stderr is not a terminal.")] = None,
) -> None:
    logs.setup(log_level, log_json)


@app.command()
def broker(config: ConfigOption = None) -> None:
    """Run the embedded Kafka-protocol broker (Tansu) on 127.0.0.1 with every finsent topic created."""
    from finsent.procs import Supervisor
    from finsent.runtime import wait_for_signal
    from finsent.stream.embedded_broker import start_broker
    from finsent.stream.topics import TopicMismatch

    settings = _settings(config)
    supervisor = Supervisor()
    try:
        child, report = start_broker(settings, settings.paths.state_dir / "logs")
    except TopicMismatch as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    supervisor.children.append(child)
    typer.echo(f"broker ready at {settings.broker.host}:{settings.broker.port}; created {report.created}", err=True)
    raise typer.Exit(wait_for_signal(supervisor))


@app.command()
def topics(config: ConfigOption = None) -> None:
    """Create finsent's topics on the configured Kafka (partition counts from settings, kafka.replication_factor); check existing ones."""
    from finsent.stream.topics import TopicMismatch, ensure_topics

    settings = _settings(config)
    try:
        report = ensure_topics(settings.kafka.bootstrap, settings.topics.all(), timeout_s=60,
                               replication_factor=settings.kafka.replication_factor)
    except TopicMismatch as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"topics ready on {settings.kafka.bootstrap}: created {report.created or 'none'}, "
               f"existing {report.existing or 'none'}", err=True)


@app.command()
def demo(config: ConfigOption = None) -> None:
    """Start the embedded stack on 127.0.0.1 (broker, Prometheus, Alertmanager, ...), print URLs, stop on Ctrl-C."""
    from finsent import demo as demo_mod

    raise typer.Exit(demo_mod.run(_settings(config)))


ModelDirOption = Annotated[
    Optional[Path], typer.Option("--model", "-m", help="Model directory; default: the settings' model (newest version).")
]


def _model_dir(settings: Settings, model: Path | None) -> Path:
    from finsent.model import artifact

    if model is not None:
        return model
    try:
        return artifact.resolve(settings.paths.models_dir, settings.model.name, settings.model.version)
    except artifact.ModelError:
        return artifact.default_model_dir()


@app.command()
def worker(
    config: ConfigOption = None,
    model: ModelDirOption = None,
    aggregate: Annotated[bool, typer.Option(
        "--aggregate/--no-aggregate",
        help="Also run the aggregator (windows, surges). Run exactly one aggregating worker per deployment; "
             "extra scoring workers use --no-aggregate.")] = True,
) -> None:
    """Score finsent.news.raw into finsent.news.scored; window, detect surges, export /metrics."""
    from finsent.stream import worker as worker_mod
    from finsent.stream.topics import BrokerUnavailable, TopicMismatch

    settings = _settings(config)
    try:
        code = worker_mod.run(settings, _model_dir(settings, model), aggregate=aggregate)
    except (BrokerUnavailable, TopicMismatch) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command()
def train(
    run_config: Annotated[Path, typer.Option("--run-config", "-r", help="Training run TOML (see configs/).")] = Path(
        "configs/train-minilm.toml"
    ),
    version: Annotated[str, typer.Option(help="Model version; default: UTC timestamp.")] = "",
    epochs: Annotated[Optional[int], typer.Option(help="Override the run config's epochs.")] = None,
    lora: Annotated[Optional[bool], typer.Option("--lora/--full", help="LoRA adapters instead of full fine-tuning.")] = None,
    limit_train: Annotated[Optional[int], typer.Option(help="Use only the first N training examples.")] = None,
    out_dir: Annotated[Optional[str], typer.Option(help="Where model versions are written.")] = None,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Skip experiment tracking.")] = False,
    feedback: Annotated[
        Optional[Path], typer.Option(help="Fine-tune the served model on this feedback store (JSON lines) instead.")
    ] = None,
    model: ModelDirOption = None,
    replay: Annotated[int, typer.Option(help="With --feedback: original training examples mixed in.")] = 2000,
    max_drop: Annotated[float, typer.Option(help="With --feedback: allowed drop of dev macro-F1 before a version is refused.")] = 0.01,
    config: ConfigOption = None,
) -> None:
    """Fine-tune the topic + sentiment model (also under `torchrun --nproc_per_node N`), or continue it from feedback."""
    from finsent.model.train import TrainConfig
    from finsent.model.train import train as run_training

    cfg = TrainConfig.from_toml(
        run_config, version=version or None, epochs=epochs, lora=lora, limit_train=limit_train, out_dir=out_dir,
        mlflow=False if no_mlflow else None,
    )
    if feedback is None:
        out = run_training(cfg, progress=sys.stderr.isatty())
        if out is not None:
            typer.echo(str(out))
        return
    from dataclasses import replace

    from finsent.model.feedback import fine_tune

    settings = _settings(config)
    parent = _model_dir(settings, model)
    if out_dir is None:
        cfg = replace(cfg, out_dir=str(parent.parent.parent))  # register beside the parent
    if epochs is None:
        cfg = replace(cfg, epochs=1)
    result = fine_tune(parent, feedback, cfg, replay=replay, max_drop=max_drop)
    verdict = f"registered {result.registered_dir}" if result.registered else f"refused (kept in {result.candidate_dir})"
    typer.echo(
        f"dev selection: parent {result.parent_score:.4f}, candidate {result.candidate_score:.4f} "
        f"(max drop {result.max_drop}); {verdict}"
    )
    raise typer.Exit(0 if result.registered else 3)


@app.command("eval")
def evaluate(
    model: ModelDirOption = None,
    out: Annotated[Optional[Path], typer.Option(help="Report directory; default: reports/<name>@<version>.")] = None,
    backend: Annotated[str, typer.Option(help="auto, torch, torch-int8, onnx, onnx-int8.")] = "torch",
    limit: Annotated[int, typer.Option(help="Evaluate only the first N examples of each set (0 = all).")] = 0,
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Also log the report to MLflow (./mlruns.db).")] = True,
    config: ConfigOption = None,
) -> None:
    """Evaluation report (Markdown + PNG): Twitter and news sets (news score), confusion, calibration, worst errors."""
    from finsent.model.data import DataError, check_data_dir

    settings = _settings(config)
    try:
        check_data_dir(settings.paths.data_dir)  # before loading anything: a clone has no ../shared/data
        from finsent.model import Classifier
        from finsent.model.report import run, summary_lines

        clf = Classifier.load(_model_dir(settings, model), backend=backend, device=settings.model.device)
        out = out or Path("reports") / clf.version
        summary = run(clf, settings.paths.data_dir, out, limit)
    except DataError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    for line in summary_lines(summary):
        typer.echo(line)
    typer.echo(f"report: {out / 'report.md'}")
    if mlflow:
        from finsent.model.report import log_to_mlflow

        typer.echo(f"mlflow run: {log_to_mlflow(clf, out, summary)}")


@app.command()
def export(
    model: ModelDirOption = None,
    limit: Annotated[int, typer.Option(help="Parity-check on the first N texts of each validation set (0 = all).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Batch size for the speed measurement.")] = 32,
    config: ConfigOption = None,
) -> None:
    """Measure every CPU backend and int8 recipe against fp32 under the gate, and record the one that wins."""
    from finsent.model.export import run

    settings = _settings(config)
    report = run(_model_dir(settings, model), settings.paths.data_dir, limit, batch_size)
    typer.echo(f"{'backend':<24} {'topic acc':>9} {'sent acc':>9} {'agree':>6} {'texts/s':>8} {'speed-up':>8}  accepted")
    for name, r in report["backends"].items():
        typer.echo(
            f"{name:<24} {r['topic_accuracy']:>9.4f} {r['sentiment_accuracy']:>9.4f} {r['agreement_with_fp32']:>6.3f} "
            f"{r['texts_per_s']:>8.1f} {r['speedup_vs_fp32']:>7.2f}x  {r['accepted']}"
        )
    typer.echo(f"gate: accuracy drop <= {report['max_accuracy_drop']} on each head, agreement >= {report['min_agreement']}; "
               f"int8 recipe: {report['int8_recipe'] or 'none passed'}; recommended CPU backend: {report['recommended']}")


@app.command()
def serve(config: ConfigOption = None, model: ModelDirOption = None) -> None:
    """The HTTP API on 127.0.0.1: /classify, /items, /windows, /alerts, /feedback, /healthz, /readyz, /openapi.json."""
    from finsent.web.api import serve as serve_api

    settings = _settings(config)
    serve_api(settings, _model_dir(settings, model))


def _utc(d: datetime | None) -> datetime | None:
    return d if d is None or d.tzinfo else d.replace(tzinfo=UTC)


@app.command()
def replay(
    since: Annotated[Optional[datetime], typer.Option("--from", help="First event time (UTC if no zone).")] = None,
    until: Annotated[Optional[datetime], typer.Option("--to", help="End event time, exclusive.")] = None,
    speed: Annotated[str, typer.Option(help="60x = an hour of news per minute; max = no waiting.")] = "60x",
    restart: Annotated[bool, typer.Option("--restart", help="Ignore an earlier interrupted replay of this range.")] = False,
    config: ConfigOption = None,
) -> None:
    """Replay the archive into finsent.news.raw in event-time order, gaps scaled by --speed; resumable."""
    from tqdm import tqdm

    from finsent.ingest.archive import Archive
    from finsent.ingest.replay import kafka_sender, parse_speed, replay as run_replay, state_path
    from finsent.ingest.sinks import KafkaSink

    settings = _settings(config)
    try:
        factor = parse_speed(speed)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    start, end = _utc(since), _utc(until)
    archive = Archive(settings.paths.archive_dir)
    state = state_path(settings.paths.state_dir, start, end, settings.topics.raw.name)
    if restart:
        state.unlink(missing_ok=True)
    sink = KafkaSink(settings.kafka.bootstrap, settings.topics.raw.name)
    with tqdm(desc="replay", unit=" items", total=archive.count(start, end), disable=None) as bar:
        try:
            report = run_replay(archive.read(start, end), kafka_sender(sink), factor, state, progress=bar.update)
        except RuntimeError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"replayed {report.published} items to {settings.topics.raw.name} in {report.seconds:.1f} s"
               f" ({report.skipped} already sent by an earlier run)", err=True)


@app.command()
def backtest(
    since: Annotated[Optional[datetime], typer.Option("--from", help="First event time (UTC if no zone).")] = None,
    until: Annotated[Optional[datetime], typer.Option("--to", help="End event time, exclusive.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder (alerts.jsonl, windows.parquet, scores.parquet, run.json).")] = Path("runs/backtest"),
    model: ModelDirOption = None,
    batch: Annotated[int, typer.Option(help="Headlines per classifier call.")] = 256,
    prices: Annotated[Optional[Path], typer.Option(help="Daily OHLC CSV/Parquet (date, ticker, close/adj_close): run the event study and write report.html.")] = None,
    price_map: Annotated[list[str], typer.Option("--price-map", help="FIELD=COLUMN for the price file: date, ticker, close (default date, ticker, adj_close or close).")] = [],  # noqa: B006
    open_report: Annotated[bool, typer.Option("--open", help="Print the report's path (file:// URL) at the end.")] = False,
    config: ConfigOption = None,
) -> None:
    """Run the live scoring, window and surge code over the archive, without a broker; scores are cached."""
    from tqdm import tqdm

    from finsent.ingest.archive import Archive
    from finsent.stream.backtest import ScoreCache, run_backtest

    settings = _settings(config)
    start, end = _utc(since), _utc(until)
    archive = Archive(settings.paths.archive_dir)
    directory = _model_dir(settings, model)
    classifier = None

    def predict(texts):
        nonlocal classifier
        if classifier is None:  # only when something is not cached
            from finsent.model import Classifier

            m = settings.model
            classifier = Classifier.load(directory, backend=m.backend, device=m.device, batch_size=m.batch_size, threads=m.threads)
        return classifier.predict(texts)

    from finsent.model import artifact

    meta = artifact.load_meta(directory)
    model_key = f"{meta.full_name}/{settings.model.backend}"
    cache = ScoreCache(settings.paths.state_dir / "backtest" / "scores.sqlite")
    try:
        with tqdm(desc="backtest", unit=" items", total=archive.count(start, end), disable=None) as bar:
            report = run_backtest(settings, archive.read(start, end), out, model_key, predict, cache, batch,
                                  progress=bar.update, data_range=(start, end))
    finally:
        cache.close()
    firing = sum(a.state == "firing" for a in report.alerts)
    typer.echo(f"{report.items} items ({report.inferred} scored, {report.cached} from cache) in {report.seconds:.1f} s "
               f"= {report.items_per_s:.0f}/s; {report.windows} windows, {firing} surges; results in {out}", err=True)
    if prices is not None:
        from finsent.stream.backtest_report import write_report
        from finsent.stream.eventstudy import PriceColumns

        try:
            mapping = dict(pair.split("=", 1) for pair in price_map)
            unknown = set(mapping) - {"date", "ticker", "close"}
            if unknown:
                raise ValueError(f"--price-map fields must be date, ticker, close (got {sorted(unknown)})")
            path = write_report(out, prices, PriceColumns(**mapping))
        except (OSError, ValueError) as err:
            typer.echo(f"error: event study: {err}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"report: {path}" + (f"\n{path.resolve().as_uri()}" if open_report else ""), err=True)


receiver_app = typer.Typer(help="The compliance receiver: Alertmanager webhooks into an append-only audit log.",
                           no_args_is_help=False)
app.add_typer(receiver_app, name="receiver")


@receiver_app.callback(invoke_without_command=True)
def receiver(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Serve the webhook endpoint (POST /alertmanager), GET /alerts, /healthz and /metrics on 127.0.0.1."""
    if ctx.invoked_subcommand:
        return
    from finsent.alerts.receiver import ReceiverConfigError, serve

    try:
        serve(_settings(config))
    except ReceiverConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


@receiver_app.command("alertmanager-config")
def receiver_alertmanager_config(
    out_dir: Annotated[Path, typer.Argument(help="Directory for alertmanager.yml and the token file (shared with Alertmanager).")],
    receiver_address: Annotated[Optional[str], typer.Option(help="host:port of the receiver as Alertmanager reaches it.")] = None,
    config: ConfigOption = None,
) -> None:
    """Render alerts/alertmanager.yml for a deployment: the receiver's address, the bearer token from FINSENT_RECEIVER__TOKEN."""
    from finsent.alerts.embedded import render_alertmanager_config

    settings = _settings(config)
    path = render_alertmanager_config(settings, out_dir, receiver_address=receiver_address)
    typer.echo(f"wrote {path} (token: {'yes' if settings.receiver.token else 'none set'})", err=True)


@receiver_app.command("export")
def receiver_export(
    since: Annotated[Optional[str], typer.Option("--from", help="ISO time with zone, e.g. 2024-05-02T00:00:00Z.")] = None,
    until: Annotated[Optional[str], typer.Option("--to", help="ISO time with zone (exclusive).")] = None,
    format: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    out: Annotated[Optional[Path], typer.Option(help="File to write; default: standard output.")] = None,
    config: ConfigOption = None,
) -> None:
    """Export every recorded notification (firing and resolved, with evidence) for a time range, streamed."""
    from contextlib import nullcontext

    from finsent.alerts.audit import AuditLog
    from finsent.alerts.receiver import export, parse_time

    settings = _settings(config)
    if format not in ("csv", "json"):
        typer.echo("error: --format must be csv or json", err=True)
        raise typer.Exit(2)
    if not settings.audit_db.exists():
        typer.echo(f"error: no audit log at {settings.audit_db}", err=True)
        raise typer.Exit(1)
    try:
        start, end = parse_time(since), parse_time(until)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    audit = AuditLog(settings.audit_db)
    try:
        with out.open("w", newline="") if out else nullcontext(sys.stdout) as fh:
            n = export(audit.iter_rows(start, end), fh, format)
    except OSError as err:
        typer.echo(f"error: export to {out or 'standard output'} failed: {err}", err=True)
        raise typer.Exit(1) from None
    finally:
        audit.close()
    if out:
        typer.echo(f"{n} notifications written to {out}", err=True)


@receiver_app.command("verify")
def receiver_verify(config: ConfigOption = None) -> None:
    """Check the audit log's hash chain: prints OK and the head hash, or the first row that does not fit (exit 1)."""
    import sqlite3

    from finsent.alerts.audit import verify_chain

    settings = _settings(config)
    if not settings.audit_db.exists():
        typer.echo(f"error: no audit log at {settings.audit_db}", err=True)
        raise typer.Exit(1)
    try:
        report = verify_chain(settings.audit_db)
    except (ValueError, sqlite3.Error) as err:
        typer.echo(f"error: {settings.audit_db}: {err}", err=True)
        raise typer.Exit(1) from None
    if report.bad_seq is not None:
        typer.echo(f"FAILED: row seq={report.bad_seq}: {report.reason} ({report.rows} rows before it verified)")
        raise typer.Exit(1)
    typer.echo(f"OK: {report.rows} rows, head {report.head}")


grafana_app = typer.Typer(help="Dashboards as code: build the JSON, publish to a Grafana with grafana-client.")
app.add_typer(grafana_app, name="grafana")


@grafana_app.command("build")
def grafana_build() -> None:
    """Regenerate alerts/grafana/dashboards/*.json from alerts/grafana/build.py."""
    from finsent.alerts.grafana.build import render

    for path in render():
        typer.echo(str(path))


@grafana_app.command("publish")
def grafana_publish(
    url: Annotated[Optional[str], typer.Option(help="Grafana base URL (default: settings grafana.url).")] = None,
    annotations: Annotated[bool, typer.Option("--annotations/--no-annotations", help="Also post surges from the audit log.")] = True,
    config: ConfigOption = None,
) -> None:
    """Upload the dashboards (overwrite) and annotate surges; the API token comes from FINSENT_GRAFANA__TOKEN."""
    from finsent.alerts.audit import AuditLog
    from finsent.alerts.grafana import publish

    settings = _settings(config)
    if settings.grafana.token is None:
        typer.echo("error: set FINSENT_GRAFANA__TOKEN to a Grafana API (service account) token", err=True)
        raise typer.Exit(2)
    api = publish.client(url or settings.grafana.url, settings.grafana.token.get_secret_value())
    try:
        uids = publish.publish_dashboards(api, settings.grafana.folder_uid)
        posted = 0
        if annotations and settings.audit_db.exists():
            audit = AuditLog(settings.audit_db)
            try:
                posted = publish.publish_annotations(api, audit.iter_rows(alertname=publish.SURGE_ALERT))
            finally:
                audit.close()
    except Exception as err:  # grafana-client raises its own and niquests' errors: report, do not trace
        typer.echo(f"error: publishing to {url or settings.grafana.url} failed: {type(err).__name__}: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"published dashboards {uids}; {posted} surge annotations", err=True)


ingest_app = typer.Typer(help="Poll feeds into finsent.news.raw and the archive; import history; refill a broker.",
                         rich_markup_mode=None)
app.add_typer(ingest_app, name="ingest")


@ingest_app.callback(invoke_without_command=True)
def ingest(
    ctx: typer.Context,
    feeds: Annotated[Optional[Path], typer.Option(help="Feed list TOML ([[feeds]] name, url, interval, tickers, tags).")] = None,
    once: Annotated[bool, typer.Option("--once", help="Poll every feed once, print a summary, exit 0.")] = False,
    output: Annotated[Optional[Path], typer.Option(help="Write accepted items as JSON lines here instead of Kafka.")] = None,
    config: ConfigOption = None,
) -> None:
    """Poll the feeds continuously (or --once) into finsent.news.raw (or --output FILE.jsonl) and the archive."""
    if ctx.invoked_subcommand:
        return
    from finsent.ingest import service
    from finsent.ingest.feeds import FeedListError, load_feeds

    settings = _settings(config)
    try:
        feed_list = load_feeds(feeds or settings.ingest.feeds_file)
    except FeedListError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    summaries = service.run(settings, feed_list, once=once, output=output)
    if once:
        typer.echo(service.format_summary(summaries))


@ingest_app.command("import")
def ingest_import(
    file: Annotated[Path, typer.Argument(help="CSV or JSON-lines file of historical headlines.")],
    format: Annotated[str, typer.Option("--format", help="csv or jsonl.")] = "csv",
    map_: Annotated[list[str], typer.Option("--map", help="FIELD=COLUMN (title, summary, url, published, id, source, tickers, language).")] = [],  # noqa: B006
    source: Annotated[str, typer.Option(help="Source name for rows without a source column.")] = "import",
    timezone: Annotated[str, typer.Option(help="Time zone of times given without one (IANA name).")] = "UTC",
    config: ConfigOption = None,
) -> None:
    """Import historical news into the archive (the source for replays and backtests)."""
    from zoneinfo import ZoneInfo

    from tqdm import tqdm

    from finsent.ingest.archive import Archive
    from finsent.ingest.importer import EdgeCheck, ImportError_, import_file, parse_mapping

    settings = _settings(config)
    try:
        mapping = parse_mapping(map_)
    except ImportError_ as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    w = settings.windows
    edge = EdgeCheck(datetime.now(UTC), w.future_tolerance_s, w.max_tickers_per_item)
    with tqdm(desc=f"importing {file.name}", unit=" rows", disable=None) as bar:
        report = import_file(file, format, mapping, source, Archive(settings.paths.archive_dir), ZoneInfo(timezone),
                             progress=bar.update, edge=edge)
    typer.echo(f"read {report.read} rows, imported {report.imported} items, {report.bad} bad rows into {settings.paths.archive_dir}")
    if report.clamped or report.tickers_capped:
        typer.echo(f"corrected: {report.clamped} items dated more than {w.future_tolerance_s:g} s after the import "
                   f"clamped to the import time (published_clamped), {report.tickers_capped} items with more than "
                   f"{w.max_tickers_per_item} tickers capped")
    for line in report.errors:
        typer.echo(f"  {line}", err=True)


@ingest_app.command("refill")
def ingest_refill(
    since: Annotated[datetime, typer.Option(help="Publish archived items published at or after this time (UTC if no zone).")],
    until: Annotated[Optional[datetime], typer.Option(help="...and before this time.")] = None,
    batch: Annotated[int, typer.Option(help="Items per produce/flush round.")] = 1000,
    config: ConfigOption = None,
) -> None:
    """Re-publish archived items to finsent.news.raw (refill a broker that lost its log)."""
    import asyncio

    from tqdm import tqdm

    from finsent.ingest.archive import Archive
    from finsent.ingest.replay import kafka_sender
    from finsent.ingest.sinks import KafkaSink

    settings = _settings(config)
    sink = KafkaSink(settings.kafka.bootstrap, settings.topics.raw.name)
    send = kafka_sender(sink)
    sent = failed = 0
    chunk = []

    def flush(items):
        return len(send(items))

    with tqdm(desc="refill", unit=" items", disable=None) as bar:
        for item in Archive(settings.paths.archive_dir).read(_utc(since), _utc(until)):
            chunk.append(item)
            if len(chunk) >= batch:
                ok = flush(chunk)
                sent, failed = sent + ok, failed + len(chunk) - ok
                bar.update(len(chunk))
                chunk = []
        if chunk:
            ok = flush(chunk)
            sent, failed = sent + ok, failed + len(chunk) - ok
            bar.update(len(chunk))
    asyncio.run(sink.close())
    typer.echo(f"refilled {sent} items to {settings.topics.raw.name}; {failed} not acknowledged")
    if failed:
        raise typer.Exit(1)


@ingest_app.command("demo-feeds")
def ingest_demo_feeds(
    port: Annotated[Optional[int], typer.Option(help="Port on 127.0.0.1 (default: settings ingest.demo_feeds_port).")] = None,
    burst_at: Annotated[Optional[float], typer.Option(help="Seconds after start when the negative oil burst begins (default: settings ingest.demo_burst_at_s).")] = None,
    config: ConfigOption = None,
) -> None:
    """Serve the local demo feeds (and the hostile test cases) over HTTP on 127.0.0.1."""
    import signal
    import threading

    from finsent.ingest.localfeeds import DEMO_FEEDS, FeedServer

    settings = _settings(config)
    server = FeedServer(settings.services.host, port if port is not None else settings.ingest.demo_feeds_port,
                         burst_at=burst_at if burst_at is not None else settings.ingest.demo_burst_at_s).start()
    for name in DEMO_FEEDS:
        typer.echo(f"{server.url}/feeds/{name}", err=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    app()
