"""Model plumbing on a tiny random-weight BERT: batching, inference API, training loop, resume, export.

Accuracy is *not* tested here (random weights); the shipped model's accuracy has its own test.
"""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_examples, write_tiny_data

from finsent import errors
from finsent.model import Classifier, artifact
from finsent.model.batching import bucketed_batches, pad, sorted_batches
from finsent.model.classifier import Encoded
from finsent.model.data import IGNORE, _in_dev, load_twitter
from finsent.model.quality import expected_calibration_error, fit_temperature, softmax
from finsent.model.text import prepare
from finsent.model.train import TrainConfig, add_to_average, train
from finsent.settings import ModelChoice


def test_prepare_drops_urls_and_entities():
    assert prepare("Apple &amp; Google  rally https://t.co/AbC123 \n today") == "Apple & Google rally today"
    assert prepare("   https://t.co/x   ") == ""


def test_bucketed_batches_are_a_deterministic_partition():
    lengths = [(i * 37) % 50 + 1 for i in range(1000)]
    a = bucketed_batches(lengths, 32, seed=1, epoch=0)
    assert a == bucketed_batches(lengths, 32, seed=1, epoch=0)
    assert a != bucketed_batches(lengths, 32, seed=1, epoch=1)
    flat = sorted(i for b in a for i in b)
    assert flat == list(range(1000))
    # Bucketing pays: padded tokens are far fewer than with random batches.
    padded = sum(len(b) * max(lengths[i] for i in b) for b in a)
    assert padded < 0.8 * 1000 * 50


