"""The ``finsent`` command: thin commands split by area; the logic lives in the rooms they call.

Every command exists because its feature exists; there are no placeholder commands. Expected failures
(``finsent.errors.FinsentError``) print one line naming the problem and the fix and exit with the
documented code (README, "Exit codes"); ``--debug`` shows their traceback too.
"""

from __future__ import annotations

import sys

import typer

from finsent.cli import alerts, backtest, ingest, local, model, stream, web  # noqa: F401  (they register commands)
from finsent.cli.common import Options, app
from finsent.errors import FinsentError


def main() -> None:
    """The console script: run the app, map expected failures once."""
    try:
        app()
    except FinsentError as err:
        if Options.debug:
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)


__all__ = ["app", "main"]
