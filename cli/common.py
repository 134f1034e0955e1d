"""The ``finsent`` Typer app and what every command shares: the --config option, settings, the model directory.

The area modules (``local``, ``stream``, ``model``, ``web``, ``ingest``, ``alerts``, ``backtest``) register
their commands on ``app``; ``finsent.cli.main`` runs it and maps ``FinsentError`` to one line and an exit code.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from finsent import logs
from finsent.errors import ModelError
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
ModelDirOption = Annotated[
    Path | None, typer.Option("--model", "-m", help="Model directory; default: the settings' model (newest version).")
]


class Options:
    """Global options, set by the callback before any command runs."""

    debug = False


@app.callback()
def main_options(
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
    log_json: Annotated[
        bool | None, typer.Option("--log-json/--log-text", help="Default: JSON when stderr is not a terminal.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an expected failure too.")] = False,
) -> None:
    Options.debug = debug
    logs.setup(log_level, log_json)


def load_settings(config: Path | None) -> Settings:
    return load(config)


def model_dir(settings: Settings, model: Path | None) -> Path:
    """``--model``, else the settings' model (``model.name``, ``model.version``; empty = newest) from
    ``paths.models_dir`` or the repository's ``models/``, else, when neither was chosen, the shipped default.

    A model the user chose and does not have is an error, not the default in its place: someone who asked
    for the research variant must not be served the permissive model without knowing it."""
    from finsent.model import artifact

    if model is not None:
        return model
    name, version = settings.model.name, settings.model.version
    for models_dir in dict.fromkeys((settings.paths.models_dir, artifact.REPO_MODELS_DIR)):
        try:
            return artifact.resolve(models_dir, name, version)
        except ModelError:
            continue
    if name == artifact.DEFAULT_NAME and not version:
        return artifact.default_model_dir()
    build = " (build it: make research-model; MODEL_CARD-research.md)" if "research" in name else ""
    raise ModelError(
        f"model {name}@{version or 'newest'} not found under {settings.paths.models_dir} or "
        f"{artifact.REPO_MODELS_DIR}{build}; unset FINSENT_MODEL__NAME/FINSENT_MODEL__VERSION for the default"
    )


def utc(d: datetime | None) -> datetime | None:
    """Times given without a zone on the command line are UTC."""
    return d if d is None or d.tzinfo else d.replace(tzinfo=UTC)
