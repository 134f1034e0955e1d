"""Inference backends: one call shape, ``backend(input_ids, attention_mask) -> (topic_logits, sentiment_logits)``.

=============  ==========================================================================
``torch``      fp32 on CPU; fp16/bf16 autocast on CUDA
``torch-int8`` torch dynamic int8 quantisation of every Linear (CPU only)
``onnx``       ONNX Runtime fp32 (``finsent export`` writes the graph)
``onnx-int8``  ONNX Runtime with dynamic int8 weights (CPU)
``auto``       CUDA when available; on CPU the backend ``finsent export`` measured fastest
               within the accuracy tolerance (``export.json``), else ``torch``
=============  ==========================================================================
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from finsent.model.network import MultiTaskModel

log = logging.getLogger("finsent.model.backends")

BACKENDS = ("torch", "torch-int8", "onnx", "onnx-int8")
EXPORT_MANIFEST = "export.json"


class Backend(Protocol):
    name: str

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for but CUDA is not available")
    return device


class TorchBackend:
    def __init__(self, model: MultiTaskModel, device: torch.device, int8: bool = False):
        if int8:
            if device.type != "cpu":
                raise ValueError("torch-int8 runs on CPU only")
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model.to(device).eval()
        self.device = device
        self.name = "torch-int8" if int8 else ("torch-cuda" if device.type == "cuda" else "torch")
        self.amp = None
        if device.type == "cuda":
            self.amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    @torch.inference_mode()
    def __call__(self, input_ids, attention_mask):
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            t, s = self.model(input_ids.to(self.device), attention_mask.to(self.device))
        return t.float().cpu().numpy(), s.float().cpu().numpy()


class OnnxBackend:
    def __init__(self, path: Path, name: str, threads: int = 0):
        import onnxruntime as ort

        if not path.exists():
            raise FileNotFoundError(f"{path} not found; run `finsent export` for this model first")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        if name.endswith("int8"):
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.name = name

    def __call__(self, input_ids, attention_mask):
        t, s = self.session.run(
            ["topic_logits", "sentiment_logits"],
            {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()},
        )
        return t, s


def onnx_paths(directory: Path) -> dict[str, Path]:
    return {"onnx": directory / "onnx" / "model.onnx", "onnx-int8": directory / "onnx" / "model.int8.onnx"}


def recommended(directory: Path) -> str | None:
    """The CPU backend ``finsent export`` measured as fastest within tolerance, if its files exist."""
    manifest = directory / EXPORT_MANIFEST
    if not manifest.exists():
        return None
    choice = json.loads(manifest.read_text()).get("recommended")
    if choice in onnx_paths(directory) and not onnx_paths(directory)[choice].exists():
        return None
    return choice if choice in BACKENDS else None


def make_backend(name: str, model: MultiTaskModel, directory: Path, device: str = "auto") -> Backend:
    dev = resolve_device(device)
    if name == "auto":
        name = "torch" if dev.type == "cuda" else (recommended(directory) or "torch")
    if name == "torch":
        return TorchBackend(model, dev)
    if name == "torch-int8":
        return TorchBackend(model, torch.device("cpu"), int8=True)
    if name in ("onnx", "onnx-int8"):
        return OnnxBackend(onnx_paths(directory)[name], name)
    raise ValueError(f"unknown backend {name!r}; choose from auto, {', '.join(BACKENDS)}")
