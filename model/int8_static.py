"""Static (calibrated) int8: the int8 a risk desk can serve, because a headline's label never depends on its
batch-mates.

Dynamic int8 quantises activations with one scale per batch, so live, replay and backtest (which batch the
same headline differently) disagreed; the export gate refuses it. Here every activation scale is fixed once,
from training text, and stored with the model as a *plan* (``int8-static.json``): ONNX Runtime's calibration
ranges plus the MatMuls kept in fp32. The graph is then a deterministic function of the fp32 graph and the
plan, rebuilt on any machine without data (``finsent.model.onnxbuild``).

Which MatMuls stay fp32 is measured, not guessed: each weighted MatMul is quantised alone and its effect on
the outputs (KL divergence from fp32) ranked on training text the calibration did not use; then all but the
K most sensitive are quantised together, for K = 0, 1, ..., and the fewest kept whose labels agree with fp32
on ``TARGET_AGREEMENT`` of that text is the plan. None of this looks at validation text: the export gate,
which does, stays the acceptance test rather than the thing tuned against.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from finsent.errors import GraphError
from finsent.files import replace_text

log = logging.getLogger("finsent.model.int8_static")

PLAN = "int8-static.json"
CALIBRATION_TEXTS = 400
SELECTION_TEXTS = 2000
TARGET_AGREEMENT = 0.99  # a margin over the gate's 0.98 agreement
MAX_KEEP = 12


@dataclass
class Plan:
    weights_sha256: str  # the weights the ranges were measured on; another model's plan is never used
    keep: list[str]  # MatMuls left fp32
    calibration: dict[str, Any]  # ONNX Runtime's calibration cache (TensorsData JSON), every weighted MatMul
    ranking: list[dict] = field(default_factory=list)  # each MatMul quantised alone: KL from fp32, flips
    keep_top: list[dict] = field(default_factory=list)  # all but the top K quantised: agreement, KL
    texts: dict[str, Any] = field(default_factory=dict)  # where the calibration and selection text came from


def plan_path(model_dir: Path) -> Path:
    return model_dir / PLAN


def load_plan(model_dir: Path, digest: str) -> tuple[Plan, str]:
    """The model's plan and the SHA-256 of its file; a clear ``GraphError`` when missing or for other weights."""
    path = plan_path(model_dir)
    try:
        raw = path.read_bytes()
        plan = Plan(**json.loads(raw))
    except FileNotFoundError:
        raise GraphError(f"no static int8 plan ({PLAN}) in {model_dir}; run `finsent export --plan-static`") from None
    except (OSError, ValueError, TypeError) as err:
        raise GraphError(f"unreadable static int8 plan {path}: {err}") from None
    if not (
        isinstance(plan.keep, list)
        and all(isinstance(k, str) for k in plan.keep)
        and isinstance(plan.calibration, dict)
        and isinstance(plan.calibration.get("data"), dict)
    ):
        raise GraphError(
            f"malformed static int8 plan {path}: `keep` must be a list of names, `calibration` ORT's ranges"
        )
    if plan.weights_sha256 != digest:
        raise GraphError(f"{path} was measured on other weights; run `finsent export --plan-static` again")
    return plan, plan_digest(raw)


def plan_digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def current_plan_digest(model_dir: Path) -> str | None:
    """The SHA-256 of the model's plan file, None without one (what ``export.json`` records it measured)."""
    try:
        return plan_digest(plan_path(model_dir).read_bytes())
    except OSError:
        return None


