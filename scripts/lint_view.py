"""Build ``.lint/finsent``: the installed layout (``finsent.<room>``) as symlinks, for mypy and import-linter.

Why: the rooms are top-level folders that the editable install maps to ``finsent.<room>`` with a custom
import finder, which neither mypy nor import-linter (grimp) follow; both walk a package directory. The
view costs a few symlinks and is rebuilt on every ``make lint``, so it never goes stale.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rooms() -> dict[str, str]:
    """``finsent.<room>`` -> folder, from pyproject's package-dir (the one place that says it)."""
    import tomllib

    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {name: folder for name, folder in package_dir.items() if name != "finsent"}


def build(view: Path = ROOT / ".lint") -> Path:
    shutil.rmtree(view, ignore_errors=True)
    package = view / "finsent"
    package.mkdir(parents=True)
    for source in sorted((ROOT / "finsent").glob("*.py")):
        (package / source.name).symlink_to(source)
    for name, folder in rooms().items():
        (package / name.split(".", 1)[1]).symlink_to(ROOT / folder, target_is_directory=True)
    return view


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / ".lint"))
