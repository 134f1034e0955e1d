"""One error tree: every failure finsent expects is a ``FinsentError`` with an exit code.

Why one tree: the CLI maps it once (one line on stderr naming the problem and the fix, the documented exit
code, a traceback only with ``--debug``), services log it the same way, and a caller can catch "anything
finsent raises on purpose" without a list. Anything else that escapes is a bug and keeps its traceback.

Each class also keeps the built-in base it had before the tree existed (``ValueError`` for bad input and
configuration, ``RuntimeError`` for the rest), so code that catches those still behaves as it did.

Exit codes (README, "Exit codes"); the numbers are the ones finsent's commands always used:

====  ======================================================================================
0     done
1     a step ran and failed: no broker answered, a topic conflicts with the settings, a child
      process did not start, a file could not be written, an audit chain does not verify
2     the command cannot run as asked: bad usage or settings, or something it needs is
      missing (the data sets on a clone, a model directory, a Debian binary)
3     a gate refused the result (``finsent train --feedback``: the candidate was not registered)
====  ======================================================================================
"""

from __future__ import annotations

from pathlib import Path


class FinsentError(Exception):
    """Base of every expected failure. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


# -- 2: usage and configuration --------------------------------------------------------------------------
class ConfigError(FinsentError, ValueError):
    """Settings or options that cannot work; the message names the setting."""

    exit_code = 2


class SettingsError(ConfigError):
    """Settings that cannot work; the message names each bad field."""


class FeedListError(ConfigError):
    """A feed list file is unreadable or invalid."""


class ReceiverConfigError(ConfigError):
    """Settings the receiver refuses to serve with; the message says what to set."""


# -- 2: missing things the command needs -----------------------------------------------------------------
class MissingResource(FinsentError, RuntimeError):
    exit_code = 2


class ModelError(MissingResource):
    """A model directory is missing, incomplete or of an unknown format."""


class MissingBinary(MissingResource):
    """Prometheus or Alertmanager is not installed (the README's set-up installs both)."""


class DataError(FinsentError, RuntimeError):
    """The data directory is missing or a file does not look like what PROVENANCE describes."""

    exit_code = 2


class MissingData(DataError):
    """A data directory or file is not there (a clone without ``../shared/data``)."""

    def __init__(self, path: Path, what: str = "data file", hint: str = "set paths.data_dir / FINSENT_PATHS__DATA_DIR"):
        where = "" if Path(path).is_absolute() else f" (= {Path(path).resolve()})"
        super().__init__(
            f"missing {what} {path}{where}; the data sets live in ../shared/data (see its README), or {hint}"
        )
        self.path = path


# -- 1: unreachable services and conflicts ---------------------------------------------------------------
class BrokerUnavailable(FinsentError, RuntimeError):
    """No broker answered at the bootstrap address in time, or it did not acknowledge or deliver records in time."""


class Conflict(FinsentError, RuntimeError):
    """What the command would create conflicts with what exists."""


class TopicMismatch(Conflict):
    """An existing topic has another partition count than the settings ask for."""


class ProcessStartError(Conflict):
    """A child did not become ready (often: its port is taken); the message carries the tail of its log."""


# -- 1: bad input data (records, feeds, restore points: counted and dead-lettered where they arrive) -----
class InputError(FinsentError, ValueError):
    """Bytes from outside that are not what they should be."""


class RecordError(InputError):
    """Bytes that are not a valid record of the expected type."""


class UnsupportedSchemaVersion(RecordError):
    """The record was written by a newer finsent with a schema this one does not know."""


class PoisonRecord(InputError):
    """A raw record that can never be processed (it goes to the DLQ with this message)."""


class RestorePointError(InputError):
    """A record on the checkpoints topic this version cannot restore from; ``reason``: unreadable | version."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class ParseError(InputError):
    """A feed body that is not a feed; ``kind`` says which way (the rejection metric's label)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class NormalizeError(InputError):
    """An entry that cannot become a NewsItem (e.g. neither title nor summary)."""


class CaseError(InputError):
    """A compliance action that does not fit its alert case; ``reason``: unknown (no such case), closed (it takes
    no more actions) or invalid (a bad action, an assign without assignee, a close without disposition)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class ArchiveReadError(InputError):
    """An archive part file that cannot be read (truncated, not Parquet, unreadable); the message names it."""

    def __init__(self, path: Path, detail: str):
        super().__init__(f"archive part {path} unreadable: {detail}")
        self.path = path


class PartlyRejected(InputError):
    """A command did what it could and skipped some input (each piece counted and reported where it was met):
    the message sums up what was left out; the exit code says that not everything went through."""


class LeftUndone(FinsentError, RuntimeError):
    """A run that ended with items it could not take all the way (not sent: no broker acknowledged them; not
    archived; not marked): nothing is lost, the next run fetches them again, but the run did not succeed."""


class ImportFileError(ConfigError):
    """A history import's column mapping or format option is unusable."""


class PriceFileError(ConfigError):
    """A price file for the event study (``finsent backtest --prices``) that is missing, unreadable, without the
    mapped columns or without one usable row; the message names the file."""


class GateRefused(FinsentError, RuntimeError):
    """A quality gate refused the result (the message says which score and by how much)."""

    exit_code = 3


# -- 1: steps that ran and failed ------------------------------------------------------------------------
class ArchiveWriteError(FinsentError, OSError):
    """Some days of an archive append could not be written (a full disk, permissions). ``written``: the ids of
    the items that are durably archived all the same, so a retry writes only the rest."""

    def __init__(self, detail: str, written: set[str]):
        super().__init__(detail)
        self.written = written


class StateStoreError(FinsentError, RuntimeError):
    """A state store (SQLite under the state dir: the dedup store, the audit log) is missing where it must exist, or
    cannot be opened, read or written at start: not a database, a full disk, a read-only folder, a lock another
    process holds. The message names the file; nothing was read or changed."""


class GraphError(FinsentError, RuntimeError):
    """An ONNX graph could not be built (onnx / onnxruntime missing, or export failed)."""


class ModelBroken(FinsentError, RuntimeError):
    """The classifier fails on every input, a known-good headline included: the model, not the data, is at fault.
    The worker exits (70) without committing, so its batch is redelivered to a fresh worker instead of being
    dead-lettered whole (``finsent.stream.scoring``)."""


class BatcherClosed(FinsentError, RuntimeError):
    """The batcher shut down before this request was answered (the API answers 503: retry elsewhere/later)."""


__all__ = [
    name for name, value in list(globals().items()) if isinstance(value, type) and issubclass(value, FinsentError)
]
