"""What every benchmark writes next to its figures: the machine, the code, the command that reproduces them, a
run id."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command_of(script: str, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The command line that reproduces ``args``: every option of ``parser`` with the value it had, defaults
    included (bench_stream's defaults come from this machine's settings, so they are part of the run too).

    Why from the parser: commands written out by hand left options out (bench_stream's ``--latency-rate`` and
    ``--workers``), and a recorded figure could then not be re-run as it was measured."""
    argv = ["python", script]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
        argv += _option(action, flag, getattr(args, action.dest, None))
    return shlex.join(argv)


def _option(action: argparse.Action, flag: str, value: object) -> list[str]:
    """One option as the command line gives it: a flag alone, ``--no-`` form, repeated, or ``--opt=value``."""
    if isinstance(action, argparse.BooleanOptionalAction):
        return [flag if value else "--no-" + flag.removeprefix("--")]
    if action.nargs == 0:  # store_true / store_false / store_const: present only when it changed something
        return [flag] if value != action.default else []
    if value is None:
        return []
    if isinstance(action, argparse._AppendAction) and isinstance(value, list):
        return [f"{flag}={_shown(v)}" for v in value]  # repeated, as given
    if isinstance(value, list | tuple):
        return [flag, *(_shown(v) for v in value)]
    return [f"{flag}={_shown(value)}"]


def _shown(value: object) -> str:
    """A value as typed: paths inside the repository relative to it (the command runs from its root)."""
    if isinstance(value, Path) and value.is_absolute() and value.is_relative_to(ROOT):
        return str(value.relative_to(ROOT))
    return str(value)


def git_commit() -> tuple[str | None, bool | None]:
    """(the checkout's commit, whether its tracked files differ from it); (None, None) outside a git checkout or
    without git: the figures are still written."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head.stdout.strip() or None, bool(status.stdout.strip()) if status.returncode == 0 else None


def cpu_model() -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo; ``platform.processor()`` elsewhere, often empty): 2 cores of one
    CPU are not 2 cores of another, and the figures only compare on the same kind."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def info_labels(metrics_text: str, metric: str) -> dict[str, str]:
    """The labels of an ``*_info`` gauge in a /metrics page ({}: not there): what a worker or an API says it serves
    (``finsent_worker_model_info``, ``finsent_api_model_info``), read by every benchmark the same way."""
    for line in metrics_text.splitlines():
        if line.startswith(metric + "{"):
            return dict(re.findall(r'(\w+)="([^"]*)"', line.split("{", 1)[1].rsplit("}", 1)[0]))
    return {}


def write_results(results: dict, command: str, out: Path) -> None:
    commit, dirty = git_commit()
    results["machine"] = {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    results["git_commit"] = commit
    results["git_dirty"] = dirty  # tracked files changed since the commit: the commit alone does not reproduce it
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
