"""ONNX graphs of a model, built on first use and cached beside it, keyed by the weights they came from.

Why on first use: a fresh clone ships the weights only (the graphs are ~90 MB and derived), yet the
fastest accepted CPU backend is an ONNX one. So the first process that asks for a graph builds it under
a file lock (the demo starts the worker and the API at once; one builds, the other waits and reuses),
writes it atomically (fsync'ed before the rename), and records the SHA-256 of the weights it came from and
the graph file's own size and SHA-256. A graph whose weights digest no longer matches (the model directory
was retrained or edited) is rebuilt, never served stale; so is one whose file is not the file that was built
(truncated by a full disk or a copy cut short, edited, or stamped by an older finsent that did not record the
file): a corrupt graph once failed every load with ONNX Runtime's InvalidProtobuf and was never rebuilt, because
its stamp still matched. Checking costs one SHA-256 of the served graph per load (measured on the 2-core
machine: ~65 ms for the shipped static int8 graph, 67 MB, ~125 ms for fp32, 90 MB; beside the 45 MB of weights
hashed anyway, and ORT reads the file next from the page cache). Temp files a killed build left behind are swept
under the lock.

Quantisation recipes (``RECIPES``) are deterministic functions of the fp32 graph (and, for static int8, of
the calibration plan shipped with the model, ``int8_static``), so the recipe that
``finsent export`` measured and accepted under the gate (``export.json``) is rebuilt bit-for-bit on any
machine without the evaluation data. Where the model directory is read-only, the cache falls back to
``$XDG_CACHE_HOME/finsent/onnx/<name>@<version>-<digest>/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finsent.errors import GraphError
from finsent.files import replace_text

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger("finsent.model.onnxbuild")

GRAPH_DIR = "onnx"
STAMP = "build.json"
FP32 = "fp32"
# Int8 recipes measured by ``finsent export`` (every one is in its table). Per-channel weight scales are
# what keeps int8 within the gate: per-tensor scales (ORT's default) put topic accuracy 0.5 pt down.
RECIPES: dict[str, dict[str, Any]] = {
    "dynamic": {"per_channel": False, "reduce_range": False, "op_types": None},  # ORT default: MatMul + Gather
    "dynamic-pc": {"per_channel": True, "reduce_range": False, "op_types": ["MatMul"]},
    "dynamic-pc-rr": {"per_channel": True, "reduce_range": True, "op_types": ["MatMul"]},
    # Fixed activation scales from the model's plan (``int8_static``): batch-invariant, unlike the dynamic ones.
    "static": {"static": True},
}
DEFAULT_INT8_RECIPE = "dynamic-pc"  # asked for on a model never exported and without a static plan


def weights_digest(model_dir: Path) -> str:
    return file_digest(model_dir / "weights.safetensors")


def cache_dir(model_dir: Path, digest: str) -> Path:
    """Beside the model when writable, else in the user's cache (an installed, read-only model)."""
    local = model_dir / GRAPH_DIR
    if _writable(local):
        return local
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finsent" / GRAPH_DIR
    meta = json.loads((model_dir / "meta.json").read_text())
    fallback = root / f"{meta['name']}@{meta['version']}-{digest[:12]}"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(exist_ok=True)
        probe = directory / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
        return True
    except OSError:
        return False


