"""What every benchmark writes next to its figures: the machine, the command that reproduces them, a run id."""

from __future__ import annotations

import json
import os
import platform
import uuid
from pathlib import Path


def write_results(results: dict, command: str, out: Path) -> None:
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    results["command"] = command
    results["run_id"] = uuid.uuid4().hex[:8]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")
