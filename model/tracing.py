"""The torch backend's forward as a TorchScript trace, checked against the model it came from.

Why: an eager forward of MiniLM-L6 is hundreds of small ops, each dispatched from Python, and every dispatch releases
and re-takes the GIL. Beside a busy Python thread (the stream worker's event loop) each re-take waits out the
interpreter's switch interval (5 ms), so the forward crawls. Measured (session 24), one forward beside a
thread looping in pure Python: on the lent H200 (256 texts, fp16/bf16) 1,375 ms eager against 5 ms alone, and
14 ms traced; on the 2-core CPU (3 texts, fp32) 512 ms eager against 10 ms alone, and 37 ms traced. A trace
runs the whole graph in C++ with the GIL released. Bare, it also scores faster where the forward's Python was
the cost: torch-int8 on 2 CPU cores 1,062 against 640 texts/s, fp16 on the H200 12,989 against 11,232. (It did
not lift the GPU worker's end-to-end rate, which other Python holders of the GIL bound: deploy/SCALING.md.)

Why checked: a trace records one path through the Python control flow it ran (transformers' mask code branches
on its inputs), so it is compared with the eager model on inputs of other shapes, with and without padding,
before it is used; a trace that disagrees, or that cannot be built, leaves the eager forward in place.
"""

from __future__ import annotations

import logging
import warnings

import torch

from finsent.model.batching import pad

log = logging.getLogger("finsent.model.tracing")

# Token ids for the example and check inputs: inside any BERT vocabulary, away from the special tokens.
_ID_LOW, _ID_HIGH = 1000, 2000


def _inputs(lengths: list[int], device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids, one row per length, padded as every model call is (``batching.pad``)."""
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randint(_ID_LOW, _ID_HIGH, (n,), generator=gen).tolist() for n in lengths]
    ids, mask = pad(rows, 0)
    return ids.to(device), mask.to(device)


# Row lengths: the trace is made on the first, with padding; checked on the others: more rows, longer, heavily
# padded, and a single row without any padding (transformers may skip an all-ones mask).
_EXAMPLE = [9, 5]
_CHECKS = ([13, 7, 1], [4], [21, 21, 3, 17, 2])


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 2e-2


# Calls per check input: TorchScript's profiling executor runs a graph as traced for the first calls and an
# optimised plan after (on CUDA possibly with fused kernels), so each check is repeated past that point.
_CALLS_PER_CHECK = 3


def trace_forward(model: torch.nn.Module, device: torch.device) -> torch.jit.ScriptModule | None:
    """``model``'s forward traced on ``device`` (in its own dtype), or None where the trace cannot be built or
    does not reproduce the eager forward on the check inputs (each call of each, optimised plans included)."""
    try:
        dtype = next(model.parameters()).dtype
        with warnings.catch_warnings(), torch.no_grad():
            # "Converting a tensor to a Python boolean might cause the trace to be incorrect": the checks below
            # are how this module finds out whether it did. torch 2.13 also deprecates torch.jit.trace: once it
            # is gone, the except below serves the eager forward and logs why.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(model, _inputs(_EXAMPLE, device, seed=0), check_trace=False)
        with torch.inference_mode():
            for seed, lengths in enumerate(_CHECKS, start=1):
                ids, mask = _inputs(lengths, device, seed)
                expected = model(ids, mask)
                for _ in range(_CALLS_PER_CHECK):
                    for eager, got in zip(expected, traced(ids, mask), strict=True):
                        diff = (eager.float() - got.float()).abs().max().item()
                        if diff > _tolerance(dtype) * max(1.0, eager.float().abs().max().item()):
                            log.warning(
                                "traced forward disagrees with the model; serving it eager",
                                extra={"shape": list(ids.shape), "max_abs_diff": diff},
                            )
                            return None
    except Exception as err:  # noqa: BLE001  # any failure to trace leaves the eager forward, which still works
        log.warning("could not trace the forward; serving it eager", extra={"error": f"{type(err).__name__}: {err}"})
        return None
    return traced