def graph_name(recipe: str) -> str:
    return "model.onnx" if recipe == FP32 else f"model.int8-{recipe}.onnx"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with (directory / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


FILES = "files"  # build.json's section of each graph file's {"size", "sha256"}, as built
TOOLS = "tools"  # build.json's section of the library versions each graph was built with (``toolchain``)


def toolchain() -> str:
    """The versions of the libraries that build and run a graph (torch exports it, onnx holds it, ONNX Runtime
    quantises and runs it). A graph cached under other versions is rebuilt: an upgrade can change what the
    exporter writes or how the quantiser rounds, and a graph reused across it would not be the one the export gate
    measured."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("torch", "onnx", "onnxruntime"):
        try:
            found.append(f"{package}={version(package)}")
        except PackageNotFoundError:
            found.append(f"{package}=none")
    return ",".join(found)


def _stamps(directory: Path) -> dict[str, Any]:
    """``build.json``: per graph, what it was built from (``name -> digest``), and under ``files`` each graph
    file's size and SHA-256 as written."""
    try:
        stamps = json.loads((directory / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    return stamps if isinstance(stamps, dict) else {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read 1 MiB at a time (weights and graphs are 60-90 MB)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_stamp(directory: Path, name: str, digest: str) -> None:
    stamps = _stamps(directory)
    stamps[name] = digest
    path = directory / name
    previous = stamps.get(FILES)
    files = previous if isinstance(previous, dict) else {}
    stamps[FILES] = {**files, name: {"size": path.stat().st_size, "sha256": file_digest(path)}}
    tools = stamps.get(TOOLS)
    stamps[TOOLS] = {**(tools if isinstance(tools, dict) else {}), name: toolchain()}
    replace_text(directory / STAMP, json.dumps(stamps, indent=2, sort_keys=True) + "\n")


def _fresh(stamps: dict[str, Any], path: Path, source: str) -> bool:
    """``path`` was built from ``source`` and is still byte for byte the file that was built (size first, so a
    truncated file costs no hashing). A stamp that matches a file that does not is logged: the graph is rebuilt."""
    if stamps.get(path.name) != source or not path.exists():
        return False
    tools = stamps.get(TOOLS)
    built_with = tools.get(path.name) if isinstance(tools, dict) else None
    if built_with != toolchain():
        log.info(
            "cached onnx graph was built with other library versions; rebuilding it",
            extra={"path": str(path), "built_with": built_with, "now": toolchain()},
        )
        return False
    file = (stamps.get(FILES) or {}).get(path.name)
    size = path.stat().st_size
    if isinstance(file, dict) and file.get("size") == size and file.get("sha256") == file_digest(path):
        return True
    log.warning(
        "cached onnx graph is not the file its stamp records; rebuilding it",
        extra={"path": str(path), "bytes": size, "stamped": file if isinstance(file, dict) else None},
    )
    return False


def _sweep_temps(directory: Path) -> None:
    """Remove the temp files of builds killed mid-write (``_atomic_target``); called under the lock, so no build
    that is still running owns one."""
    for tmp in directory.glob("model*.onnx.*.tmp"):
        tmp.unlink(missing_ok=True)


def ensure(model_dir: Path, recipe: str = FP32, rebuild: bool = False) -> Path:
    """The path of ``recipe``'s graph for ``model_dir``, built now if missing or stale. ``rebuild``: build it
    again even so (ONNX Runtime could not load a graph that passed the checks; see ``backends.make_backend``)."""
    if recipe != FP32 and recipe not in RECIPES:
        raise GraphError(f"unknown int8 recipe {recipe!r}; known: {sorted(RECIPES)}")
    digest = weights_digest(model_dir)
    plan = None
    stamp = digest
    if RECIPES.get(recipe, {}).get("static"):
        from finsent.model import int8_static

        plan, plan_digest = int8_static.load_plan(model_dir, digest)
        stamp = f"{digest}+plan:{plan_digest}"  # a new plan for the same weights rebuilds the graph
    directory = cache_dir(model_dir, digest)
    path = directory / graph_name(recipe)
    with _locked(directory):
        _sweep_temps(directory)
        stamps = _stamps(directory)
        if not rebuild and _fresh(stamps, path, stamp):
            return path
        if recipe != FP32:
            ensure_fp32 = directory / graph_name(FP32)
            if not _fresh(stamps, ensure_fp32, digest):
                _build_fp32(model_dir, ensure_fp32)
                _write_stamp(directory, ensure_fp32.name, digest)
            started = time.monotonic()
            _quantize(ensure_fp32, path, RECIPES[recipe], plan)
        else:
            started = time.monotonic()
            _build_fp32(model_dir, path)
        _write_stamp(directory, path.name, stamp)
        log.info(
            "onnx graph built",
            extra={
                "model_dir": str(model_dir),
                "recipe": recipe,
                "path": str(path),
                "seconds": round(time.monotonic() - started, 1),
                "weights_sha256": digest[:12],
            },
        )
    return path


def _commit(tmp: Path, path: Path) -> None:
    """``tmp`` on disk (fsync) before it is renamed to ``path``, and the rename itself on disk: without the fsync,
    a crash soon after the rename can leave ``path`` empty or cut short under a stamp that calls it built."""
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_target(path: Path) -> Path:
    """A temp file beside ``path`` (same filesystem, so ``os.replace`` is atomic), readable like any model file."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o644)
    os.close(fd)
    return Path(tmp)


def _build_fp32(model_dir: Path, path: Path) -> None:
    import torch

    from finsent.model import artifact

    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError as err:
        raise GraphError("ONNX export needs the onnx package (pip install finsent's dependencies)") from err
    model, tokenizer, _ = artifact.load(model_dir)
    sample = tokenizer(["finsent export sample headline"], return_tensors="pt")
    tmp = _atomic_target(path)
    try:
        torch.onnx.export(
            _two_outputs(model).eval(),
            (sample["input_ids"], sample["attention_mask"]),
            str(tmp),
            input_names=["input_ids", "attention_mask"],
            output_names=["topic_logits", "sentiment_logits"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                "topic_logits": {0: "batch"},
                "sentiment_logits": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _quantize(fp32: Path, path: Path, recipe: dict[str, Any], plan: Any = None) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = _atomic_target(path)
    try:
        if plan is not None:
            from finsent.model import int8_static

            int8_static.quantize(fp32, tmp, plan)
        else:
            quantize_dynamic(
                str(fp32),
                str(tmp),
                weight_type=QuantType.QInt8,
                per_channel=recipe["per_channel"],
                reduce_range=recipe["reduce_range"],
                op_types_to_quantize=recipe["op_types"],
            )
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _two_outputs(model: nn.Module) -> nn.Module:
    """The network wrapped so the exported graph has exactly two named outputs (the wrapper class is built here, so
    importing this module needs no torch)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids, attention_mask)

    return Logits(model)