def test_sorted_batches_and_pad():
    batches = sorted_batches([5, 1, 3], 2)
    assert batches == [[1, 2], [0]]
    ids, mask = pad([[7, 8, 9], [5]], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [5, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_dev_split_is_stable_and_disjoint(tiny_data_dir):
    s1, s2 = load_twitter(tiny_data_dir), load_twitter(tiny_data_dir)
    assert [e.text for e in s1.dev] == [e.text for e in s2.dev]
    assert not {e.text for e in s1.dev} & {e.text for e in s1.train}
    assert _in_dev("x", 1.0) and not _in_dev("x", 0.0)


def test_train_holds_no_copy_of_a_dev_or_test_text_in_another_case(tmp_path):
    """The published Twitter train files hold valid texts in another casing; a dev text's other casing lands in train
    too, as the dev slice is drawn on the exact text. Neither may be trained on."""
    import csv

    from conftest import write_tiny_data

    from finsent.model.data import normalised

    def train_variant(text: str) -> str:  # another casing of ``text`` that the dev slice does not draw
        variants = (text.upper(), text.title(), text.swapcase(), text.upper() + "!", text.title() + " ...")
        return next(v for v in variants if not _in_dev(v, 0.1))

    root = write_tiny_data(tmp_path / "data")
    plain = load_twitter(root)
    twins = [train_variant(plain.test_sentiment[0].text), train_variant(plain.dev[0].text)]
    emoji = next(e for e in ("🚀🚀", "🚀📉", "📉📉", "💰") if not _in_dev(e, 0.1))  # normalises to "": no one's twin
    with (root / "twitter-topic" / "train.csv").open("a", newline="") as fh:
        csv.writer(fh).writerows([[t, 1] for t in [*twins, emoji]])
    splits = load_twitter(root)
    assert splits.twins_left_out == plain.twins_left_out + 2  # the tiny sets share some texts already
    held = {normalised(ex.text) for ex in splits.dev + splits.test_topic + splits.test_sentiment}
    assert not held & {normalised(ex.text) for ex in splits.train}
    assert sorted(ex.text for ex in splits.train) == sorted([ex.text for ex in plain.train] + [emoji])


def test_temperature_scaling_improves_calibration_of_overconfident_logits():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 2000)
    logits = rng.normal(0, 1, (2000, 3))
    logits[np.arange(2000), labels] += 1.0
    logits *= 4  # overconfident
    t = fit_temperature(logits, labels)
    assert t > 2
    assert (
        expected_calibration_error(softmax(logits, t), labels) < expected_calibration_error(softmax(logits), labels) / 2
    )


def test_classifier_handles_bad_inputs_without_failing_the_batch(tiny_model_dir):
    clf = Classifier.load(tiny_model_dir)
    texts = ["Oil prices plunge", "", "   \n ", None, 42, b"bytes", "x " * 500_000, "Fed holds rates https://t.co/q"]
    preds = clf.predict(texts)
    assert len(preds) == len(texts)
    assert [p.flag for p in preds] == [None, "empty", "empty", "not_text", "not_text", "not_text", None, None]
    for p in preds:
        assert math.isclose(sum(p.topic_probs.values()), 1, abs_tol=1e-5)
        assert math.isclose(sum(p.sentiment_probs.values()), 1, abs_tol=1e-5)
        assert p.topic in p.topic_probs and p.sentiment in ("negative", "neutral", "positive")
        assert p.model == "tiny@v1"
    assert preds[1].sentiment_probs == {"negative": 1 / 3, "neutral": 1 / 3, "positive": 1 / 3}


@pytest.mark.parametrize("backend", ["torch", "torch-int8", "onnx", "onnx-int8"])
def test_text_that_tokenizes_to_nothing_is_flagged_empty_on_every_backend(tmp_path, tiny_model_dir, backend):
    """Zero-width spaces, a soft hyphen, a BOM, control characters survive ``prepare`` but the tokenizer drops them:
    [CLS] [SEP] only, which the model answered with a confident neutral, unflagged. They get the empty fallback,
    in a call of their own and among real headlines (the worker's concatenated calls included)."""
    import shutil

    directory = tmp_path / "tiny" / "v1"
    shutil.copytree(tiny_model_dir, directory, ignore=shutil.ignore_patterns("onnx"))
    clf = Classifier.load(directory, backend=backend, device="cpu")
    blank = ["\u200b\u200b", "\u00ad", "\ufeff", "\x00\x01", "\u200d"]
    texts = ["oil prices plunge", *blank, "fed holds rates"]
    for preds in (
        clf.predict(texts),
        clf.predict(blank),
        clf.predict_encoded(Encoded.concat([clf.encode(texts[:3]), clf.encode(texts[3:])])),
    ):
        flags = [p.flag for p in preds]
        assert flags == ([None, *["empty"] * 5, None] if len(preds) == len(texts) else ["empty"] * 5), flags
        for p in preds:
            if p.flag == "empty":
                assert p.sentiment_probs == {"negative": 1 / 3, "neutral": 1 / 3, "positive": 1 / 3}
    assert clf.encode(blank).ids == []  # no forward for them at all


def test_batched_predictions_equal_one_by_one_and_keep_order(tiny_model_dir):
    clf = Classifier.load(tiny_model_dir, batch_size=3)
    texts = [f"headline number {i} " + "word " * (i % 7) for i in range(10)]
    batched = clf.predict(texts)
    single = [clf.predict([t])[0] for t in texts]
    for a, b in zip(batched, single):
        assert a.topic == b.topic and a.sentiment == b.sentiment
        np.testing.assert_allclose(list(a.sentiment_probs.values()), list(b.sentiment_probs.values()), atol=1e-5)


def test_encodings_concatenated_predict_as_their_parts_fallbacks_included(tiny_model_dir):
    """The stream worker puts batches that waited for the model into one call (``Encoded.concat``)."""
    clf = Classifier.load(tiny_model_dir, batch_size=4)
    parts = [["oil prices slump", "", "bank beats estimates"], [None, "a much longer headline " * 5], ["  "]]
    joined = clf.predict_encoded(Encoded.concat([clf.encode(p) for p in parts]))
    separate = [pred for p in parts for pred in clf.predict_encoded(clf.encode(p))]
    assert len(joined) == len(separate) == 6
    for a, b in zip(joined, separate):
        assert (a.topic, a.sentiment, a.flag) == (b.topic, b.sentiment, b.flag)
        np.testing.assert_allclose(list(a.sentiment_probs.values()), list(b.sentiment_probs.values()), atol=1e-5)
    assert [p.flag for p in joined] == [None, "empty", None, "not_text", None, "empty"]


@pytest.mark.parametrize("backend", ["torch", "torch-int8"])
def test_the_torch_forward_is_traced_and_scores_as_the_eager_model(tiny_model_dir, backend):
    """The torch backends serve a checked TorchScript trace (finsent.model.tracing: the eager forward crawls beside
    the worker's busy event loop); it must score every call shape exactly as the eager model does."""
    traced = Classifier.load(tiny_model_dir, backend=backend, device="cpu", batch_size=4)
    eager = Classifier.load(tiny_model_dir, backend=backend, device="cpu", batch_size=4, trace=False)
    assert traced.backend.forward is traced.backend.traced is not None  # built, and what the backend calls
    assert eager.backend.traced is None and eager.backend.forward is eager.backend.model
    # The setting reaches the backend as the worker, the API and the backtest load it.
    untraced = Classifier.from_settings(tiny_model_dir, ModelChoice(backend=backend, device="cpu", trace=False))
    assert untraced.backend.traced is None
    assert (
        Classifier.from_settings(tiny_model_dir, ModelChoice(backend=backend, device="cpu")).backend.traced is not None
    )
    texts = [f"shares of company {i} " + "moved sharply " * (i % 9) for i in range(11)]
    for call in (texts, texts[:1], texts[3:6], [texts[-1]] * 5):
        for a, b in zip(traced.predict(call), eager.predict(call), strict=True):
            assert (a.topic, a.sentiment) == (b.topic, b.sentiment)
            np.testing.assert_allclose(list(a.topic_probs.values()), list(b.topic_probs.values()), atol=1e-6)
            np.testing.assert_allclose(list(a.sentiment_probs.values()), list(b.sentiment_probs.values()), atol=1e-6)


class _BranchesOnRows(torch.nn.Module):
    """Scores two-row calls one way and others another: a trace, made on two rows, records only the first."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(4096, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, ids, mask):
        pooled = self.head(self.embed(ids).mean(1))
        return (pooled, pooled) if ids.shape[0] == 2 else (pooled * 2, pooled)


class _ReturnsADict(_BranchesOnRows):
    def forward(self, ids, mask):
        return {"topic": self.head(self.embed(ids).mean(1))}


class _Faithful(_BranchesOnRows):
    def forward(self, ids, mask):
        pooled = self.head((self.embed(ids) * mask.unsqueeze(-1)).sum(1))
        return pooled, -pooled


def test_a_trace_that_does_not_reproduce_the_model_is_not_served():
    from finsent.model.backends import TorchBackend
    from finsent.model.tracing import trace_forward

    cpu = torch.device("cpu")
    assert trace_forward(_Faithful().eval(), cpu) is not None  # the check passes what it should
    assert trace_forward(_BranchesOnRows().eval(), cpu) is None  # the checks' other row counts catch the branch
    assert trace_forward(_ReturnsADict().eval(), cpu) is None  # tracing fails: eager, not an error
    # The backend then serves the eager forward, which scores every call shape as the model does.
    model = _BranchesOnRows().eval()
    backend = TorchBackend(model, cpu)
    assert backend.traced is None
    ids, mask = pad([[1001, 1002, 1003]] * 3, 0)
    with torch.no_grad():
        expected = model(ids, mask)[0].numpy()
    np.testing.assert_allclose(backend(ids, mask)[0], expected)


def test_unknown_backend_is_a_clear_error(tiny_model_dir):
    with pytest.raises(ValueError, match="unknown backend"):
        Classifier.load(tiny_model_dir, backend="tpu")


def test_onnx_graphs_are_built_on_first_use_cached_and_rebuilt_when_the_weights_change(tmp_path, tiny_model_dir):
    """A fresh clone has weights only: asking for an ONNX backend builds its graph once, beside the model,
    stamped with the weights' digest; other weights in the same place get a new graph, not the stale one."""
    import shutil

    from finsent.model import onnxbuild

    directory = tmp_path / "tiny" / "v1"
    shutil.copytree(tiny_model_dir, directory)
    int8 = Classifier.load(directory, backend="onnx-int8")
    assert int8.backend.name == "onnx-int8" and int8.backend.path.name == "model.int8-dynamic-pc.onnx"
    built = int8.backend.path.stat().st_mtime_ns
    again = Classifier.load(directory, backend="onnx-int8")
    assert again.backend.path.stat().st_mtime_ns == built  # cached
    stamps = json.loads((directory / "onnx" / "build.json").read_text())
    assert stamps["model.onnx"] == stamps["model.int8-dynamic-pc.onnx"] == onnxbuild.weights_digest(directory)
    fp32 = Classifier.load(directory, backend="onnx")
    torch_ = Classifier.load(directory, backend="torch")
    texts = ["oil merger news", "shares plunge after report 3"]
    for a, b in zip(fp32.predict(texts), torch_.predict(texts)):
        np.testing.assert_allclose(list(a.topic_probs.values()), list(b.topic_probs.values()), atol=1e-4)
    # retrain in place: different weights, same directory
    from safetensors.torch import load_file, save_file

    state = load_file(str(directory / "weights.safetensors"))
    key = next(k for k in state if k.startswith("topic_head"))
    state[key] = state[key] + 1
    save_file(state, str(directory / "weights.safetensors"))
    rebuilt = Classifier.load(directory, backend="onnx")
    assert json.loads((directory / "onnx" / "build.json").read_text())["model.onnx"] == onnxbuild.weights_digest(
        directory
    )
    changed = Classifier.load(directory, backend="torch")
    for a, b in zip(rebuilt.predict(texts), changed.predict(texts)):
        np.testing.assert_allclose(list(a.topic_probs.values()), list(b.topic_probs.values()), atol=1e-4)


def _probs(clf, texts=("oil merger news", "shares plunge after report 3", "fed steady")):
    return np.array([list(p.topic_probs.values()) + list(p.sentiment_probs.values()) for p in clf.predict(list(texts))])


def test_a_truncated_cached_graph_is_rebuilt_and_serves_what_a_clean_build_serves(tmp_path, tiny_model_dir):
    """A graph cut short (a full disk, a copy cut short) under a stamp that still matches the weights once failed
    every load with InvalidProtobuf and was never rebuilt. The stamp records the file's size and SHA-256 too."""
    import hashlib
    import shutil

    directory = tmp_path / "tiny" / "v1"
    shutil.copytree(tiny_model_dir, directory, ignore=shutil.ignore_patterns("onnx"))
    clean = Classifier.load(directory, backend="auto")
    assert clean.backend.name == "onnx"
    graph = clean.backend.path
    built = hashlib.sha256(graph.read_bytes()).hexdigest()
    expected = _probs(clean)
    os.truncate(graph, graph.stat().st_size // 2)
    (directory / "onnx" / "model.onnx.k1ll3d.tmp").write_bytes(b"half a graph")  # a build killed mid-write
    for backend in ("auto", "onnx"):
        served = Classifier.load(directory, backend=backend)
        assert served.backend.name == "onnx"
        np.testing.assert_array_equal(_probs(served), expected)  # rebuilt bit for bit
    stamps = json.loads((directory / "onnx" / "build.json").read_text())
    assert hashlib.sha256(graph.read_bytes()).hexdigest() == built
    assert stamps["files"]["model.onnx"] == {"size": graph.stat().st_size, "sha256": built}
    assert not list((directory / "onnx").glob("*.tmp"))  # swept under the lock


def test_a_stamp_that_does_not_match_its_graph_file_rebuilds_it(tmp_path, tiny_model_dir):
    import shutil

    from finsent.model import onnxbuild

    directory = tmp_path / "tiny" / "v1"
    shutil.copytree(tiny_model_dir, directory, ignore=shutil.ignore_patterns("onnx"))
    graph = onnxbuild.ensure(directory)
    built = graph.stat().st_mtime_ns
    assert onnxbuild.ensure(directory).stat().st_mtime_ns == built  # checked and kept
    stamp = directory / "onnx" / "build.json"
    stamps = json.loads(stamp.read_text())
    stamps["files"]["model.onnx"]["sha256"] = "0" * 64  # same size, other bytes
    stamp.write_text(json.dumps(stamps))
    assert onnxbuild.ensure(directory).stat().st_mtime_ns != built
    del stamps["files"]  # a stamp of a finsent that did not record the file: not trusted either
    stamp.write_text(json.dumps(stamps))
    rebuilt = onnxbuild.ensure(directory)
    assert json.loads(stamp.read_text())["files"]["model.onnx"]["sha256"] == onnxbuild.file_digest(rebuilt)


def test_a_graph_or_a_gate_verdict_from_other_library_versions_is_not_reused(tmp_path, tiny_model_dir):
    """After an upgrade of torch, onnx or ONNX Runtime the cached graph is rebuilt (what the exporter writes, or how
    the quantiser rounds, may have changed) and export.json's verdicts, measured with the old versions, are not
    trusted; a table from before versions were recorded is trusted as before."""
    import shutil

    from finsent.model import onnxbuild
    from finsent.model.backends import trusted_manifest

    directory = tmp_path / "tiny" / "v1"
    shutil.copytree(tiny_model_dir, directory, ignore=shutil.ignore_patterns("onnx", "export.json"))
    graph = onnxbuild.ensure(directory)
    built = graph.stat().st_mtime_ns
    stamp = directory / "onnx" / "build.json"
    stamps = json.loads(stamp.read_text())
    assert stamps["tools"]["model.onnx"] == onnxbuild.toolchain() and "onnxruntime=" in onnxbuild.toolchain()
    assert onnxbuild.ensure(directory).stat().st_mtime_ns == built  # same versions: kept
    stamps["tools"]["model.onnx"] = "torch=1.0,onnx=1.0,onnxruntime=1.0"
    stamp.write_text(json.dumps(stamps))
    assert onnxbuild.ensure(directory).stat().st_mtime_ns != built

    table = {"gate": 2, "weights_sha256": onnxbuild.weights_digest(directory), "recommended": "onnx"}
    (directory / "export.json").write_text(json.dumps(table))
    assert trusted_manifest(directory) is not None  # no versions recorded: as before
    (directory / "export.json").write_text(json.dumps({**table, "toolchain": "torch=1.0,onnx=1.0,onnxruntime=1.0"}))
    assert trusted_manifest(directory) is None
    (directory / "export.json").write_text(json.dumps({**table, "toolchain": onnxbuild.toolchain()}))
    assert trusted_manifest(directory) is not None


def test_a_graph_onnx_runtime_cannot_load_is_rebuilt_once_then_auto_falls_back(
    tmp_path, tiny_model_dir, monkeypatch, caplog
):
    """A graph that is the file that was built and still does not load (a build gone wrong): ONNX Runtime's error
    is a GraphError; the graph is rebuilt once, and if that does not load either, auto serves the next backend with
    a warning, while a backend asked for by name stops with the one-line GraphError."""
    import logging
    import shutil

    from finsent.model import onnxbuild

    directory = tmp_path / "tiny" / "v1"
    shutil.copytree(tiny_model_dir, directory, ignore=shutil.ignore_patterns("onnx"))
    expected = _probs(Classifier.load(directory, backend="onnx"))
    graph = directory / "onnx" / "model.onnx"
    graph.write_bytes(b"not a graph")  # and stamp it as built, so that only loading it shows what it is
    onnxbuild._write_stamp(directory / "onnx", graph.name, onnxbuild.weights_digest(directory))
    served = Classifier.load(directory, backend="auto")
    assert served.backend.name == "onnx"
    np.testing.assert_array_equal(_probs(served), expected)

    builds = []

    def broken_build(model_dir, path):
        builds.append(path)
        path.write_bytes(b"not a graph either")

    monkeypatch.setattr(onnxbuild, "_build_fp32", broken_build)
    graph.write_bytes(b"not a graph")
    onnxbuild._write_stamp(directory / "onnx", graph.name, onnxbuild.weights_digest(directory))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="finsent.model.backends"):
        fallback = Classifier.load(directory, backend="auto")
    assert fallback.backend.name == "torch" and len(builds) == 1  # rebuilt once, not in a loop
    assert [r.getMessage() for r in caplog.records if r.name.startswith("finsent.")] == [
        "onnx graph does not load; rebuilding it once",
        "onnx backend unavailable",
    ]
    np.testing.assert_allclose(_probs(fallback), expected, atol=1e-4)
    with pytest.raises(errors.GraphError, match="ONNX Runtime cannot load"):
        Classifier.load(directory, backend="onnx")


def test_auto_serves_onnx_on_unmeasured_weights_and_distrusts_an_export_of_other_weights(tmp_path, tiny_model_dir):
    import shutil

    directory = tmp_path / "tiny" / "v1"
    shutil.copytree(tiny_model_dir, directory)
    assert Classifier.load(directory, backend="auto").backend.name == "onnx"  # never exported: fp32 ONNX
    (directory / "export.json").write_text(json.dumps({"recommended": "torch-int8", "weights_sha256": "0" * 64}))
    assert Classifier.load(directory, backend="auto").backend.name == "onnx"  # measured on other weights
    from finsent.model import onnxbuild

    measured = {"recommended": "torch-int8", "weights_sha256": onnxbuild.weights_digest(directory)}
    (directory / "export.json").write_text(json.dumps(measured))
    assert Classifier.load(directory, backend="auto").backend.name == "onnx"  # a gate without batch invariance
    (directory / "export.json").write_text(json.dumps({**measured, "gate": 2}))
    assert Classifier.load(directory, backend="auto").backend.name == "torch-int8"


def test_a_read_only_model_directory_caches_its_graphs_in_the_user_cache(tmp_path, tiny_model_dir, monkeypatch):
    import shutil

    directory = tmp_path / "tiny" / "v1"
    shutil.copytree(tiny_model_dir, directory, ignore=shutil.ignore_patterns("onnx"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if os.geteuid() == 0:  # root writes through permission bits, so stand in for the failed probe there
        from finsent.model import onnxbuild

        real = onnxbuild._writable
        monkeypatch.setattr(onnxbuild, "_writable", lambda d: False if d.parent == directory else real(d))
    directory.chmod(0o555)
    try:
        clf = Classifier.load(directory, backend="onnx")
    finally:
        directory.chmod(0o755)
    assert str(clf.backend.path).startswith(str(tmp_path / "cache" / "finsent" / "onnx"))
    assert not (directory / "onnx").exists()


def test_the_export_gate_is_strict_on_each_head():
    from finsent.model.export import MAX_ACCURACY_DROP, MIN_AGREEMENT, accepted

    base = {"topic_accuracy": 0.906, "sentiment_accuracy": 0.870}
    ok = {
        "topic_accuracy": 0.9058,
        "sentiment_accuracy": 0.8723,
        "agreement_with_fp32": 0.9868,
        "batch_invariance": 1.0,
    }
    assert (MAX_ACCURACY_DROP, MIN_AGREEMENT) == (0.003, 0.98) and accepted(ok, base, MAX_ACCURACY_DROP, MIN_AGREEMENT)
    assert not accepted({**ok, "topic_accuracy": 0.9007}, base, MAX_ACCURACY_DROP, MIN_AGREEMENT)  # -0.53 pt
    assert not accepted({**ok, "agreement_with_fp32": 0.968}, base, MAX_ACCURACY_DROP, MIN_AGREEMENT)
    assert not accepted({**ok, "batch_invariance": 0.968}, base, MAX_ACCURACY_DROP, MIN_AGREEMENT)  # dynamic int8


def test_model_registry_resolves_newest_and_named_versions(tmp_path, tiny_model_dir):
    import shutil

    for v in ("20240101T000000Z", "20250101T000000Z"):
        shutil.copytree(tiny_model_dir, tmp_path / "tiny" / v)
    assert artifact.resolve(tmp_path, "tiny").name == "20250101T000000Z"
    assert artifact.resolve(tmp_path, "tiny", "20240101T000000Z").name == "20240101T000000Z"
    with pytest.raises(errors.ModelError, match="not found"):
        artifact.resolve(tmp_path, "tiny", "nope")


def _tiny_cfg(tmp_path: Path, tiny_model_dir: Path, **kw) -> TrainConfig:
    base = {
        "name": "tiny",
        "version": "t1",
        "init_from": str(tiny_model_dir),
        "out_dir": str(tmp_path / "models"),
        "run_dir": str(tmp_path / "runs"),
        "epochs": 3,
        "batch_size": 8,
        "lr": 3e-3,
        "head_lr": 3e-3,
        "warmup_ratio": 0.1,
        "max_length": 32,
        "dropout": 0.0,
        "patience": 5,
        "mlflow": False,
        "checkpoint_every": 0,
        "seed": 3,
    }
    base.update(kw)
    return TrainConfig(**base)


def _assert_same_weights(a_dir, b_dir, atol: float, rtol: float) -> None:
    a, b = artifact.load(a_dir)[0].state_dict(), artifact.load(b_dir)[0].state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=rtol)


def test_training_learns_calibrates_and_registers_a_version(tmp_path, tiny_model_dir):
    train_set, dev_set = tiny_examples(160, seed=1), tiny_examples(60, seed=2)
    out = train(_tiny_cfg(tmp_path, tiny_model_dir, epochs=4), examples=train_set, dev=dev_set, progress=False)
    meta = artifact.load_meta(out)
    history = meta.metrics["history"]
    assert len(history) == 4
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert meta.metrics["dev"]["sentiment_accuracy"] > 0.6  # keyword task: random would be ~0.33
    assert meta.temperature_topic > 0 and meta.temperature_sentiment > 0
    assert meta.parent == "tiny@v1"
    clf = Classifier.load(out)
    assert clf.predict(["shares soar after report 5"])[0].model == "tiny@t1"
    assert json.loads((out / "train_config.json").read_text())["epochs"] == 4


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path, tiny_model_dir):
    """A run stopped mid-epoch and restarted ends with the same weights as an uninterrupted run."""
    train_set, dev_set = tiny_examples(64, seed=1), tiny_examples(16, seed=2)
    full = train(_tiny_cfg(tmp_path / "a", tiny_model_dir, epochs=2), examples=train_set, dev=dev_set, progress=False)
    paused = train(
        _tiny_cfg(tmp_path / "b", tiny_model_dir, epochs=2, max_steps=5),
        examples=train_set,
        dev=dev_set,
        progress=False,
    )
    assert paused is None and (tmp_path / "b" / "runs" / "tiny-t1" / "checkpoint.pt").exists()
    resumed = train(
        _tiny_cfg(tmp_path / "b", tiny_model_dir, epochs=2), examples=train_set, dev=dev_set, progress=False
    )
    assert len(artifact.load_meta(resumed).metrics["history"]) == 2
    # optimizer, schedule, batch position and RNG state all restored: identical weights
    _assert_same_weights(full, resumed, atol=1e-6, rtol=0)


def test_a_resume_under_other_settings_is_refused_and_a_finished_early_stop_is_not_trained_again(
    tmp_path, tiny_model_dir
):
    """A checkpoint belongs to the settings it was written under: resumed with another rate it was once silently
    finished at the old one (the optimizer's groups won), with another layer decay it was a raw ValueError from the
    optimizer. And a run that stopped early, run again, goes straight to its model instead of training on."""
    train_set, dev_set = tiny_examples(64, seed=1), tiny_examples(16, seed=2)
    paused = train(
        _tiny_cfg(tmp_path, tiny_model_dir, epochs=2, max_steps=5), examples=train_set, dev=dev_set, progress=False
    )
    assert paused is None
    for changed in ({"lr": 1e-3}, {"layer_lr_decay": 0.5}, {"epochs": 4}):
        with pytest.raises(errors.ConfigError, match=f"another run configuration.*{next(iter(changed))}"):
            train(_tiny_cfg(tmp_path, tiny_model_dir, **{"epochs": 2, **changed}), examples=train_set, dev=dev_set)
    # how far per sitting, where and how fast are not the run's settings
    assert train(_tiny_cfg(tmp_path, tiny_model_dir, epochs=2, threads=1), examples=train_set, dev=dev_set)

    stops = {"epochs": 3, "patience": 1, "lr": 0.0, "head_lr": 0.0}  # nothing moves: epoch 2 is no better
    out = train(_tiny_cfg(tmp_path / "es", tiny_model_dir, **stops), examples=train_set, dev=dev_set, progress=False)
    assert len(artifact.load_meta(out).metrics["history"]) == 2
    again = train(_tiny_cfg(tmp_path / "es", tiny_model_dir, **stops), examples=train_set, dev=dev_set, progress=False)
    assert len(artifact.load_meta(again).metrics["history"]) == 2


def _write_sp500(data: Path) -> Path:
    import csv

    (data / "sp500-headlines-posneg").mkdir()
    with (data / "sp500-headlines-posneg" / "sp500_headlines_posneg.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["headline", "label"])
        for i in range(120):
            w.writerow(
                [f"Acme {i} shares {'soar' if i % 2 else 'plunge'} after report", "positive" if i % 2 else "negative"]
            )
    return data


def test_a_continued_run_is_not_chosen_on_rows_its_parent_read(tmp_path, tiny_model_dir):
    """A run continued from weights that trained on its news dev rows cannot choose its epoch on them: they are left
    out of its slice (here every one: the parent read all of S&P 500), so it has no news dev score at all."""
    import shutil

    data = _write_sp500(write_tiny_data(tmp_path / "data"))
    parent = tmp_path / "parent"
    shutil.copytree(tiny_model_dir, parent)
    meta = json.loads((parent / "meta.json").read_text())
    (parent / "meta.json").write_text(json.dumps({**meta, "training_sets": ["sp500-posneg"]}))
    cfg = _tiny_cfg(tmp_path, parent, epochs=1, data_dir=str(data), train_sets=["sp500-posneg"])
    cfg.news_dev_fraction = 0.25
    dev = artifact.load_meta(train(cfg, progress=False)).metrics["dev"]
    assert "news_selection" not in dev and "twitter_selection" not in dev


def test_a_news_dev_slice_is_scored_every_epoch_and_chooses_beside_the_twitter_one(tmp_path, tiny_model_dir):
    """With ``news_dev_fraction`` the run scores a slice cut from its news set's training part each epoch, and the
    epoch is chosen on the mean of the Twitter and the news selection scores (news: only the heads it labels)."""

    data = _write_sp500(write_tiny_data(tmp_path / "data"))
    cfg = _tiny_cfg(tmp_path, tiny_model_dir, epochs=2, data_dir=str(data), train_sets=["sp500-posneg"])
    cfg.news_dev_fraction = 0.25
    out = train(cfg, progress=False)
    meta = artifact.load_meta(out)
    for scored in [*meta.metrics["history"], meta.metrics["dev"]]:
        assert "news_sentiment_accuracy" in scored and "news_topic_accuracy" not in scored
        assert scored["news_selection"] == scored["news_sentiment_macro_f1"]  # S&P labels no topic: not a zero
        assert scored["selection"] == pytest.approx((scored["twitter_selection"] + scored["news_selection"]) / 2)
    assert meta.metrics["dev"]["selection"] == pytest.approx(max(h["selection"] for h in meta.metrics["history"]))

    # `finsent select` scores a finished run again on the slices its train_config.json names: the same figures
    # (up to the fp16 cast of the saved weights)
    from finsent.model.selection import rescored_dev

    again = rescored_dev(out)
    assert again.keys() - {"news_rows"} == meta.metrics["dev"].keys()
    for key in ("selection", "news_selection", "twitter_selection"):
        assert again[key] == pytest.approx(meta.metrics["dev"][key], abs=0.02)


def test_a_continued_model_keeps_its_parents_training_sets_and_licence(tmp_path, tiny_model_dir):
    """A continued run adds to what its parent read: its ``meta.json`` once listed only its own sets."""
    import shutil

    from finsent.model import corpus

    parent = tmp_path / "parent" / "tiny" / "p1"
    shutil.copytree(tiny_model_dir, parent)
    meta = json.loads((parent / "meta.json").read_text())
    meta.update(licence=corpus.RESEARCH, training_sets=["twitter-topic", "twitter-sentiment", "sp500-posneg"])
    (parent / "meta.json").write_text(json.dumps(meta))
    train_set, dev_set = tiny_examples(32, seed=1), tiny_examples(16, seed=2)
    child = train(
        _tiny_cfg(tmp_path, parent, epochs=1, train_sets=["finentity-dev"]),
        examples=train_set,
        dev=dev_set,
        progress=False,
    )
    child_meta = artifact.load_meta(child)
    assert child_meta.licence == corpus.RESEARCH
    assert child_meta.training_sets == ["twitter-topic", "twitter-sentiment", "sp500-posneg", "finentity-dev"]


def test_the_default_name_never_serves_a_research_licensed_version(tmp_path, tiny_model_dir):
    """Training refuses to write research-licensed weights under the default's name; one put there by hand is passed
    over, so ``Classifier.load()`` keeps serving the newest permissive version."""
    import shutil

    from finsent.model import corpus

    models = tmp_path / "models"
    for version, licence in (("20260101-a", corpus.COMMERCIAL), ("20260102-b", corpus.RESEARCH)):
        target = models / artifact.DEFAULT_NAME / version
        shutil.copytree(tiny_model_dir, target)
        meta = json.loads((target / "meta.json").read_text())
        meta.update(name=artifact.DEFAULT_NAME, version=version, licence=licence)
        (target / "meta.json").write_text(json.dumps(meta))
    assert artifact.resolve(models, artifact.DEFAULT_NAME).name == "20260101-a"
    assert artifact.resolve(models, artifact.DEFAULT_NAME, "20260102-b").name == "20260102-b"  # asked for by version
    with pytest.raises(errors.ConfigError, match="name it finsent-minilm-research"):
        train(
            _tiny_cfg(tmp_path, tiny_model_dir, name=artifact.DEFAULT_NAME, train_sets=["sp500-posneg"]),
            examples=tiny_examples(16, seed=1),
            dev=tiny_examples(8, seed=2),
        )
    assert not (tmp_path / "runs").exists()  # refused before anything was trained or written


def test_weight_average_is_the_mean_of_its_samples_and_survives_a_resume(tmp_path, tiny_model_dir):
    """Stochastic weight averaging: the running mean equals the plain mean of the sampled weights, and a run stopped
    while averaging and resumed writes the same average as an uninterrupted run (the average lives in the
    checkpoint). The run keeps the average as a model dir beside the best epoch and records its dev scores."""
    net = artifact.load(tiny_model_dir)[0]
    samples = []
    average, n = None, 0
    for k in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * (k + 1))
        samples.append({name: v.clone() for name, v in net.state_dict().items() if v.is_floating_point()})
        average, n = add_to_average(average, n, net)
    assert n == 3
    for name in samples[0]:
        torch.testing.assert_close(average[name], sum(s[name] for s in samples) / 3, atol=1e-6, rtol=0)

    train_set, dev_set = tiny_examples(64, seed=1), tiny_examples(16, seed=2)
    averaging = {"epochs": 2, "average_from": 0.5, "average_every": 1}  # 8 steps an epoch: steps 8..16 averaged
    full = train(
        _tiny_cfg(tmp_path / "a", tiny_model_dir, **averaging), examples=train_set, dev=dev_set, progress=False
    )
    paused = train(
        _tiny_cfg(tmp_path / "b", tiny_model_dir, max_steps=11, **averaging),
        examples=train_set,
        dev=dev_set,
        progress=False,
    )
    assert paused is None
    resumed = train(_tiny_cfg(tmp_path / "b", tiny_model_dir, **averaging), examples=train_set, dev=dev_set)
    a_avg, b_avg = (tmp_path / x / "runs" / "tiny-t1" / "average" for x in ("a", "b"))
    _assert_same_weights(a_avg, b_avg, atol=1e-6, rtol=0)
    _assert_same_weights(full, resumed, atol=1e-6, rtol=0)
    history = artifact.load_meta(full).metrics["history"]
    assert history[-1]["average"]["averaged"] == 9 and history[-1]["average"]["from_step"] == 8
    # the written model is whichever of the best epoch and the average dev scores higher
    epoch_best = max(h["selection"] for h in history[:-1])
    chosen = a_avg if history[-1]["average"]["selection"] > epoch_best else tmp_path / "a" / "runs" / "tiny-t1" / "best"
    _assert_same_weights(full, chosen, atol=1e-3, rtol=0)  # the shipped copy is fp16
    with pytest.raises(errors.ConfigError, match="fraction"):
        train(_tiny_cfg(tmp_path / "c", tiny_model_dir, average_from=1.5), examples=train_set, dev=dev_set)


def test_layer_lr_decay_moves_the_lower_layers_less(tmp_path, tiny_model_dir):
    """The tiny model has two layers: at a decay of 0.1 the top one trains at the full rate, the one below at a
    tenth, the embeddings at a hundredth, the heads at head_lr. Adam's steps scale with the rate, so each part's
    movement against the same run without decay shows the rate it got."""
    train_set, dev_set = tiny_examples(48, seed=1), tiny_examples(16, seed=2)
    start = artifact.load(tiny_model_dir)[0].state_dict()
    parts = ("embeddings.", "layer.0.", "layer.1.", "_head.")

    def moved(decay: float) -> dict[str, float]:
        out = tmp_path / str(decay)
        cfg = _tiny_cfg(out, tiny_model_dir, epochs=1, layer_lr_decay=decay)
        train(cfg, examples=train_set, dev=dev_set, progress=False)
        end = artifact.load(out / "runs" / "tiny-t1" / "best")[0].state_dict()
        return {
            part: sum(float((end[k] - start[k]).abs().sum()) for k in start if part in k and k in end) for part in parts
        }

    full, decayed = moved(1.0), moved(0.1)
    ratio = {part: decayed[part] / full[part] for part in parts}
    assert all(full[part] > 0 for part in parts), full
    assert ratio["layer.1."] > 0.5 and ratio["_head."] > 0.5, ratio
    assert 0.03 < ratio["layer.0."] < 0.3, ratio
    assert ratio["embeddings."] < 0.03, ratio
    for bad in (0.0, 1.5):
        with pytest.raises(errors.ConfigError, match="layer_lr_decay"):
            train(_tiny_cfg(tmp_path / "bad", tiny_model_dir, layer_lr_decay=bad), examples=train_set, dev=dev_set)


def test_lora_trains_only_adapters_and_heads(tmp_path, tiny_model_dir):
    train_set, dev_set = tiny_examples(48, seed=1), tiny_examples(16, seed=2)
    out = train(
        _tiny_cfg(tmp_path, tiny_model_dir, epochs=1, lora=True, lora_r=4),
        examples=train_set,
        dev=dev_set,
        progress=False,
    )
    meta = artifact.load_meta(out)
    assert meta.metrics["trainable_params"] < 0.5 * meta.metrics["total_params"]
    model, _, _ = artifact.load(out)  # merged back into a plain BERT: loads like any other version
    assert not any("lora" in k for k in model.state_dict())


def test_onnx_export_matches_torch(tmp_path, tiny_model_dir, tiny_data_dir):
    import shutil

    from finsent.model.export import run

    directory = tmp_path / "tiny" / "v1"
    shutil.copytree(tiny_model_dir, directory)
    report = run(directory, tiny_data_dir, limit=40, batch_size=8)
    assert report["backends"]["onnx"]["agreement_with_fp32"] >= 0.99
    assert report["backends"]["onnx"]["batch_invariance"] == 1.0 and report["gate"] == 2
    assert {"onnx-int8:dynamic", "onnx-int8:dynamic-pc"} <= set(report["backends"])  # every candidate in the table
    served = report["recommended"]
    row = report["backends"][served if served != "onnx-int8" else f"onnx-int8:{report['int8_recipe']}"]
    assert row["accepted"] and report["weights_sha256"]
    onnx = Classifier.load(directory, backend="onnx")
    torch_ = Classifier.load(directory, backend="torch")
    texts = ["oil merger news", "shares plunge after report 3"]
    for a, b in zip(onnx.predict(texts), torch_.predict(texts)):
        np.testing.assert_allclose(list(a.topic_probs.values()), list(b.topic_probs.values()), atol=1e-4)
    assert Classifier.load(directory, backend="auto").backend.name == report["recommended"]

    # The worker's backend: sleeping threads for small calls, a spinning session for a backlog's large ones.
    worker = Classifier.load(directory, backend="onnx", spin_wait=False, spin_from=2)

    def allow_spinning(session) -> str:
        try:
            return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # not set: ONNX Runtime's default, spinning
            return "default"

    spinning = {
        which: allow_spinning(s) for which, s in (("small", worker.backend.session), ("large", worker.backend.spinning))
    }
    assert spinning == {"small": "0", "large": "default"}
    assert worker.backend.for_call(1) is worker.backend and worker.backend.for_call(2) is not worker.backend
    for a, b in zip(worker.predict(texts) + worker.predict(texts[:1]), onnx.predict(texts) + onnx.predict(texts[:1])):
        np.testing.assert_allclose(list(a.sentiment_probs.values()), list(b.sentiment_probs.values()), atol=1e-6)


def test_examples_without_a_head_label_contribute_no_loss_for_it():
    ce = torch.nn.CrossEntropyLoss(ignore_index=IGNORE, reduction="sum")
    logits = torch.randn(3, 4, requires_grad=True)
    loss = ce(logits, torch.tensor([IGNORE, IGNORE, IGNORE]))
    loss.backward()
    assert loss.item() == 0 and logits.grad.abs().sum() == 0


def test_eval_and_export_commands_write_their_reports(tmp_path, tiny_model_dir, tiny_data_dir):
    import shutil
    import subprocess
    import sys

    directory = tmp_path / "tiny" / "v1"
    shutil.copytree(tiny_model_dir, directory)
    env = {"FINSENT_PATHS__DATA_DIR": str(tiny_data_dir), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "finsent.cli", "eval", "--model", str(directory), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "twitter-sentiment" in proc.stdout and "twitter-topic" in proc.stdout
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["tiny"])
    assert list(runs["tags.kind"]) == ["evaluation"] and runs["metrics.twitter-topic.accuracy"].between(0, 1).all()
    report = (out / "report.md").read_text()
    assert "## Beside published results" in report and "finbert-tone" in report and "Most confident errors" in report
    assert (out / "twitter-topic-confusion.png").stat().st_size > 1000
    assert (out / "twitter-sentiment-reliability.png").stat().st_size > 1000
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["twitter-topic"]["accuracy"] <= 1 and "ece_calibrated" in metrics["twitter-sentiment"]
    proc = subprocess.run(
        [sys.executable, "-m", "finsent.cli", "export", "--model", str(directory), "--limit", "24"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "recommended CPU backend:" in proc.stdout and "gate: accuracy drop <= 0.003" in proc.stdout
    assert json.loads((directory / "export.json").read_text())["recommended"] in (
        "torch",
        "torch-int8",
        "onnx",
        "onnx-int8",
    )


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_static_int8_plan_is_measured_on_training_text_and_rebuilds_the_same_batch_invariant_graph(
    tmp_path, tiny_model_dir, tiny_data_dir
):
    """Static int8 is the int8 that can be served: fixed activation scales (a headline's labels never depend
    on its batch-mates) in a plan shipped with the model, from which any machine rebuilds the same graph."""
    import shutil

    import onnx

    from finsent.model import int8_static, onnxbuild
    from finsent.model.data import twitter_topic
    from finsent.model.export import plan_static

    directory = tmp_path / "tiny" / "v1"
    shutil.copytree(tiny_model_dir, directory)
    plan = plan_static(directory, tiny_data_dir)
    weighted = list(int8_static.weighted_matmuls(onnxbuild.ensure(directory)))
    assert len(weighted) == 12 and {r["matmul"] for r in plan.ranking} == set(weighted)  # every MatMul ranked
    assert plan.weights_sha256 == onnxbuild.weights_digest(directory) and plan.calibration
    assert plan.texts["calibration"] > 0 and plan.texts["selection"] > 0
    # the fewest kept in fp32 that reach the target: every smaller K fell short
    assert plan.keep_top[-1]["agreement"] >= int8_static.TARGET_AGREEMENT
    assert all(k["agreement"] < int8_static.TARGET_AGREEMENT for k in plan.keep_top[:-1])
    assert plan.keep == [r["matmul"] for r in plan.ranking[: plan.keep_top[-1]["keep_top"]]]

    int8 = Classifier.load(directory, backend="onnx-int8")  # never exported: the plan's static recipe
    assert int8.backend.path.name == "model.int8-static.onnx"
    graph = onnx.load(str(int8.backend.path))
    assert sum(n.op_type == "DequantizeLinear" for n in graph.graph.node) >= 2 * (len(weighted) - len(plan.keep))
    built = _sha256(int8.backend.path)
    texts = [prepare(e.text) for e in twitter_topic(tiny_data_dir, "valid")]
    int8.batch_size = 32
    t1, s1 = int8.logits(texts)
    int8.batch_size = 7
    t2, s2 = (a[::-1] for a in int8.logits(texts[::-1]))
    np.testing.assert_array_equal(t1.argmax(1), t2.argmax(1))
    np.testing.assert_allclose(s1, s2, atol=1e-5)  # batch-invariant: fixed scales, row-independent

    shutil.rmtree(directory / "onnx")  # another machine: the weights and the plan only
    assert _sha256(onnxbuild.ensure(directory, "static")) == built

    raw = json.loads(int8_static.plan_path(directory).read_text())
    raw["keep"] = plan.keep + [n for n in weighted if n not in plan.keep][:1]  # one more MatMul kept fp32
    int8_static.plan_path(directory).write_text(json.dumps(raw))
    assert _sha256(onnxbuild.ensure(directory, "static")) != built  # a new plan rebuilds the graph

    # export.json's choice holds only for the plan the gate measured; a plan that cannot be applied falls back
    # to ONNX fp32 (not torch) under auto, and is a clear error when asked for by name
    measured = {
        "recommended": "onnx-int8",
        "int8_recipe": "static",
        "gate": 2,
        "weights_sha256": onnxbuild.weights_digest(directory),
        "int8_plan_sha256": "0" * 64,
    }
    (directory / "export.json").write_text(json.dumps(measured))
    assert Classifier.load(directory, backend="auto", device="cpu").backend.name == "onnx"  # another plan
    broken = {**raw, "calibration": {**raw["calibration"], "data": {}}}  # ranges missing for every tensor
    int8_static.plan_path(directory).write_text(json.dumps(broken))
    measured["int8_plan_sha256"] = int8_static.current_plan_digest(directory)
    (directory / "export.json").write_text(json.dumps(measured))
    assert Classifier.load(directory, backend="auto", device="cpu").backend.name == "onnx"
    with pytest.raises(errors.GraphError, match="does not fit"):
        Classifier.load(directory, backend="onnx-int8")
    int8_static.plan_path(directory).write_text(json.dumps({**raw, "keep": None}))
    with pytest.raises(errors.GraphError, match="malformed"):
        onnxbuild.ensure(directory, "static")

    raw["weights_sha256"] = "0" * 64  # a plan measured on other weights is never used
    int8_static.plan_path(directory).write_text(json.dumps(raw))
    with pytest.raises(errors.GraphError, match="other weights"):
        onnxbuild.ensure(directory, "static")
    int8_static.plan_path(directory).unlink()
    with pytest.raises(errors.GraphError, match="--plan-static"):
        onnxbuild.ensure(directory, "static")


def test_a_plan_that_cannot_reach_its_target_is_not_written(tmp_path, tiny_model_dir, tiny_data_dir):
    import shutil

    from finsent.model import int8_static
    from finsent.model.export import plan_static

    directory = tmp_path / "tiny" / "v1"
    shutil.copytree(tiny_model_dir, directory)
    with pytest.raises(errors.GraphError, match="no plan written"):
        plan_static(directory, tiny_data_dir, target_agreement=1.01)
    assert not int8_static.plan_path(directory).exists()


def test_rdrop_consistency_term_is_a_symmetric_kl_that_vanishes_only_on_agreement():
    from finsent.model.train import symmetric_kl

    a = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    b = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.5]])
    pa, pb = torch.softmax(a, -1), torch.softmax(b, -1)
    by_hand = ((pa * (pa / pb).log()).sum(-1) + (pb * (pb / pa).log()).sum(-1)) / 2
    torch.testing.assert_close(symmetric_kl(a, b), by_hand.mean())
    torch.testing.assert_close(symmetric_kl(a, b), symmetric_kl(b, a))
    assert symmetric_kl(a, b) > 0 and symmetric_kl(a, a) == 0