def weighted_matmuls(fp32: Path) -> dict[str, str]:
    """The MatMuls with a constant weight (the encoder's projections), each with the activation it reads, in
    graph order. Attention's activation x activation products and the Gemm heads are never quantised."""
    import onnx

    graph = onnx.load(str(fp32), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return {n.name: n.input[0] for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights}


def _options() -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    return {
        "quant_format": QuantFormat.QDQ,
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "per_channel": True,
        "op_types_to_quantize": ["MatMul"],
        "calibrate_method": CalibrationMethod.MinMax,
        "extra_options": {"WeightSymmetric": True, "ActivationSymmetric": False},
    }


class _QuietPreprocessingAdvice(logging.Filter):
    """ONNX Runtime advises shape-inference pre-processing on the root logger at every call; the graph is
    already optimised by ONNX Runtime at load, so the advice is noise in our logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider")


def _quantize_nodes(fp32: Path, out: Path, nodes: list[str], cache: Path, reader: Any = None) -> None:
    from onnxruntime.quantization import quantize_static

    if not nodes:  # ONNX Runtime reads an empty list as "every node"
        raise GraphError("static int8 with every MatMul kept fp32 is not int8")
    quiet = _QuietPreprocessingAdvice()
    logging.getLogger().addFilter(quiet)
    try:
        quantize_static(
            str(fp32), str(out), reader, nodes_to_quantize=nodes, calibration_cache_path=str(cache), **_options()
        )
    finally:
        logging.getLogger().removeFilter(quiet)


def quantize(fp32: Path, out: Path, plan: Plan) -> None:
    """The static int8 graph of ``plan``: no data needed, the ranges are in the plan. A plan that does not fit
    the graph (another exporter named the tensors differently) is a clear ``GraphError``, never a guess."""
    weighted = weighted_matmuls(fp32)  # parsed once: the fp32 graph is ~90 MB
    unknown = set(plan.keep) - set(weighted)
    nodes = [n for n in weighted if n not in set(plan.keep)]
    missing = {weighted[n] for n in nodes} - set(plan.calibration.get("data", {}))
    if unknown or missing:
        raise GraphError(
            f"the static int8 plan does not fit this fp32 graph ({len(unknown)} kept MatMuls and {len(missing)} "
            "calibrated tensors not found); run `finsent export --plan-static` again"
        )
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "calibration.json"
        cache.write_text(json.dumps(plan.calibration))
        try:
            _quantize_nodes(fp32, out, nodes, cache)
        except GraphError:
            raise
        except Exception as err:  # a bad range in a plan must not crash a worker: auto falls back
            raise GraphError(f"static int8 plan could not be applied: {type(err).__name__}: {err}") from err


def _calibrate(fp32: Path, feeds: list[dict], cache: Path, nodes: list[str]) -> None:
    """MinMax ranges of every tensor the quantised ``nodes`` read, written to ORT's calibration cache."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as tmp:
        _quantize_nodes(fp32, Path(tmp) / "all.onnx", nodes, cache, Reader())


def _kl(reference: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> float:
    """KL(fp32 || quantised), summed over the two heads, mean over texts."""
    from finsent.model.quality import softmax  # planning only: keeps sklearn out of the serving import path

    total = 0.0
    for p_logits, q_logits in zip(reference, other, strict=True):
        p, q = softmax(p_logits), softmax(q_logits)
        total += float((p * (np.log(p + 1e-12) - np.log(q + 1e-12))).sum(1).mean())
    return total


def _agreement(reference: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> float:
    return float(np.concatenate([r.argmax(1) == o.argmax(1) for r, o in zip(reference, other, strict=True)]).mean())


def build_plan(
    model_dir: Path,
    fp32: Path,
    digest: str,
    calibration_texts: list[str],
    selection_texts: list[str],
    source: str,
    threads: int = 0,
    target_agreement: float = TARGET_AGREEMENT,
) -> Plan:
    """Calibrate on ``calibration_texts``, rank and choose on ``selection_texts`` (both training text)."""
    from finsent.model import artifact
    from finsent.model.backends import OnnxBackend
    from finsent.model.classifier import Classifier

    _, tokenizer, meta = artifact.load(model_dir)
    weighted = list(weighted_matmuls(fp32))

    def logits(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
        clf = Classifier(model_dir, OnnxBackend(path, kind, threads), meta, tokenizer, 32)
        return clf.logits(selection_texts)

    ids = tokenizer(calibration_texts, truncation=True, max_length=meta.max_length)["input_ids"]
    feeds = [  # one text per feed: no padding, so the ranges are those of real tokens
        {"input_ids": np.array([x], dtype=np.int64), "attention_mask": np.ones((1, len(x)), dtype=np.int64)}
        for x in ids
    ]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        cache, graph = Path(tmp) / "calibration.json", Path(tmp) / "int8.onnx"
        _calibrate(fp32, feeds, cache, weighted)
        log.info("calibrated", extra={"texts": len(feeds), "matmuls": len(weighted)})
        reference = logits(fp32, "onnx")
        ranking: list[dict[str, Any]] = []  # per MatMul: its name, KL from fp32, flips
        for i, node in enumerate(weighted, 1):
            _quantize_nodes(fp32, graph, [node], cache)
            out = logits(graph, "onnx-int8")
            flips = int(sum((r.argmax(1) != o.argmax(1)).sum() for r, o in zip(reference, out, strict=True)))
            ranking.append({"matmul": node, "kl": _kl(reference, out), "flips": flips})
            log.info(
                "sensitivity",
                extra={"matmul": node, "done": i, "of": len(weighted), "seconds": round(time.monotonic() - started)},
            )
        ranking.sort(key=lambda r: -r["kl"])
        keep_top: list[dict[str, Any]] = []
        chosen: int | None = None
        for k in range(min(MAX_KEEP, len(weighted) - 1) + 1):  # at least one MatMul int8, or it is no int8
            kept = {r["matmul"] for r in ranking[:k]}
            _quantize_nodes(fp32, graph, [n for n in weighted if n not in kept], cache)
            out = logits(graph, "onnx-int8")
            keep_top.append({"keep_top": k, "agreement": _agreement(reference, out), "kl": _kl(reference, out)})
            log.info("kept fp32", extra=keep_top[-1])
            if keep_top[-1]["agreement"] >= target_agreement:
                chosen = k
                break
        if chosen is None:
            raise GraphError(
                f"static int8: even with the {len(keep_top) - 1} most sensitive MatMuls in fp32, agreement with fp32 is "
                f"{keep_top[-1]['agreement']:.4f} < {target_agreement}; no plan written"
            )
        calibration = json.loads(cache.read_text())
    return Plan(
        weights_sha256=digest,
        keep=[r["matmul"] for r in ranking[:chosen]],
        calibration=calibration,
        ranking=ranking,
        keep_top=keep_top,
        texts={
            "source": source,
            "calibration": len(calibration_texts),
            "selection": len(selection_texts),
            "target_agreement": target_agreement,
        },
    )


def write_plan(model_dir: Path, plan: Plan) -> Path:
    return replace_text(plan_path(model_dir), json.dumps(asdict(plan), indent=1) + "\n")
