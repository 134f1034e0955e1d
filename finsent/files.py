"""Whole-file replacement: a reader sees the old file or the new one, never half of one.

State files (the demo's ``demo.json``, Prometheus target files, replay progress, ONNX stamps, int8 plans) are
read by other processes while they are rewritten; a plain ``write_text`` lets a reader catch the file empty or
cut short, which CI once did (a JSON decode error on ``demo.json``). Every such write goes through here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_text(path: Path, text: str) -> Path:
    """Write ``text`` to a temp file beside ``path`` (same filesystem) and rename it over ``path``.

    The temp name is unique, so two writers never share one; a failed write (full disk) leaves no temp file.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are read by the user's other tools
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
