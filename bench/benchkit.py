"""What every benchmark writes next to its figures: the machine, the command that reproduces them, a run id."""

from __future__ import annotations

import json
import os
import platform
import sys
import uuid
from pathlib import Path


def write_results(results: dict, command: str, out: Path) -> None:
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # this process used a GPU: its rows say which
        results["machine"]["gpu"] = torch.cuda.get_device_name(0)
    results["command"] = command
    results["run_id"] = uuid.uuid4().hex[:8]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Thread id -> (kernel name, CPU seconds used so far) for every thread of process ``pid`` (Linux /proc;
    empty elsewhere). Two readings give what each thread burnt in between."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)  # utime + stime
        except (OSError, ValueError, IndexError):
            continue  # the thread ended between listing and reading
    return out


def cpu_between(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[int, tuple[str, float]]:
    """What each thread of ``after`` burnt since ``before`` (a thread started in between: all of it)."""
    return {tid: (name, s - before.get(tid, (name, 0.0))[1]) for tid, (name, s) in after.items()}


def goal(name: str, value: float, target: float, higher_is_better: bool, unit: str = "") -> dict:
    """One goal of an issue as a benchmark reports it: the figure, the target and MET / MISSED by how much."""
    met = value >= target if higher_is_better else value <= target
    short = (target - value) if higher_is_better else (value - target)
    verdict = "MET" if met else f"MISSED by {short:.3g}{unit} ({value / target:.2f} x the goal)"
    return {
        "goal": name,
        "value": value,
        "target": target,
        "met": met,
        "shortfall": 0.0 if met else short,
        "verdict": verdict,
    }
