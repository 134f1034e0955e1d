"""Commands of ingest: poll feeds, import history, replay and refill the archive into Kafka.

(``finsent ingest demo-feeds``, the local stack's feed server, is registered on ``ingest_app`` by ``cli/local.py``.)
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from finsent.cli.common import ConfigOption, app, load_settings, utc

ingest_app = typer.Typer(
    help="Poll feeds into finsent.news.raw and the archive; import history; refill a broker.", rich_markup_mode=None
)
app.add_typer(ingest_app, name="ingest")


@ingest_app.callback(invoke_without_command=True)
def ingest(
    ctx: typer.Context,
    feeds: Annotated[
        Path | None,
        typer.Option(
            help="Feed list TOML ([[feeds]] name, url, interval, tickers, tags). Default: ingest.feeds_file, else "
            "the public feed list shipped with finsent."
        ),
    ] = None,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Poll every feed once, print a summary; exit 1 if an item was left for the next run (not sent, archived or marked).",
        ),
    ] = False,
    output: Annotated[
        Path | None, typer.Option(help="Write accepted items as JSON lines here instead of Kafka.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Poll the feeds continuously (or --once) into finsent.news.raw (or --output FILE.jsonl) and the archive."""
    if ctx.invoked_subcommand:
        return
    from finsent.ingest import service
    from finsent.ingest.feeds import PUBLIC_FEEDS, load_feeds

    settings = load_settings(config)
    feed_list = load_feeds(feeds or settings.ingest.feeds_file or PUBLIC_FEEDS)
    summaries, undone = service.run(settings, feed_list, once=once, output=output)
    if once:
        typer.echo(service.format_summary(summaries))
    if once and undone:  # a service stopped with items pending stops as asked: its log lines say what is left
        from finsent.errors import LeftUndone

        raise LeftUndone(undone)


