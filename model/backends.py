"""Inference backends: one call shape, ``backend(input_ids, attention_mask) -> (topic_logits, sentiment_logits)``.

=============  ==========================================================================
``torch``      fp32 on CPU; fp16 on CUDA; its forward traced (``finsent.model.tracing``)
``torch-int8`` torch dynamic int8 quantisation of every Linear (CPU only)
``onnx``       ONNX Runtime fp32 (graph built on first use and cached: ``finsent.model.onnxbuild``)
``onnx-int8``  ONNX Runtime int8, the recipe the export gate accepted (CPU): static int8 (fixed activation
               scales from the model's ``int8-static.json`` plan, so batch-invariant)
``auto``       CUDA when available; on CPU the backend ``finsent export`` measured fastest within
               the gate on these very weights (``export.json``), else ``onnx`` fp32, else ``torch``
=============  ==========================================================================
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from finsent import errors
from finsent.model import int8_static, onnxbuild
from finsent.model.network import MultiTaskModel
from finsent.model.tracing import trace_forward
from finsent.osthreads import name_os_thread

log = logging.getLogger("finsent.model.backends")

BACKENDS = ("torch", "torch-int8", "onnx", "onnx-int8")
EXPORT_MANIFEST = "export.json"
GATE_VERSION = 2  # finsent.model.export's gate; older manifests did not check batch invariance


Forward = Callable[[torch.Tensor, torch.Tensor], tuple[np.ndarray, np.ndarray]]


class Backend(Protocol):
    name: str

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise errors.ConfigError(
            f"device {name!r} asked for but CUDA is not available (set model.device to auto or cpu)"
        )
    return device


class TorchBackend:
    """The model in torch. On CUDA its weights are cast to fp16 once (autocast re-cast them, ~100 extra ops, at every
    call; fp16 rather than bf16 weights: its labels agreed with fp32 more often, bench/bench_gpu_precision.py; the old
    bf16 autocast was not measured against it). ``trace``: the forward runs as a checked TorchScript trace
    (``finsent.model.tracing``: the eager forward re-takes the GIL at every op, and crawled beside the worker's
    event loop); eager where the trace cannot be built or disagrees."""

    def __init__(self, model: MultiTaskModel, device: torch.device, int8: bool = False, trace: bool = True):
        if int8:
            if device.type != "cpu":
                raise ValueError("torch-int8 runs on CPU only")
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        model = model.to(device).eval()
        if device.type == "cuda":
            model = model.half()
        self.model = model
        self.device = device
        self.name = "torch-int8" if int8 else ("torch-cuda" if device.type == "cuda" else "torch")
        self.traced = trace_forward(model, device) if trace else None
        self.forward = self.traced if self.traced is not None else model

    @torch.inference_mode()
    def __call__(self, input_ids, attention_mask):
        t, s = self.forward(input_ids.to(self.device), attention_mask.to(self.device))
        return t.float().cpu().numpy(), s.float().cpu().numpy()


class OnnxBackend:
    """An ONNX Runtime session. ``spin_wait``: its intra-op threads busy-wait between ops (ORT's default).
    ``spin_from``: with ``spin_wait`` off, a second, spinning session serves model calls of at least this many
    texts (``for_call``). Why: a sleeping thread must be woken for every parallel op, which on 2 cores cost the
    worker ~20 % of its backlog speed; spinning threads, though, take the CPU the worker's event loop, consumer
    and broker need while a caught-up stream makes small calls (its latency doubled). Large calls only happen
    under a backlog, where the model is all that matters."""

    def __init__(
        self, path: Path, name: str, threads: int = 0, spin_wait: bool = True, spin_from: int = 0, sessions: int = 1
    ):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found; run `finsent export` for this model first")
        self.name = name
        self.path = path
        self.threads = threads
        # ``sessions`` > 1 on the CPU: a call's forwards are spread over that many sessions of one thread each
        # (``start_spread``) instead of one session parallelising every op over its intra-op pool: see
        # settings.ModelChoice.sessions for why and what it measured.
        self.spread = sessions if sessions > 1 and self._providers() == ["CPUExecutionProvider"] else 1
        if self.spread > 1:
            self.threads = threads or 1
            self.sessions = [self._session(False) for _ in range(self.spread)]
            self.session = self.sessions[0]
            self.spin_from, self.spinning = 0, None  # one thread each: no pool to spin
            # One thread per further session, so that a call started while the last one's forwards still run
            # queues its forward on each session behind the last one's (a shared pool would run two forwards on one
            # session at once beside an idle one).
            self.pools: list[ThreadPoolExecutor] = [
                ThreadPoolExecutor(1, "finsent-spread", initializer=name_os_thread, initargs=("finsent-spread",))
                for _ in self.sessions[1:]
            ]
            # Calls side by side are not made on a spread backend (``placement.calls_at_once``): one session each;
            # one caller's calls overlap only as ``start_spread`` says.
            self.plain = _CallerSessions(self.name, self.session, None)
            self.spin_sessions: _CallerSessions | None = None
            return
        self.pools = []
        self.session = self._session(spin_wait)
        self.spin_from = 0 if spin_wait or threads == 1 else spin_from  # one thread: no pool to spin
        self.spinning = self._session(True) if self.spin_from else None
        # Calls side by side (the backtest's, the API's and the worker's when set to more than one) each run their
        # forwards on a session of their own, on the CPU; a GPU session is shared, as CUDA wants one.
        on_cpu = self._providers() == ["CPUExecutionProvider"]
        self.plain = _CallerSessions(self.name, self.session, partial(self._session, spin_wait) if on_cpu else None)
        self.spin_sessions = (
            _CallerSessions(self.name, self.spinning, partial(self._session, True) if on_cpu else None)
            if self.spinning is not None
            else None
        )

    @property
    def callers(self) -> int:
        """Sessions built for forwards running at once (those for small calls; large ones have as many)."""
        return self.plain.count

    def _providers(self) -> list[str]:
        import onnxruntime as ort

        if self.name.endswith("int8"):
            return ["CPUExecutionProvider"]
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]

    def _session(self, spin: bool):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        if not spin:  # idle intra-op threads sleep instead of spinning: see settings.ModelChoice.spin_wait
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.inter_op_num_threads = 1  # one graph at a time: parallel branches only fight the intra-op pool
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            return ort.InferenceSession(str(self.path), opts, providers=self._providers())
        except Exception as err:
            # ONNX Runtime's own errors (InvalidProtobuf, InvalidGraph, Fail ...) are plain Exceptions: as a
            # GraphError they are the graph's fault, which make_backend answers by rebuilding it (or falling back).
            if not type(err).__module__.startswith("onnxruntime"):
                raise
            raise errors.GraphError(f"ONNX Runtime cannot load {self.path}: {type(err).__name__}: {err}") from err

    def start_spread(self, shares: list[Callable[[Forward], None]]) -> Spread:
        """Start ``shares[k]`` with session ``k``'s forward: the others each on its session's own thread (queued
        behind a share an earlier call left running there), then the first on the calling thread; returns once the
        first is done, with the others maybe still running (``Spread.wait``). One thread starts spread calls at a
        time: session 0 runs on it."""
        if not self.pools or len(shares) > self.spread:
            raise ValueError(f"{len(shares)} shares for {self.spread} sessions")
        running = [
            pool.submit(share, partial(_run_session, session))
            for share, session, pool in zip(shares[1:], self.sessions[1:], self.pools)
        ]
        try:
            shares[0](partial(_run_session, self.sessions[0]))
        except BaseException as err:  # noqa: BLE001  # raised by wait(), once the other shares are done
            return Spread(running, err)
        return Spread(running)

    def for_call(self, texts: int) -> Forward:
        """The forward function for a model call of ``texts`` texts (``spin_from``)."""
        if self.spin_sessions is not None and texts >= self.spin_from:
            return self.spin_sessions
        return self

    def reserve(self, calls: int) -> None:
        """Build sessions now for ``calls`` calls at once, each running its forwards on a session of its own (more
        callers than reserved still get one each, built when first needed, which costs that forward the graph's
        load). A no-op where sessions are not per caller (a spread backend, a GPU)."""
        self.plain.reserve(calls)
        if self.spin_sessions is not None:
            self.spin_sessions.reserve(calls)

    def __call__(self, input_ids, attention_mask):
        return self.plain(input_ids, attention_mask)


class _CallerSessions:
    """ONNX Runtime sessions of one kind, one per forward running at once: a forward takes an idle session and
    gives it back. Two threads running one session at once were bimodal on 2 cores: ~415 or ~490 texts/s from one
    six-second run to the next (session 26); each on its own session 462-489, as steady as one call at a time.
    ``build`` None: every forward runs on ``first`` (concurrent ones too)."""

    def __init__(self, backend: str, first, build: Callable[[], object] | None):
        self.backend, self.first, self.build = backend, first, build
        self._idle = [first]  # list.pop / append are atomic under the GIL
        self._grow = threading.Lock()
        self.count = 1

    def reserve(self, calls: int) -> None:
        if self.build is None:
            return
        with self._grow:
            while self.count < calls:
                self._idle.append(self.build())
                self.count += 1

    def _added(self):
        with self._grow:
            session = self.build()  # type: ignore[misc]  # only called when build is set
            self.count += 1
        log.info("onnx session added for a concurrent caller", extra={"backend": self.backend, "sessions": self.count})
        return session

    def __call__(self, input_ids, attention_mask):
        if self.build is None:
            return _run_session(self.first, input_ids, attention_mask)
        try:
            session = self._idle.pop()
        except IndexError:  # every session is running another caller's forward
            session = self._added()
        try:
            return _run_session(session, input_ids, attention_mask)
        finally:
            self._idle.append(session)


@dataclass(slots=True)
class Spread:
    """A spread call whose calling thread's share is done: the other sessions' shares may still be running."""

    running: list[Future]
    error: BaseException | None = None  # the calling thread's share's

    def wait(self) -> None:
        """Return when every share is done; raise the first error (the calling thread's first) only then."""
        error = self.error
        for future in self.running:
            try:
                future.result()
            except BaseException as err:  # noqa: BLE001
                error = error or err
        if error is not None:
            raise error


def _run_session(session, input_ids, attention_mask):
    t, s = session.run(
        ["topic_logits", "sentiment_logits"],
        {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()},
    )
    return t, s


def manifest(directory: Path) -> dict:
    """``export.json``: what ``finsent export`` measured for this model (empty when never exported)."""
    try:
        return json.loads((directory / EXPORT_MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def int8_recipe(directory: Path) -> str:
    """The int8 recipe the export gate accepted; never exported, static int8 when the model has its plan, else
    (``onnx-int8`` asked for by name) dynamic per-channel, whose labels depend on their batch-mates."""
    chosen = manifest(directory).get("int8_recipe")
    if chosen:
        return chosen
    return "static" if int8_static.plan_path(directory).exists() else onnxbuild.DEFAULT_INT8_RECIPE


def recommended(directory: Path) -> str | None:
    """The CPU backend ``finsent export`` measured fastest within the gate, if it was measured on these weights."""
    found = manifest(directory)
    choice = found.get("recommended")
    if choice not in BACKENDS:
        return None
    if found.get("gate", 1) < GATE_VERSION:
        log.warning(
            "export.json predates the batch-invariance gate; not trusting its choice (run `finsent export`)",
            extra={"model_dir": str(directory), "recommended": choice},
        )
        return None
    measured_on = found.get("weights_sha256")
    if measured_on and measured_on != onnxbuild.weights_digest(directory):
        log.warning(
            "export.json was measured on other weights; not trusting its choice",
            extra={"model_dir": str(directory), "measured_on": measured_on[:12]},
        )
        return None
    if choice == "onnx-int8" and found.get("int8_recipe") == "static":
        measured_plan = found.get("int8_plan_sha256")
        if measured_plan != int8_static.current_plan_digest(directory):  # re-planned or edited since the gate ran
            log.warning(
                "export.json was measured with another static int8 plan; not trusting its choice",
                extra={"model_dir": str(directory), "measured_plan": (measured_plan or "none")[:12]},
            )
            return None
    return choice


def graph_path(directory: Path, name: str, rebuild: bool = False) -> Path:
    """The ONNX graph serving backend ``name``, built (and cached) on first use; ``rebuild``: built again now."""
    return onnxbuild.ensure(directory, onnxbuild.FP32 if name == "onnx" else int8_recipe(directory), rebuild)


def _onnx_backend(directory: Path, name: str, *args) -> OnnxBackend:
    """``name``'s session on its cached graph; a graph ONNX Runtime cannot load is rebuilt once and loaded again.

    The cache checks each graph against the size and SHA-256 recorded when it was built, so a truncated file is
    rebuilt before it gets here; this covers a graph that is the file that was built and still does not load (a
    build gone wrong, an ONNX Runtime that reads it differently). Once, not in a loop: a second failure is the
    caller's to answer (fall back, or stop with the GraphError)."""
    try:
        return OnnxBackend(graph_path(directory, name), name, *args)
    except errors.GraphError as err:
        log.warning(f"{name} graph does not load; rebuilding it once", extra={"error": str(err)[:300]})
    return OnnxBackend(graph_path(directory, name, rebuild=True), name, *args)


def auto_cpu_backend(directory: Path) -> str:
    """Fastest accepted: export.json's choice; unmeasured weights get ONNX fp32 (same numbers as torch)."""
    choice = recommended(directory)
    if choice:
        return choice
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnx"


def make_backend(
    name: str,
    model: MultiTaskModel,
    directory: Path,
    device: str = "auto",
    threads: int = 0,
    spin_wait: bool = True,
    spin_from: int = 0,
    sessions: int = 1,
    trace: bool = True,
) -> Backend:
    dev = resolve_device(device)
    auto = name == "auto"
    if auto:
        name = "torch" if dev.type == "cuda" else auto_cpu_backend(directory)
    if name == "torch":
        return TorchBackend(model, dev, trace=trace)
    if name == "torch-int8":
        return TorchBackend(model, torch.device("cpu"), int8=True, trace=trace)
    if name in ("onnx", "onnx-int8"):
        # auto never fails to serve: int8 that cannot be built (or, rebuilt once, loaded) falls back to ONNX fp32,
        # then to torch, each step with one warning line
        for choice in [name, "onnx"] if auto and name == "onnx-int8" else [name]:
            try:
                return _onnx_backend(directory, choice, threads, spin_wait, spin_from, sessions)
            except (errors.GraphError, ImportError, OSError) as err:
                if not auto:
                    raise
                log.warning(f"{choice} backend unavailable", extra={"error": f"{type(err).__name__}: {err}"})
        return TorchBackend(model, dev, trace=trace)
    raise ValueError(f"unknown backend {name!r}; choose from auto, {', '.join(BACKENDS)}")