def test_rdrop_without_dropout_trains_exactly_as_plain_training_and_with_dropout_still_learns(tmp_path, tiny_model_dir):
    """Without dropout the two runs of a batch agree (KL 0), so R-Drop must train as plain training does: a check
    that the second copy holds the same texts with the same labels (a shifted or mislabelled copy changes the
    weights). Float sums over a batch twice the size differ in the last bits, hence the tolerance. AdamW makes
    the update nearly blind to a constant scale of the loss, so this does not check the division by two."""
    train_set, dev_set = tiny_examples(64, seed=1), tiny_examples(16, seed=2)
    runs = [
        train(_tiny_cfg(tmp_path / d, tiny_model_dir, epochs=1, rdrop_alpha=a), train_set, dev_set, progress=False)
        for d, a in (("a", 0.0), ("b", 1.0))
    ]
    _assert_same_weights(*runs, atol=1e-4, rtol=1e-3)
    learnt = train(
        _tiny_cfg(tmp_path / "c", tiny_model_dir, epochs=4, dropout=0.1, rdrop_alpha=1.0),
        examples=tiny_examples(160, seed=1),
        dev=tiny_examples(60, seed=2),
        progress=False,
    )
    assert artifact.load_meta(learnt).metrics["dev"]["sentiment_accuracy"] > 0.6