@ingest_app.command("import")
def ingest_import(
    file: Annotated[Path, typer.Argument(help="CSV or JSON-lines file of historical headlines.")],
    format: Annotated[str, typer.Option("--format", help="csv or jsonl.")] = "csv",
    map_: Annotated[
        list[str],
        typer.Option("--map", help="FIELD=COLUMN (title, summary, url, published, id, source, tickers, language)."),
    ] = [],  # noqa: B006
    source: Annotated[str, typer.Option(help="Source name for rows without a source column.")] = "import",
    timezone: Annotated[str, typer.Option(help="Time zone of times given without one (IANA name).")] = "UTC",
    config: ConfigOption = None,
) -> None:
    """Import historical news into the archive (the source for replays and backtests)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from tqdm import tqdm

    from finsent.errors import ConfigError
    from finsent.ingest.archive import Archive
    from finsent.ingest.importer import EdgeCheck, import_file, parse_mapping

    settings = load_settings(config)
    mapping = parse_mapping(map_)
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):  # "Mars/Base"; "" or "../x" (not a key)
        raise ConfigError(f"--timezone {timezone!r} is not an IANA time zone (e.g. America/New_York, UTC)") from None
    w = settings.windows
    edge = EdgeCheck(datetime.now(UTC), w.future_tolerance_s, w.max_tickers_per_item)
    with tqdm(desc=f"importing {file.name}", unit=" rows", disable=None) as bar:
        report = import_file(
            file,
            format,
            mapping,
            source,
            Archive(settings.paths.archive_dir),
            zone,
            progress=bar.update,
            edge=edge,
        )
    typer.echo(
        f"read {report.read} rows, imported {report.imported} items, {report.bad} bad rows into {settings.paths.archive_dir}"
    )
    if report.clamped or report.tickers_capped:
        typer.echo(
            f"corrected: {report.clamped} items dated more than {w.future_tolerance_s:g} s after the import "
            f"clamped to the import time (published_clamped), {report.tickers_capped} items with more than "
            f"{w.max_tickers_per_item} tickers capped"
        )
    for line in report.errors:
        typer.echo(f"  {line}", err=True)
    if report.bad:  # every good row is archived; the exit status still says that not every row was
        from finsent.errors import PartlyRejected

        raise PartlyRejected(
            f"{report.bad} of {report.read} rows rejected (each listed above with its line number); "
            f"the other rows were imported"
        )


@ingest_app.command("refill")
def ingest_refill(
    since: Annotated[
        datetime, typer.Option(help="Publish archived items published at or after this time (UTC if no zone).")
    ],
    until: Annotated[datetime | None, typer.Option(help="...and before this time.")] = None,
    batch: Annotated[int, typer.Option(help="Items per produce/flush round.")] = 1000,
    config: ConfigOption = None,
) -> None:
    """Re-publish archived items to finsent.news.raw (refill a broker that lost its log)."""
    from tqdm import tqdm

    from finsent.ingest.archive import Archive
    from finsent.ingest.replay import kafka_sender, refill
    from finsent.ingest.sinks import KafkaSink

    settings = load_settings(config)
    if batch < 1:
        from finsent.errors import ConfigError

        raise ConfigError(f"--batch must be at least 1 (got {batch})")
    sink = KafkaSink(settings.kafka, settings.topics.raw.name)
    archive = Archive(settings.paths.archive_dir, skip_unreadable=True)  # a corrupt part must not stop the rest
    with tqdm(desc="refill", unit=" items", disable=None) as bar:
        sent, failed = refill(archive.read(utc(since), utc(until)), kafka_sender(sink), batch, progress=bar.update)
    asyncio.run(sink.close())
    typer.echo(f"refilled {sent} items to {settings.topics.raw.name}; {failed} not acknowledged")
    if archive.skipped:
        from finsent.errors import PartlyRejected

        raise PartlyRejected(
            f"{len(archive.skipped)} unreadable archive part{'s' if len(archive.skipped) > 1 else ''} skipped "
            f"({', '.join(map(str, archive.skipped[:3]))}{', …' if len(archive.skipped) > 3 else ''}); "
            "the rest was refilled; move the part aside or restore it from a backup and refill its day again"
        )
    if failed:
        raise typer.Exit(1)


@app.command()
def replay(
    since: Annotated[datetime | None, typer.Option("--from", help="First event time (UTC if no zone).")] = None,
    until: Annotated[datetime | None, typer.Option("--to", help="End event time, exclusive.")] = None,
    speed: Annotated[str, typer.Option(help="60x = an hour of news per minute; max = no waiting.")] = "60x",
    restart: Annotated[
        bool, typer.Option("--restart", help="Ignore an earlier interrupted replay of this range.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Replay the archive into finsent.news.raw in event-time order, gaps scaled by --speed; resumable."""
    from tqdm import tqdm

    from finsent.errors import ConfigError
    from finsent.ingest.archive import Archive
    from finsent.ingest.replay import kafka_sender, parse_speed, state_path
    from finsent.ingest.replay import replay as run_replay
    from finsent.ingest.sinks import KafkaSink
    from finsent.kafka import TopicIdWatch

    settings = load_settings(config)
    factor = parse_speed(speed)
    start, end = utc(since), utc(until)
    if start and end and start >= end:
        raise ConfigError(f"--from {start.isoformat()} is not before --to {end.isoformat()} (--to is exclusive)")
    archive = Archive(settings.paths.archive_dir)
    topic = settings.topics.raw.name
    # keyed by the broker too, and checked against the topic's id there: a state of another broker or of a log
    # the broker lost must not make this replay send nothing (finsent.ingest.replay)
    state = state_path(settings.paths.state_dir, start, end, topic, settings.kafka.bootstrap)
    if restart:
        state.unlink(missing_ok=True)
    watch = TopicIdWatch(settings.kafka, topic, settings.kafka.connect_timeout_s)
    sink = KafkaSink(settings.kafka, topic)
    try:
        with tqdm(desc="replay", unit=" items", total=archive.count(start, end), disable=None) as bar:
            report = run_replay(
                archive.read(start, end), kafka_sender(sink), factor, state, progress=bar.update, log_id=watch.current
            )
    finally:
        watch.close()
    typer.echo(
        f"replayed {report.published} items to {settings.topics.raw.name} in {report.seconds:.1f} s"
        f" ({report.skipped} already sent by an earlier run)",
        err=True,
    )
