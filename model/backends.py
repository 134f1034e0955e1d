"""Inference backends: one call shape, ``backend(input_ids, attention_mask) -> (topic_logits, sentiment_logits)``.

=============  ==========================================================================
``torch``      fp32 on CPU; fp16 on CUDA; its forward traced (``finsent.model.tracing``)
``torch-int8`` torch dynamic int8 quantisation of every Linear (CPU only)
``onnx``       ONNX Runtime fp32 (graph built on first use and cached: ``finsent.model.onnxbuild``)
``onnx-int8``  ONNX Runtime int8, the recipe the export gate accepted for these weights (CPU): static int8
               (fixed activation scales from the model's ``int8-static.json`` plan, so batch-invariant);
               none accepted, it still serves (asked for by name) with one warning line
``auto``       CUDA when available; on CPU the backend ``finsent export`` measured fastest within
               the gate on these very weights (``export.json``), else ``onnx`` fp32, else ``torch``
=============  ==========================================================================

Every backend names the graph it runs (``recipe``: fp32, fp16, int8-static, int8-dynamic-pc ...) and whether the
gate accepted it (``accepted``), so the worker's and the API's logs and ``*_model_info`` metrics say what serves.
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
    recipe: str  # the graph it runs: fp32, fp16, int8-dynamic (torch), int8-<onnxbuild recipe> (ONNX)
    accepted: bool  # fp32 or the export gate's accepted choice for these weights (``trusted_manifest``)

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

    def __init__(
        self,
        model: MultiTaskModel,
        device: torch.device,
        int8: bool = False,
        trace: bool = True,
        accepted: bool | None = None,
    ):
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
        self.recipe = "int8-dynamic" if int8 else ("fp16" if device.type == "cuda" else onnxbuild.FP32)
        # int8 is accepted only where the caller found the gate's verdict (``make_backend``); fp32 is the gate's
        # reference and fp16 what auto serves on a GPU (the gate measures the CPU's graphs)
        self.accepted = (not int8) if accepted is None else accepted
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
        self,
        path: Path,
        name: str,
        threads: int = 0,
        spin_wait: bool = True,
        spin_from: int = 0,
        sessions: int = 1,
        accepted: bool | None = None,
    ):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found; run `finsent export` for this model first")
        self.name = name
        self.path = path
        self.recipe = graph_recipe(path)
        # ``make_backend`` passes the gate's verdict; a graph opened directly (``finsent export``'s candidates) is
        # accepted only as fp32, the gate's reference
        self.accepted = self.recipe == onnxbuild.FP32 if accepted is None else accepted
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


def graph_recipe(path: Path) -> str:
    """The recipe a graph file was built with, from its name (``onnxbuild.graph_name``): fp32 or int8-<recipe>."""
    if path.name == onnxbuild.graph_name(onnxbuild.FP32):
        return onnxbuild.FP32
    return path.name.removeprefix("model.").removesuffix(".onnx")


NEVER_EXPORTED = "never exported"
# export.json's fields the serving side reads, with the type ``finsent export`` writes each in (or null)
_FIELDS: dict[str, type] = {
    "gate": int,
    "recommended": str,
    "weights_sha256": str,
    "int8_recipe": str,
    "int8_plan_sha256": str,
    "backends": dict,
    "toolchain": str,
}


def manifest(directory: Path) -> dict:
    """``export.json``: what ``finsent export`` measured for this model (empty when never exported, unreadable, or
    not a JSON object: a hand-edited ``[]`` or ``null`` must not stop the model from loading)."""
    try:
        found = json.loads((directory / EXPORT_MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _malformed(found: dict) -> str | None:
    """The first field this module reads whose value ``finsent export`` would never write (None: none). Why: a
    string gate or a list recipe crashed model loading with a TypeError, and auto must never fail to serve."""
    for field, kind in _FIELDS.items():
        value = found.get(field)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"{field} is a {type(value).__name__}, not a {kind.__name__}"
    return None


def _judge(directory: Path) -> tuple[dict | None, str]:
    """(export.json, "") when its measurements hold for the weights in ``directory`` under the current gate, else
    (None, why not)."""
    found = manifest(directory)
    if not found:
        return None, NEVER_EXPORTED
    bad = _malformed(found)
    if bad:
        return None, f"export.json is malformed ({bad})"
    if found.get("gate", 1) < GATE_VERSION:
        return None, "export.json predates the batch-invariance gate"
    measured_on = found.get("weights_sha256")
    if measured_on != onnxbuild.weights_digest(directory):
        return None, "export.json was measured on other weights" if measured_on else "export.json names no weights"
    measured_with = found.get("toolchain")  # absent from tables measured before it was recorded: trusted as before
    if measured_with and measured_with != onnxbuild.toolchain():
        return None, f"export.json was measured with other library versions ({measured_with})"
    return found, ""


def trusted_manifest(directory: Path) -> dict | None:
    """export.json when it was measured on these very weights under the current gate, else None.

    One judgement for every reader: auto's choice (``recommended``) and ``onnx-int8`` asked for by name
    (``int8_choice``) used to check export.json each their own way, and the second served whatever recipe it named
    without asking whether the gate had measured these weights. Whether the int8 recipe also still holds (a static
    plan re-made since) is ``int8_choice``'s."""
    return _judge(directory)[0]


