"""Domain-adaptive pre-training (``finsent pretrain``) on a tiny random-weight BERT: masking, the frozen-encoder head
warm-up, resume, and the encoder directory that ``finsent train`` starts from, licence included.

What the masked-LM run does for accuracy is measured on the real model (MODEL_CARD-research.md), not here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_examples
from safetensors.torch import load_file

from finsent.model import artifact, corpus
from finsent.model.batching import pad
from finsent.model.network import tiny_config
from finsent.model.pretrain import IGNORE, PretrainConfig, _Batcher, mask_tokens, pretrain, texts_of
from finsent.model.train import TrainConfig, train

FIXTURES = Path(__file__).parents[1] / "fixtures" / "news"


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A random 2-layer BERT saved as an encoder directory (what ``finsent pretrain`` reads and writes); its record
    says it read no text, so it passes no licence restriction on."""
    from transformers import AutoTokenizer, BertModel

    tokenizer = AutoTokenizer.from_pretrained(artifact.base_path("all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("base") / "tiny-encoder"
    BertModel(tiny_config(tokenizer.vocab_size), add_pooling_layer=False).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "pretrain.json").write_text(json.dumps({"licence": corpus.COMMERCIAL, "sets": []}))
    return directory


def _cfg(tmp_path: Path, base: Path, data_dir: Path, **kw) -> PretrainConfig:
    settings = {
        "name": "tiny-mlm",
        "version": "p1",
        "base": str(base),
        "data_dir": str(data_dir),
        "out_dir": str(tmp_path / "bases"),
        "run_dir": str(tmp_path / "runs"),
        "sets": ["twitter-train"],
        "epochs": 12,
        "batch_size": 16,
        "lr": 3e-3,
        "head_lr": 1e-2,
        "head_warmup_steps": 3,
        "heldout_texts": 24,
        "max_length": 32,
        "checkpoint_every": 0,
        "seed": 5,
    }
    settings.update(kw)
    return PretrainConfig(**settings)


def _encoder(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_masking_chooses_only_real_tokens_at_the_rate_asked_and_labels_only_those():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (64, 40))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True  # [CLS], [SEP]
    special[:, 30:] = True  # padding
    inputs, labels = mask_tokens(ids, special, mask_id=103, vocab_size=30522, prob=0.15, generator=generator)
    chosen = labels != IGNORE
    assert not (chosen & special).any()
    assert torch.equal(labels[chosen], ids[chosen])
    rate = chosen.sum() / (~special).sum()
    assert 0.12 < rate < 0.18
    as_mask = (inputs[chosen] == 103).float().mean()
    assert 0.7 < as_mask < 0.9  # 80 % [MASK], the rest a random token or unchanged
    assert torch.equal(inputs[~chosen], ids[~chosen])
    # a batch too short for the rate still gets one token to predict
    one = torch.tensor([[101, 1500, 102]])
    _, labels = mask_tokens(one, one.eq(101) | one.eq(102), 103, 30522, 0.0, generator)
    assert labels.tolist() == [[IGNORE, 1500, IGNORE]]


def test_pretraining_freezes_the_encoder_for_the_head_warmup_then_learns_and_resumes_exactly(
    tmp_path, tiny_base, tiny_data_dir
):
    base = _encoder(tiny_base)
    full = pretrain(_cfg(tmp_path / "full", tiny_base, tiny_data_dir), progress=False)
    record = json.loads((full / "pretrain.json").read_text())
    # the warmed-up head (encoder frozen) beats a random one, and the loss keeps falling once the encoder trains too
    assert record["heldout_loss_base_encoder"] < record["heldout_loss_before"]
    assert record["heldout_loss_after"] < record["heldout_loss_base_encoder"] - 0.5
    assert record["licence"] == corpus.COMMERCIAL and record["heldout_texts"] == 24
    trained = _encoder(full)
    assert any(not torch.equal(trained[k], base[k]) for k in base)

    # stopped after the head warm-up: the encoder has not moved yet; resumed: the same weights as the run above
    cfg = _cfg(tmp_path / "paused", tiny_base, tiny_data_dir, max_steps=3)
    run_dir = pretrain(cfg, progress=False)
    saved = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    for key, value in base.items():
        assert torch.equal(saved["model"][f"encoder.{key}"], value), key
    resumed = pretrain(_cfg(tmp_path / "paused", tiny_base, tiny_data_dir), progress=False)
    for key, value in _encoder(resumed).items():
        torch.testing.assert_close(value, trained[key], atol=1e-6, rtol=0)


def test_a_model_trained_from_a_pretrained_base_names_it_and_inherits_its_licence(tmp_path, tiny_base, tiny_data_dir):
    data = tmp_path / "data"  # the tiny Twitter sets beside the S&P 500 fixture (a research-only set)
    data.mkdir()
    for folder in ("twitter-topic", "twitter-sentiment"):
        (data / folder).symlink_to(tiny_data_dir / folder)
    (data / "sp500-headlines-posneg").symlink_to(FIXTURES / "sp500-headlines-posneg")

    fine_tune = {
        "name": "tiny",
        "out_dir": str(tmp_path / "models"),
        "run_dir": str(tmp_path / "runs"),
        "epochs": 1,
        "batch_size": 8,
        "max_length": 32,
        "dropout": 0.0,
        "mlflow": False,
        "checkpoint_every": 0,
    }
    examples, dev = tiny_examples(32, seed=1), tiny_examples(16, seed=2)
    for sets, licence in ((["twitter-train"], corpus.COMMERCIAL), (["twitter-train", "sp500-posneg"], corpus.RESEARCH)):
        version = f"v{len(sets)}"
        encoder = pretrain(_cfg(tmp_path, tiny_base, data, sets=sets, epochs=1, version=version), progress=False)
        assert json.loads((encoder / "pretrain.json").read_text())["licence"] == licence
        model = train(TrainConfig(base=str(encoder), version=version, **fine_tune), examples, dev, progress=False)
        meta = artifact.load_meta(model)
        assert meta.base == str(encoder)
        assert meta.licence == licence, sets  # no train_sets named: the licence comes from the base alone
        assert meta.training_sets[: len(sets)] == [f"pretrain:{s}" for s in sets]

    # an encoder that does not say what it read passes on "unknown", which counts as research
    unrecorded = tmp_path / "unrecorded-encoder"
    shutil.copytree(tiny_base, unrecorded)
    (unrecorded / "pretrain.json").unlink()
    model = train(TrainConfig(base=str(unrecorded), version="u", **fine_tune), examples, dev, progress=False)
    assert artifact.load_meta(model).licence == corpus.RESEARCH
    # pseudo-labels distil their teacher: a research teacher makes a research student, on commercial data alone
    cfg = TrainConfig(base=str(tiny_base), version="s", data_dir=str(data), pseudo_from=str(model), **fine_tune)
    student = artifact.load_meta(train(cfg, progress=False))
    assert student.licence == corpus.RESEARCH and "sp500-posneg" not in student.training_sets


def test_the_batcher_never_masks_specials_padding_or_the_domain_tag_and_swaps_some_tokens_for_random_ones():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(artifact.base_path("all-MiniLM-L6-v2"))
    prefixes = {"twitter": "tweet |", "news": "headline |"}
    texts = [("news", "headline | Acme beats quarterly estimates as margins widen")] * 150
    texts += [("twitter", "tweet | $ACME up 5% premarket")] * 150
    batcher = _Batcher(texts, tokenizer, 32, 0.5, prefixes)
    inputs, attention, labels = batcher(list(range(300)), torch.Generator().manual_seed(3))
    ids, _ = pad([batcher.ids[i] for i in range(300)], 0)
    chosen = labels != IGNORE
    assert not chosen[:, :3].any()  # [CLS] and the two tag tokens ("headline |", "tweet |")
    assert not (chosen & (attention == 0)).any() and not (chosen & ids.eq(tokenizer.sep_token_id)).any()
    assert chosen.sum() > 1000
    as_mask = inputs[chosen] == tokenizer.mask_token_id
    unchanged = inputs[chosen] == ids[chosen]
    swapped = ~as_mask & ~unchanged
    assert 0.75 < as_mask.float().mean() < 0.85
    assert 0.05 < swapped.float().mean() < 0.15 and 0.05 < unchanged.float().mean() < 0.15


def test_pretraining_reads_no_evaluation_text_in_any_casing(tmp_path, tiny_data_dir):
    data = tmp_path / "data"
    for folder in ("twitter-topic", "twitter-sentiment"):
        (data / folder).mkdir(parents=True)
        (data / folder / "train.csv").write_text((tiny_data_dir / folder / "train.csv").read_text())
    train_rows = (tiny_data_dir / "twitter-topic" / "train.csv").read_text().splitlines()[1:]
    tested = train_rows[0].rsplit(",", 1)[0]  # a training text that the valid file also holds, in capitals
    (data / "twitter-topic" / "valid.csv").write_text(f"text,label\n{tested.upper()},1\n")
    (data / "twitter-sentiment" / "valid.csv").write_text("text,label\nnothing in common,1\n")
    cfg = PretrainConfig(data_dir=str(data), sets=["twitter-train"], heldout_texts=0)
    read = {text for _, text in texts_of(cfg)}
    assert tested not in read and read  # the valid file's text, though the train file has it in lower case
    from finsent.model.data import load_twitter, normalised

    dev = {normalised(ex.text) for ex in load_twitter(data).dev}
    assert dev and not dev & {normalised(t) for t in read}  # nor the dev slice fine-tuning selects on
