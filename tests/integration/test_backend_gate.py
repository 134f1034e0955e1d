"""What the export gate vouches for is what is served as vouched for: ``onnx-int8`` asked for by name serves the
gate's recipe only when export.json was measured on these very weights under the current gate; otherwise it still
serves (the user asked), says so in one warning line, and names its graph as not accepted. A malformed export.json
never stops auto from serving."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from prometheus_client import generate_latest

from finsent.model import Classifier, onnxbuild
from finsent.model.backends import auto_cpu_backend, int8_choice, trusted_manifest
from finsent.model.placement import model_info
from finsent.stream.metrics import WorkerMetrics


@pytest.fixture
def model(tmp_path, tiny_model_dir):
    directory = tmp_path / "tiny" / "v1"
    shutil.copytree(tiny_model_dir, directory)
    return directory


def _export(directory, **fields) -> dict:
    """An export.json as ``finsent export`` writes it for these weights, dynamic per-channel int8 accepted."""
    found = {
        "gate": 2,
        "weights_sha256": onnxbuild.weights_digest(directory),
        "int8_recipe": "dynamic-pc",
        "int8_plan_sha256": None,
        "recommended": "onnx-int8",
        "backends": {"onnx-int8:dynamic-pc": {"accepted": True}, "torch-int8": {"accepted": False}},
        **fields,
    }
    (directory / "export.json").write_text(json.dumps(found))
    return found


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("finsent.") and r.levelno >= logging.WARNING]


def test_int8_by_name_is_accepted_only_for_the_weights_the_gate_measured(model, caplog):
    _export(model)
    assert trusted_manifest(model) is not None
    with caplog.at_level(logging.WARNING, logger="finsent"):
        served = Classifier.load(model, backend="onnx-int8", device="cpu").backend
    assert (served.name, served.recipe, served.accepted) == ("onnx-int8", "int8-dynamic-pc", True)
    assert _warnings(caplog) == []

    _export(model, weights_sha256="0" * 64)  # measured on other weights: the recipe is no longer vouched for
    assert trusted_manifest(model) is None and not int8_choice(model).accepted
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="finsent"):
        served = Classifier.load(model, backend="onnx-int8", device="cpu").backend
    assert (served.name, served.recipe, served.accepted) == ("onnx-int8", "int8-dynamic-pc", False)  # still served
    (line,) = _warnings(caplog)  # one line, naming the recipe and why
    assert "int8-dynamic-pc" in line and "not accepted by the export gate for these weights" in line
    assert "other weights" in line and "depend on batch-mates" in line and "finsent export" in line

    _export(model, gate=1)  # a gate that did not check batch invariance
    assert not int8_choice(model).accepted and "predates" in int8_choice(model).why
    _export(model, int8_recipe=None)  # the gate ran on these weights and refused every int8 recipe
    assert int8_choice(model) == int8_choice(model).__class__("dynamic-pc", False, "no int8 recipe passed the gate")
    _export(model, backends={"onnx-int8:dynamic-pc": {"accepted": False}})  # a recipe the table says was refused
    assert not int8_choice(model).accepted


def test_the_served_graph_is_named_on_every_backend(model, caplog):
    _export(model)
    clf = Classifier.load(model, backend="auto", device="cpu")
    auto = clf.backend  # the gate's choice: accepted
    assert (auto.name, auto.recipe, auto.accepted) == ("onnx-int8", "int8-dynamic-pc", True)
    metrics = WorkerMetrics()  # the worker's finsent_worker_model_info: backend as before, and the graph
    metrics.model_info.labels(**model_info(clf)).set(1)
    (line,) = [m for m in generate_latest(metrics.registry).decode().splitlines() if "_model_info{" in m]
    assert all(p in line for p in ('backend="onnx-int8"', 'recipe="int8-dynamic-pc"', 'accepted="true"', "model="))
    onnx = Classifier.load(model, backend="onnx", device="cpu").backend
    assert (onnx.recipe, onnx.accepted) == ("fp32", True)
    torch_fp32 = Classifier.load(model, backend="torch", device="cpu", trace=False).backend
    assert (torch_fp32.recipe, torch_fp32.accepted) == ("fp32", True)
    with caplog.at_level(logging.WARNING, logger="finsent"):
        torch_int8 = Classifier.load(model, backend="torch-int8", device="cpu", trace=False).backend
    assert (torch_int8.recipe, torch_int8.accepted) == ("int8-dynamic", False)  # the gate refused it
    (line,) = _warnings(caplog)
    assert "torch-int8 serves int8-dynamic, not accepted" in line and "the gate refused it" in line


@pytest.mark.parametrize(
    "raw",
    [
        "[]",
        "null",
        '{"gate": "2", "recommended": "torch-int8"}',
        '{"gate": 2, "recommended": "onnx-int8", "weights_sha256": 5}',
        '{"gate": true, "recommended": "onnx-int8", "int8_recipe": ["static"]}',
    ],
)
def test_a_malformed_export_manifest_never_stops_auto_from_serving(model, raw):
    (model / "export.json").write_text(raw)
    assert trusted_manifest(model) is None
    assert auto_cpu_backend(model) == "onnx"  # unmeasured: ONNX fp32, the same numbers as torch
    assert not int8_choice(model).accepted