@dataclass(frozen=True, slots=True)
class Int8Choice:
    """The int8 recipe ``onnx-int8`` serves, and whether the export gate accepted it for these weights."""

    recipe: str  # an ``onnxbuild.RECIPES`` key
    accepted: bool
    why: str = ""  # why not accepted


def _row_accepted(found: dict, row: str) -> bool | None:
    """The gate's verdict on ``row`` of export.json's table (None: no such row, or not a verdict)."""
    entry = (found.get("backends") or {}).get(row)
    verdict = entry.get("accepted") if isinstance(entry, dict) else None
    return verdict if isinstance(verdict, bool) else None


def _int8_verdict(found: dict | None, why: str, directory: Path) -> Int8Choice:
    """``int8_choice`` from a judged export.json: its recipe if accepted (and, static, measured with this very
    plan), else the most trustworthy one there is, unaccepted, with the reason."""
    if found is not None:
        recipe = found.get("int8_recipe")
        if recipe is None:
            why = "no int8 recipe passed the gate"
        elif recipe not in onnxbuild.RECIPES:
            why = f"export.json names an unknown int8 recipe {recipe!r}"
        elif _row_accepted(found, f"onnx-int8:{recipe}") is False:
            why = f"the gate refused int8 recipe {recipe!r}"
        elif onnxbuild.RECIPES[recipe].get("static") and (
            found.get("int8_plan_sha256") != int8_static.current_plan_digest(directory)
        ):
            return Int8Choice(recipe, False, "the static int8 plan changed since the gate measured it")
        else:
            return Int8Choice(recipe, True)
    fallback = "static" if int8_static.plan_path(directory).exists() else onnxbuild.DEFAULT_INT8_RECIPE
    return Int8Choice(fallback, False, why)


def int8_choice(directory: Path) -> Int8Choice:
    """The int8 recipe ``onnx-int8`` serves: the one the export gate accepted for these weights (and, static, for
    this plan); failing that (only when asked for by name), static int8 when the model has its plan, else dynamic
    per-channel, whose labels depend on their batch-mates: either not accepted."""
    found, why = _judge(directory)
    return _int8_verdict(found, why, directory)


def recommended(directory: Path) -> str | None:
    """The CPU backend ``finsent export`` measured fastest within the gate, if it was measured on these weights
    (and, for static int8, this plan) under the current gate."""
    found, why = _judge(directory)
    if found is None:
        if why != NEVER_EXPORTED:
            log.warning(f"{why}; not trusting its choice (run `finsent export`)", extra={"model_dir": str(directory)})
        return None
    choice = found.get("recommended")
    if choice not in BACKENDS:
        return None
    if choice == "onnx-int8":
        int8 = _int8_verdict(found, "", directory)
        if not int8.accepted:
            log.warning(
                f"{int8.why}; not trusting export.json's choice (run `finsent export`)",
                extra={"model_dir": str(directory), "recipe": int8.recipe},
            )
            return None
    return choice