def _two_conventions(n: int, seed: int) -> list:
    """The keyword task as news, and the same texts as tweets all labelled neutral: two domains, two conventions
    (what Twitter's annotators and the news sets disagree on), which one untagged head cannot both follow."""
    from dataclasses import replace

    from finsent.labels import SENTIMENT_INDEX

    news = [replace(ex, domain="news") for ex in tiny_examples(n, seed) if ex.sentiment != IGNORE]
    return news + [replace(ex, sentiment=SENTIMENT_INDEX["neutral"], domain="twitter") for ex in news]


def test_a_domain_tagged_model_learns_each_domains_convention_and_serving_reads_text_behind_the_same_tag(
    tmp_path, tiny_model_dir, tiny_data_dir
):
    prefixes = {"twitter": "tweet |", "news": "headline |"}
    out = train(
        _tiny_cfg(tmp_path, tiny_model_dir, epochs=6, domain_prefixes=prefixes),
        examples=_two_conventions(240, seed=1),
        dev=_two_conventions(60, seed=2),
        progress=False,
    )
    assert artifact.load_meta(out).domain_prefixes == prefixes
    clf = Classifier.load(out, backend="torch")
    test = [ex for ex in _two_conventions(60, seed=3) if ex.domain == "news"]
    texts = [ex.text for ex in test]
    as_tweets = clf.predict(texts, domain="twitter")
    assert sum(p.sentiment == "neutral" for p in as_tweets) / len(texts) > 0.9
    for as_news in (clf.predict(texts, domain="news"), clf.predict(texts)):  # no domain: finsent serves news
        accuracy = np.mean([p.sentiment == clf.meta.sentiment_labels[ex.sentiment] for p, ex in zip(as_news, test)])
        assert accuracy > 0.8
    # the stream's path (encode off the model thread, then predict_encoded) reads text as news too
    streamed = clf.predict_encoded(clf.encode(texts))
    assert [p.sentiment for p in streamed] == [p.sentiment for p in clf.predict(texts, domain="news")]
    # settings.model.reads_as: the worker, the API and the backtest read text as tweets when told (a backtest over
    # StockNet's tweets); the backtest's score cache keeps the two readings apart
    from finsent.backtest.run import score_key

    tweets = Classifier.from_settings(out, ModelChoice(backend="torch", reads_as="twitter"))
    assert [p.sentiment for p in tweets.predict(texts)] == [p.sentiment for p in as_tweets]
    assert [p.sentiment for p in tweets.predict_encoded(tweets.encode(texts))] == [p.sentiment for p in as_tweets]
    assert score_key(out, "torch", "twitter") != score_key(out, "torch", "news")
    assert score_key(tiny_model_dir, "torch", "twitter") == score_key(tiny_model_dir, "torch")  # untagged: no effect
    # `finsent eval` reads the Twitter sets as tweets: this model calls every tweet neutral, so on the keyword-labelled
    # tiny Twitter set it scores about the neutral share (read as news it would score > 0.8)
    from finsent.model import report

    summary = report.run(clf, tiny_data_dir, tmp_path / "report")
    assert summary["twitter-sentiment"]["accuracy"] < 0.6
    assert "Trained with domain tags" in (tmp_path / "report" / "report.md").read_text()
    # a model continued from a tagged one keeps its tags (feedback fine-tuning names no prefixes)
    child = train(
        _tiny_cfg(tmp_path / "child", out, epochs=1, version="t2"),
        examples=_two_conventions(40, seed=4),
        dev=_two_conventions(20, seed=5),
        progress=False,
    )
    assert artifact.load_meta(child).domain_prefixes == prefixes


