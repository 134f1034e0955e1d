"""The import contracts of `make lint` hold on the tree and catch the two violations they exist for:
a pure core importing an I/O library, and a room importing a room above it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
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
    """The lint view with a private copy of ``room`` whose ``module`` gains ``line``; ``room`` "": ``module`` is
    a ground-floor module (``finsent/<module>``)."""
    view = build(tmp_path / "view")
    package = view / "finsent"
    if room:
        link = package / room
        target = link.resolve()
        link.unlink()
        shutil.copytree(target, link, ignore=shutil.ignore_patterns("__pycache__"))
        path = link / module
    else:
        path = package / module
        text = path.read_text()
        path.unlink()
        path.write_text(text)
    with path.open("a") as fh:
        fh.write(f"\n{line}  # a deliberate violation\n")
    return view


ROOMS_BROKEN = "Rooms import only rooms below them (see CONTRIBUTING.md) BROKEN"


def test_the_tree_keeps_every_contract(tmp_path):
    proc = lint_imports(build(tmp_path / "view"))
    assert proc.returncode == 0 and "3 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize(
    ("room", "module", "line", "broken"),
    [
        ("stream", "windows.py", "import kafka", "Pure cores import no I/O library BROKEN"),
        ("stream", "surge.py", "import torch", "Pure cores import no I/O library BROKEN"),
        ("stream", "worker.py", "from finsent.backtest import run", ROOMS_BROKEN),
        ("ingest", "archive.py", "from finsent.cli import app", ROOMS_BROKEN),
        # the ground floor: the HTTP kit importing a room (it passed while the contract left finsent.http out)
        ("", "http.py", "from finsent.model import feedback_store", ROOMS_BROKEN),
        ("", "net.py", "from finsent.settings import Settings", ROOMS_BROKEN),
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


def test_every_module_of_the_package_is_in_the_layers_contract():
    """A ground-floor module the layers leave out may import anything (finsent.http once could import a room)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (layers,) = [c["layers"] for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    named = {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}
    ground = {f"finsent.{p.stem}" for p in (ROOT / "finsent").glob("*.py") if p.stem != "__init__"}
    rooms = {name for name in config["tool"]["setuptools"]["package-dir"] if name != "finsent"}
    assert ground | rooms <= named, sorted((ground | rooms) - named)