def _warn_unaccepted(name: str, recipe: str, why: str, batch_invariant: bool) -> None:
    """One line when a quantised graph the gate did not accept is served because it was asked for by name: the
    user asked, so it serves, but its labels are not the ones the gate vouched for."""
    risk = "labels may differ from fp32" + ("" if batch_invariant else " and depend on batch-mates")
    log.warning(
        f"{name} serves {recipe}, not accepted by the export gate for these weights ({why}): {risk}; "
        "run `finsent export`",
        extra={"backend": name, "recipe": recipe, "why": why},
    )


def _onnx_backend(
    directory: Path, name: str, recipe: str, accepted: bool, opener: Callable[..., OnnxBackend]
) -> OnnxBackend:
    """``name``'s session on its cached graph; a graph ONNX Runtime cannot load is rebuilt once and loaded again.

    The cache checks each graph against the size and SHA-256 recorded when it was built, so a truncated file is
    rebuilt before it gets here; this covers a graph that is the file that was built and still does not load (a
    build gone wrong, an ONNX Runtime that reads it differently). Once, not in a loop: a second failure is the
    caller's to answer (fall back, or stop with the GraphError)."""
    try:
        return opener(onnxbuild.ensure(directory, recipe), name, accepted=accepted)
    except errors.GraphError as err:
        log.warning(f"{name} graph does not load; rebuilding it once", extra={"error": str(err)[:300]})
    return opener(onnxbuild.ensure(directory, recipe, rebuild=True), name, accepted=accepted)


def _onnx_choice(directory: Path, name: str, auto: bool, opener: Callable[..., OnnxBackend]) -> OnnxBackend:
    """``onnx`` or ``onnx-int8`` with the graph it serves; int8 the gate did not accept for these weights is
    served only when asked for by name, with one warning line (auto never picks it: ``recommended``)."""
    if name == "onnx":
        return _onnx_backend(directory, name, onnxbuild.FP32, True, opener)
    int8 = int8_choice(directory)
    if not int8.accepted and not auto:
        static = bool(onnxbuild.RECIPES[int8.recipe].get("static"))
        _warn_unaccepted(name, f"int8-{int8.recipe}", int8.why, batch_invariant=static)
    return _onnx_backend(directory, name, int8.recipe, int8.accepted, opener)


def _torch_int8(model: MultiTaskModel, directory: Path, trace: bool, auto: bool) -> TorchBackend:
    """torch's dynamic int8: accepted when auto picked it (``recommended`` names only what the gate accepted) or
    the gate's trusted table says so; else served (asked for by name) with one warning line."""
    if auto:
        return TorchBackend(model, torch.device("cpu"), int8=True, trace=trace, accepted=True)
    found, why = _judge(directory)
    verdict = _row_accepted(found, "torch-int8") if found is not None else None
    if found is not None and not verdict:
        why = "the gate refused it" if verdict is False else "export.json did not measure it"
    if not verdict:
        _warn_unaccepted("torch-int8", "int8-dynamic", why, batch_invariant=False)
    return TorchBackend(model, torch.device("cpu"), int8=True, trace=trace, accepted=bool(verdict))


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
        return _torch_int8(model, directory, trace, auto)
    if name in ("onnx", "onnx-int8"):
        # auto never fails to serve: int8 that cannot be built (or, rebuilt once, loaded) falls back to ONNX fp32,
        # then to torch, each step with one warning line
        opener = partial(OnnxBackend, threads=threads, spin_wait=spin_wait, spin_from=spin_from, sessions=sessions)
        for choice in [name, "onnx"] if auto and name == "onnx-int8" else [name]:
            try:
                return _onnx_choice(directory, choice, auto, opener)
            except (errors.GraphError, ImportError, OSError) as err:
                if not auto:
                    raise
                log.warning(f"{choice} backend unavailable", extra={"error": f"{type(err).__name__}: {err}"})
        return TorchBackend(model, dev, trace=trace)
    raise errors.ConfigError(f"unknown backend {name!r}; choose from auto, {', '.join(BACKENDS)}")
