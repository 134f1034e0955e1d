"""The backtest command: the live scoring, window and surge code over the archive, and the event study."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from finsent.cli.common import ConfigOption, ModelDirOption, app, load_settings, utc


@app.command()
def backtest(
    since: Annotated[datetime | None, typer.Option("--from", help="First event time (UTC if no zone).")] = None,
    until: Annotated[datetime | None, typer.Option("--to", help="End event time, exclusive.")] = None,
    out: Annotated[
        Path, typer.Option(help="Output folder (alerts.jsonl, windows.parquet, scores.parquet, run.json).")
    ] = Path("runs/backtest"),
    model: ModelDirOption = None,
    batch: Annotated[int, typer.Option(help="Headlines per classifier call.")] = 256,
    prices: Annotated[
        Path | None,
        typer.Option(
            help="Daily OHLC CSV/Parquet (date, ticker, close/adj_close): run the event study and write report.html."
        ),
    ] = None,
    price_map: Annotated[
        list[str],
        typer.Option(
            "--price-map",
            help="FIELD=COLUMN for the price file: date, ticker, close (default date, ticker, adj_close or close).",
        ),
    ] = [],  # noqa: B006
    exchange_tz: Annotated[
        str,
        typer.Option(
            help="Time zone of the prices' exchange (IANA): an item after its close counts for the next session."
        ),
    ] = "America/New_York",
    exchange_close: Annotated[str, typer.Option(help="The exchange's closing time, local, HH:MM.")] = "16:00",
    open_report: Annotated[
        bool, typer.Option("--open", help="Print the report's path (file:// URL) at the end.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Run the live scoring, window and surge code over the archive, without a broker; scores are cached."""
    from finsent.errors import ConfigError, FinsentError
    from finsent.ingest.archive import Archive

    settings = load_settings(config)
    # Everything that can be wrong with the options is found before the model loads and the backtest runs (a
    # missing price file used to surface after an hour of scoring).
    start, end = utc(since), utc(until)
    if start and end and start >= end:
        raise ConfigError(f"--from {start.isoformat()} is not before --to {end.isoformat()} (--to is exclusive)")
    if batch < 1:
        raise ConfigError(f"--batch must be at least 1 (got {batch})")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the backtest's outputs")
    out.mkdir(parents=True, exist_ok=True)  # a parent that is a file or read-only: its one line now (finsent.cli)
    price_table = cols = None
    from finsent.backtest.eventstudy import Exchange

    exchange = Exchange.parse(exchange_tz, exchange_close)  # ConfigError
    if prices is not None:
        from finsent.backtest.eventstudy import PriceColumns, read_prices

        cols = PriceColumns.parse(price_map)  # ConfigError
        price_table = read_prices(prices, cols)  # PriceFileError
    elif price_map:
        raise ConfigError("--price-map describes the --prices file: give --prices too")
    archive = Archive(settings.paths.archive_dir)
    total = archive.count(start, end)
    if total == 0:  # with or without --prices: a run over nothing wrote empty outputs and said it was done
        span = f"{start.isoformat() if start else 'the first item'} .. {end.isoformat() if end else 'the last'}"
        where = "" if settings.paths.archive_dir.is_dir() else " (there is no such folder)"
        raise ConfigError(
            f"no items in {span} in the archive {settings.paths.archive_dir}{where}: nothing to backtest "
            "(import news first: finsent ingest import, or widen --from/--to)"
        )

    from tqdm import tqdm

    from finsent.backtest.run import backtest_archive
    from finsent.heap import freeze_startup_objects
    from finsent.model import classifier  # noqa: F401  # imported before the freeze below
    from finsent.model.artifact import model_dir

    # The model's modules are imported: ~450,000 objects the collector would walk at every full pass, while the
    # backtest allocates windows and alerts by the million (its bookkeeping ran 3,000-4,000 headlines/s with
    # them, 5,700-6,300 without; finsent.heap). The process runs this one backtest, so freezing is safe here.
    freeze_startup_objects()

    with tqdm(desc="backtest", unit=" items", total=total, disable=None) as bar:
        report = backtest_archive(
            settings,
            archive.read(start, end),
            out,
            model_dir(settings, model),
            batch,
            progress=bar.update,
            data_range=(start, end),
        )
    firing = sum(a.state == "firing" for a in report.alerts)
    typer.echo(
        f"{report.items} items ({report.inferred} scored, {report.cached} from cache) in {report.seconds:.1f} s "
        f"= {report.items_per_s:.0f}/s; {report.windows} windows, {firing} surges; results in {out}",
        err=True,
    )
    if prices is not None and price_table is not None and cols is not None:
        from finsent.backtest.report import write_report

        try:
            path = write_report(out, prices, cols, price_table, exchange)
        except OSError as err:  # writing report.html and eventstudy.json (the prices were read and checked above)
            raise FinsentError(f"event study: {err}") from None
        typer.echo(f"report: {path}" + (f"\n{path.resolve().as_uri()}" if open_report else ""), err=True)
