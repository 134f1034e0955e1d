"""The import contracts of `make lint` hold on the tree and catch the two violations they exist for:
a pure core importing an I/O library, and a room importing a room above it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from lint_view import build  # noqa: E402

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(view: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=view,
        env={"PYTHONPATH": str(view), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def view_with(tmp_path: Path, room: str, module: str, line: str) -> Path:
    """The lint view with a private copy of ``room`` whose ``module`` gains ``line``."""
    view = build(tmp_path / "view")
    link = view / "finsent" / room
    target = link.resolve()
    link.unlink()
    shutil.copytree(target, link, ignore=shutil.ignore_patterns("__pycache__"))
    with (link / module).open("a") as fh:
        fh.write(f"\n{line}  # a deliberate violation\n")
    return view


def test_the_tree_keeps_every_contract(tmp_path):
    proc = lint_imports(build(tmp_path / "view"))
    assert proc.returncode == 0 and "3 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize(
    ("room", "module", "line", "broken"),
    [
        ("stream", "windows.py", "import kafka", "Pure cores import no I/O library BROKEN"),
        ("stream", "surge.py", "import torch", "Pure cores import no I/O library BROKEN"),
        ("stream", "worker.py", "from finsent.backtest import run", "Rooms import only rooms below them"),
        ("ingest", "archive.py", "from finsent.cli import app", "Rooms import only rooms below them"),
        (
            "web",
            "state.py",
            "from finsent.model import artifact",
            "Web request handlers import no model runtime BROKEN",
        ),
    ],
)
def test_a_deliberate_violation_breaks_the_build(tmp_path, room, module, line, broken):
    proc = lint_imports(view_with(tmp_path, room, module, line))
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert broken in proc.stdout and "BROKEN" in proc.stdout
