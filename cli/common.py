"""The ``finsent`` Typer app and what every command shares: the --config and --model options, settings.

The area modules (``local``, ``stream``, ``model``, ``web``, ``ingest``, ``alerts``, ``backtest``) register
their commands on ``app``; ``finsent.cli.main`` runs it and maps ``FinsentError`` to one line and an exit code.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from finsent import logs
from finsent.settings import Settings, load

app = typer.Typer(
    help="finsent: financial-news sentiment monitoring (feeds -> Kafka -> BERT -> windows, surges, alerts).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (else $FINSENT_CONFIG; env FINSENT_* overrides it)."),
]
ModelDirOption = Annotated[  # resolved by finsent.model.artifact.model_dir
    Path | None, typer.Option("--model", "-m", help="Model directory; default: the settings' model (newest version).")
]


class Options:
    """Global options, set by the callback before any command runs."""

    debug = False


@app.callback()
def main_options(
    log_level: Annotated[
        str | None, typer.Option(help="DEBUG, INFO, WARNING, ERROR. Default: FINSENT_LOG_LEVEL, else INFO.")
    ] = None,
    log_json: Annotated[
        bool | None, typer.Option("--log-json/--log-text", help="Default: JSON when stderr is not a terminal.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an expected failure too.")] = False,
) -> None:
    Options.debug = debug
    logs.setup(log_level, log_json)


def load_settings(config: Path | None) -> Settings:
    return load(config)


def utc(d: datetime | None) -> datetime | None:
    """Times given without a zone on the command line are UTC."""
    return d if d is None or d.tzinfo else d.replace(tzinfo=UTC)