def test_domain_prefixes_must_name_both_domains(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="exactly 'twitter' and 'news'"):
        train(
            _tiny_cfg(tmp_path, tiny_model_dir, domain_prefixes={"news": "headline |"}),
            examples=tiny_examples(16, seed=1),
            dev=tiny_examples(8, seed=2),
            progress=False,
        )


def test_a_resumed_run_continues_its_mlflow_run_and_the_report_names_both_runs(tmp_path, tiny_model_dir, tiny_data_dir):
    """A stopped training run started a second MLflow run when resumed, and the model's lacked the first epochs;
    a clone has no ``mlruns.db``, so the report directory now names the runs (``mlflow.json``)."""
    import mlflow

    from finsent.model.report import MLFLOW_POINTER, log_to_mlflow, run

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    train_set, dev_set = tiny_examples(64, seed=1), tiny_examples(16, seed=2)
    tracked = {"epochs": 2, "mlflow": True, "mlflow_uri": uri}
    assert train(_tiny_cfg(tmp_path, tiny_model_dir, max_steps=10, **tracked), examples=train_set, dev=dev_set) is None
    out = train(_tiny_cfg(tmp_path, tiny_model_dir, **tracked), examples=train_set, dev=dev_set, progress=False)
    run_id = artifact.load_meta(out).metrics["mlflow_run"]
    client = mlflow.tracking.MlflowClient(uri)
    assert len(client.search_runs([client.get_experiment_by_name("tiny").experiment_id])) == 1
    assert [m.step for m in client.get_metric_history(run_id, "selection")] == [1, 2]  # both sittings' epochs

    clf = Classifier.load(out, backend="torch")
    report = tmp_path / "report"
    eval_run = log_to_mlflow(clf, report, run(clf, tiny_data_dir, report), uri)
    pointer = json.loads((report / MLFLOW_POINTER).read_text())
    assert pointer["evaluation_run"] == eval_run and pointer["training_run"] == run_id
    assert client.get_run(eval_run).data.tags["kind"] == "evaluation"


