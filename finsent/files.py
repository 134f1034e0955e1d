"""Whole-file replacement (a reader sees the old file or the new one, never half of one) and whole-line appends.

State files (the demo's ``demo.json``, Prometheus target files, replay progress, ONNX stamps, int8 plans) are
read by other processes while they are rewritten; a plain ``write_text`` lets a reader catch the file empty or
cut short, which CI once did (a JSON decode error on ``demo.json``). Every such write goes through here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path


def replace_text(path: Path, text: str, mode: int = 0o644) -> Path:
    """Write ``text`` to a temp file beside ``path`` (same filesystem) and rename it over ``path``.

    The temp name is unique, so two writers never share one; a failed write (full disk) leaves no temp file.
    ``mode``: 0o644 by default (these files are read by the user's other tools).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_private(path: Path, text: str) -> Path:
    """``text`` in a file only its owner may read (0600: passwords, tokens), replaced whole: the secret is written
    into a new 0600 file renamed over the old one, so a process that opened an older, wider file keeps reading the
    old content, never the new secret."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return replace_text(path, text, mode=0o600)


def append_lines(path: Path, data: bytes) -> None:
    """Append ``data`` (whole lines, each ending in a newline) to a JSON-lines file and fsync it, or leave the file
    as it was and raise ``OSError``.

    A plain ``open("ab").write`` on a full disk left half a line at the end; the next append was glued onto it and
    the reader lost both (the feedback store answered 201 for a correction no one could read back; ingest's
    ``--output`` marked as seen an item no reader got). Here a failed write is cut back off, and a tail cut short by
    an earlier crash gets its newline first, so it stays one bad line and does not swallow the next one. An
    exclusive lock keeps concurrent appenders (the API's worker threads) from cutting each other's lines.
    """
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if not data:  # only opened (created): the caller learns now whether it can be
            return
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)  # releases the lock


def move_aside(path: Path) -> Path:
    """Rename an unreadable SQLite file (and its WAL/SHM files) with a ``.corrupt-<UTC time>`` suffix: kept for a
    post-mortem, out of the way of the fresh one that replaces it. Returns the new name of the database file."""
    target = path.with_name(f"{path.name}.corrupt-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.replace(target.with_name(target.name + suffix))
    return target
