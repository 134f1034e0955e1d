"""The ``finsent`` command: thin commands split by area; the logic lives in the rooms they call.

Every command exists because its feature exists; there are no placeholder commands. Expected failures
(``finsent.errors.FinsentError``) print one line naming the problem and the fix and exit with the
documented code (README, "Exit codes"); so does a path that cannot be used (an ``OSError`` naming a file: exit 1);
``--debug`` shows their traceback too.
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
    except OSError as err:
        # A file or folder the command was given or derives from its settings that cannot be used (a missing or
        # read-only parent, a file where a folder belongs, a full disk): the path and the reason, exit 1. An
        # OSError naming no path (a socket's, say) is not this, and keeps its traceback.
        if Options.debug or err.filename is None:
            raise
        target = err.filename if err.filename2 is None else f"{err.filename} -> {err.filename2}"
        typer.echo(f"error: {target}: {err.strerror or err}", err=True)
        sys.exit(1)


__all__ = ["app", "main"]