def test_runs_are_chosen_on_dev_alone_and_only_among_runs_scored_on_the_same_slices(tmp_path, tiny_model_dir):
    """``finsent select``: the run with the best dev selection wins whatever its held-out rows would say; runs
    scored on other dev slices, or one without a news dev score beside ones with it, are refused, not ranked."""
    import shutil

    from finsent.model.selection import choose, table

    def run(name: str, dev: dict, **slices) -> Path:
        d = tmp_path / name
        shutil.copytree(tiny_model_dir, d)
        meta = json.loads((d / "meta.json").read_text())
        meta.update(version=name, metrics={"dev": dev, "heldout_never_read": 0.99 if name == "a" else 0.1})
        (d / "meta.json").write_text(json.dumps(meta))
        config = {"dev_fraction": 0.1, "news_dev_fraction": 0.1, "train_sets": ["sp500-posneg"], **slices}
        (d / "train_config.json").write_text(json.dumps(config))
        return d

    a = run("a", {"selection": 0.80, "twitter_selection": 0.85, "news_selection": 0.75})
    b = run("b", {"selection": 0.82, "twitter_selection": 0.83, "news_selection": 0.81})
    chosen, ranked = choose([a, b])
    assert chosen.path == b and [c.path for c in ranked] == [b, a]
    assert table(ranked).splitlines()[2].startswith("| tiny@b | 0.8200")
    with pytest.raises(errors.ConfigError, match=r"other dev slices.*news_dev_fraction"):
        choose([a, run("c", {"selection": 0.9, "news_selection": 0.9}, news_dev_fraction=0.2)])
    with pytest.raises(errors.ConfigError, match="no news dev score"):
        choose([a, run("d", {"selection": 0.9})])


