"""How many model calls run side by side, and with how many threads each: the API's, the backtest's and the
stream worker's rule.

Why: on a small CPU, ONNX Runtime parallelises one call's matrices over its intra-op threads badly at the
sizes a service makes (a few headlines from concurrent clients; and a thread preempted by the caller's own
bookkeeping stalls every op's barrier). Single-threaded calls side by side keep every core busy instead:
measured on 2 cores (int8 MiniLM-L6, bench/bench_api.py), two one-thread calls at 32 texts each scored
651-734 texts/s against 446-645 for one two-thread call at a time; in calls of 375 headlines with forwards of 8
(the worker's backlog), 846-870 against 517-735. No torch here: the API's request-side modules import this.
"""

from __future__ import annotations

import os
from typing import Any

from finsent.settings import ModelChoice


def cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the platform tells)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def side_by_side(choice: ModelChoice, calls: int = 0) -> ModelChoice:
    """The model settings for ``calls`` calls side by side (0: one per core): unless ``model.threads`` is set,
    each call gets its share of the cores (one thread each when the calls are one per core), so that the calls
    together do not oversubscribe the CPU."""
    calls = calls or cpu_cores()
    if choice.threads or calls == 1:
        return choice
    # Each call pins its threads, and its forwards run on one session at a time (model.sessions would spread every
    # call over further threads, oversubscribing the cores the calls side by side already fill); the calls run
    # on sessions of their own (``Classifier.ready_for_calls``).
    return choice.model_copy(update={"threads": max(1, cpu_cores() // calls), "sessions": 1})


AUTO_SESSIONS_MAX = 8  # each session holds its own copy of the graph; measured on 2 cores only


def sessions_for(choice: ModelChoice) -> int:
    """ONNX Runtime sessions one model call's forwards are spread over (``model.sessions``; 0, auto: one per core,
    at most ``AUTO_SESSIONS_MAX``, when the call has the machine to itself, i.e. ``model.threads`` is unset, else
    one). Calls that run side by side (the API with ``web.classify_concurrency`` >= 2, the backtest) get one
    session each from ``side_by_side``."""
    if choice.sessions:
        return choice.sessions
    return 1 if choice.threads else min(cpu_cores(), AUTO_SESSIONS_MAX)


def calls_for_threads(threads: int) -> int:
    """Calls side by side that fill the cores when each uses ``threads`` intra-op threads (0, unset: one call)."""
    return max(1, cpu_cores() // threads) if threads else 1


def calls_at_once(classifier: Any, requested: int = 0) -> int:
    """Model calls to run side by side on a loaded classifier: ``requested``, else (0, auto) one where the backend
    spreads each call over its sessions, one per ``threads`` cores of its backend with ONNX Runtime, whose
    sessions run concurrent calls each on its own threads; one otherwise (torch spreads every call over all
    cores, and a GPU wants one large batch, not several small ones; a stand-in without a backend gets one)."""
    if requested:
        return requested
    backend = getattr(classifier, "backend", None)
    if getattr(backend, "spread", 1) > 1:
        return 1  # each call already spreads its forwards over one session per core (model.sessions)
    name, threads = getattr(backend, "name", ""), getattr(backend, "threads", 0)
    return calls_for_threads(threads) if name.startswith("onnx") else 1


def alone_choice(choice: ModelChoice, calls: int, backend_name: str, split_from: int) -> ModelChoice | None:
    """The model settings for a call that runs alone below a backlog (``stream.split_from_records``), or None
    where there is no such call: one call at a time anyway, threads pinned by ``model.threads``, or a backend
    other than ONNX Runtime (torch spreads every call over all cores already). Its calls hold fewer than
    ``split_from`` texts, so it needs no spinning session for large calls unless those start below that.

    Its backend is ``backend_name``, the one the side-by-side calls serve, not the setting: ``auto`` resolved again
    could land elsewhere (an int8 graph that failed to build once), and the worker's log and metrics name one."""
    if calls <= 1 or split_from <= 0 or choice.threads or not backend_name.startswith("onnx"):
        return None
    update: dict[str, Any] = {"backend": backend_name}
    if choice.spin_from_texts >= split_from:
        update["spin_from_texts"] = 0
    return choice.model_copy(update=update)


MODEL_INFO_LABELS = ("model", "backend", "recipe", "accepted")  # the worker's and the API's *_model_info


def model_info(classifier: Any) -> dict[str, str]:
    """What a loaded classifier serves, as the worker's and the API's ``*_model_info`` metrics and start logs name
    it: model version, backend, the graph it runs (``recipe``) and whether the export gate accepted that graph for
    these weights. Why: ``backend="onnx-int8"`` alone did not say which int8, nor whether the gate vouched for it.
    Read with ``getattr``: a stand-in classifier (tests of other routes) has no backend."""
    backend = getattr(classifier, "backend", None)
    return {
        "model": str(getattr(classifier, "version", "")),
        "backend": str(getattr(backend, "name", "")),
        "recipe": str(getattr(backend, "recipe", "")),
        "accepted": str(bool(getattr(backend, "accepted", False))).lower(),
    }


__all__ = [
    "MODEL_INFO_LABELS",
    "alone_choice",
    "calls_at_once",
    "calls_for_threads",
    "cpu_cores",
    "model_info",
    "sessions_for",
    "side_by_side",
]