def test_runs_on_different_training_sets_are_scored_on_the_union_of_their_dev_slices(tmp_path, tiny_model_dir):
    """A run that adds a training set competes with one that did not on the same rows: the news dev slices of every
    set either trained on, less any row one of them read. Here a SEntFiN dev headline is also an S&P 500 training row:
    the run without SEntFiN read it, so neither is scored on it. Stored scores cannot be compared across sets."""
    import csv
    import shutil

    from finsent.model import corpus
    from finsent.model.data import normalised
    from finsent.model.selection import choose, dev_slices, rescored_dev, trained_texts

    news = Path(__file__).parents[1] / "fixtures" / "news"
    data = write_tiny_data(tmp_path / "data")
    for name in ("sp500-headlines-posneg", "sentfin"):
        shutil.copytree(news / name, data / name)
    twin = "Initech 1 shares jump after upgrade"  # by the hashes: S&P 500 training row, SEntFiN news dev row at 0.5
    with (data / "sp500-headlines-posneg" / "sp500_headlines_posneg.csv").open("a", newline="") as fh:
        csv.writer(fh).writerow([twin, "positive"])
    with (data / "sentfin" / "sentfin_headlines.csv").open("a", newline="") as fh:
        csv.writer(fh).writerow([99, twin, 1, 1, 0, 0, "positive", json.dumps({"Initech": "positive"})])
        # and one SEntFiN news dev row no run reads elsewhere
        csv.writer(fh).writerow([98, "Hooli 2 cuts guidance as demand slows", 1, 0, 1, 0, "negative", "{}"])

    def run(name: str, sets: list[str], **config) -> Path:
        d = tmp_path / name
        shutil.copytree(tiny_model_dir, d)
        meta = json.loads((d / "meta.json").read_text())
        meta.update(version=name, metrics={"dev": {"selection": 0.5, "news_selection": 0.5}})
        (d / "meta.json").write_text(json.dumps(meta))
        base = {"data_dir": str(data), "dev_fraction": 0.1, "news_dev_fraction": 0.5, "train_sets": sets}
        (d / "train_config.json").write_text(json.dumps({**base, **config}))
        return d

    a, b = run("a", ["sp500-posneg"]), run("b", ["sp500-posneg", "sentfin-headline"])
    slices = dev_slices([a, b])
    assert slices.train_sets == ("sp500-posneg", "sentfin-headline")
    union = corpus.news_dev(data, list(slices.train_sets), 0.5)
    assert twin in [e.text for e in union]
    assert normalised(twin) in trained_texts(a) and normalised(twin) not in trained_texts(b)
    assert sorted(e.text for e in slices.news) == sorted(e.text for e in union if e.text != twin)
    for name in slices.train_sets:  # each set's own dev rows are there
        assert {e.text for e in corpus.news_dev(data, [name], 0.5)} - {twin} <= {e.text for e in slices.news}
        assert corpus.news_dev(data, [name], 0.5)

    with pytest.raises(errors.ConfigError, match=r"a did not train on sentfin-headline.*rescore"):
        choose([a, b])
    _, ranked = choose([a, b], rescored_dev)
    # a and b hold the same weights: scored on the same rows they score the same, on the union, not on their own rows
    assert ranked[0].dev == ranked[1].dev and ranked[0].dev["news_rows"] == len(slices.news)
    own = rescored_dev(a)
    assert own["news_rows"] == len(dev_slices([a]).news) < len(slices.news)
    assert "shared_selection" not in own  # one run: nothing to set apart
    shared = dev_slices([a]).news  # the rows of the set both trained on, as the union scores them
    assert {e.text for n in slices.shared_sets for e in slices.news_by_set.get(n, [])} == {e.text for e in shared}
    assert set(ranked[0].dev) >= {"shared_selection", "news@sp500-posneg", "news@sentfin-headline"}
    assert ranked[0].dev["shared_selection"] == pytest.approx(own["selection"])  # same weights, same shared rows
    with pytest.raises(errors.ConfigError, match=r"other dev slices.*data_dir"):
        dev_slices([a, run("c", ["sp500-posneg"], data_dir=str(tmp_path))])

    # what earlier weights read counts too: a parent that trained on SEntFiN without a dev slice read the twin, though
    # its child leaves that row out of its own training; so did a base pre-trained on SEntFiN's texts
    parent = run("parent", ["sentfin-headline"], news_dev_fraction=0.0)
    child = run("child", ["sentfin-headline"], init_from=str(parent))
    assert normalised(twin) not in trained_texts(run("alone", ["sentfin-headline"]))
    assert normalised(twin) in trained_texts(child)
    based = run("based", ["sentfin-headline"])
    meta = json.loads((based / "meta.json").read_text())
    (based / "meta.json").write_text(json.dumps({**meta, "training_sets": ["pretrain:sentfin-headline"]}))
    assert normalised(twin) in trained_texts(based)
    assert twin not in [e.text for e in dev_slices([b, child]).news]
