"""The training corpus: held-out splits, the licence gate, pseudo-labels (tiny random model of conftest)."""

import re
from pathlib import Path

import pytest

from finsent.labels import SENTIMENT_LABELS
from finsent.model.corpus import (
    COMMERCIAL,
    RESEARCH,
    TRAIN_SETS,
    extra_examples,
    licence_of,
    news_dev,
    pseudo_label,
    self_train,
    split_news_dev,
)
from finsent.model.data import (
    IGNORE,
    Example,
    finbert_test_split,
    in_news_dev,
    is_heldout,
    news_unlabelled,
    phrasebank,
    phrasebank_train_part,
    split_heldout,
)
from finsent.model.domain import check_prefixes
from finsent.model.train import TrainConfig

FIXTURES = Path(__file__).parents[1] / "fixtures" / "news"
CONFIGS = Path(__file__).parents[2] / "configs"


def test_heldout_is_stable_about_a_fifth_and_salted_by_set():
    texts = [f"headline number {i}" for i in range(5000)]
    held = [t for t in texts if is_heldout("sp500-posneg", t)]
    assert held == [t for t in texts if is_heldout("sp500-posneg", t)]
    assert 0.18 < len(held) / len(texts) < 0.22
    assert held != [t for t in texts if is_heldout("sentfin-headline", t)]
    train, test = split_heldout("sp500-posneg", [Example(t) for t in texts])
    assert {e.text for e in test} == set(held) and not {e.text for e in train} & set(held)


def test_phrasebank_training_part_never_holds_a_finbert_test_sentence():
    test = {e.text for e in finbert_test_split(phrasebank(FIXTURES, "50Agree"))}
    train = {e.text for e in phrasebank_train_part(FIXTURES)}
    assert train and not train & test


def test_the_licence_gate_marks_any_non_commercial_set_as_research():
    assert licence_of([]) == COMMERCIAL and licence_of(["finentity-dev"]) == COMMERCIAL
    assert licence_of(["finentity-dev", "sp500-posneg"]) == RESEARCH
    with pytest.raises(ValueError, match="unknown training sets"):
        licence_of(["not-a-set"])
    assert [n for n, s in TRAIN_SETS.items() if s.commercial] == ["finentity-dev"]


def test_extra_sets_train_only_outside_their_heldout_part():
    rows = extra_examples(FIXTURES, ["sp500-posneg"], repeat=2)
    held = {e.text for e in split_heldout("sp500-posneg", TRAIN_SETS["sp500-posneg"].load(FIXTURES))[1]}
    assert rows and not held & {e.text for e in rows} and len(rows) % 2 == 0


def test_the_news_dev_slice_is_cut_from_the_training_part_and_never_trained_on():
    """Selection data for news (``news_dev_fraction``): a stable, salted cut of each set's training part, so no
    held-out row can choose a model and no dev row is trained on, not even as a copy differing in case."""
    texts = [f"Company {i} shares move on results" for i in range(4000)]
    dev = [t for t in texts if in_news_dev("sp500-posneg", t, 0.1)]
    assert 0.08 < len(dev) / len(texts) < 0.12 and dev == [t for t in texts if in_news_dev("sp500-posneg", t, 0.1)]
    assert dev != [t for t in texts if in_news_dev("sentfin-headline", t, 0.1)]
    assert set(dev) != {t for t in texts if is_heldout("sp500-posneg", t, 0.1)}  # its own salt, not the held-out cut

    part = TRAIN_SETS["sp500-posneg"].load(FIXTURES)
    kept, cut = split_news_dev("sp500-posneg", part, 0.5)
    assert kept and cut and sorted(e.text for e in kept + cut) == sorted(e.text for e in part)
    assert {e.text for e in cut} == {e.text for e in news_dev(FIXTURES, ["sp500-posneg"], 0.5)}
    trained = {e.text for e in extra_examples(FIXTURES, ["sp500-posneg"], dev_fraction=0.5)}
    assert trained == {e.text for e in kept} and not trained & {e.text for e in cut}
    assert split_news_dev("sp500-posneg", part, 0.0) == (part, [])

    # a dev text whose twin (same up to case and spacing) stays on the training side is not scored
    twin = next(
        i for i in range(1000) if in_news_dev("x", f"Twin {i} up", 0.5) != in_news_dev("x", f"TWIN  {i} UP", 0.5)
    )
    kept, cut = split_news_dev(
        "x", [Example(f"Twin {twin} up", sentiment=2), Example(f"TWIN  {twin} UP", sentiment=2)], 0.5
    )
    assert len(kept) == 1 and cut == []


def test_shipped_run_configs_parse_and_the_default_one_is_commercial():
    v2 = TrainConfig.from_toml(CONFIGS / "train-minilm-v2.toml")
    research = TrainConfig.from_toml(CONFIGS / "train-minilm-research.toml")
    assert licence_of(v2.train_sets) == COMMERCIAL and v2.name == "finsent-minilm"
    assert licence_of(research.train_sets) == RESEARCH and research.name != v2.name
    self_trained = TrainConfig.from_toml(CONFIGS / "train-minilm-research-st.toml")
    assert licence_of(self_trained.train_sets) == RESEARCH and self_trained.self_train_from
    tagged = TrainConfig.from_toml(CONFIGS / "train-minilm-research-tags.toml")
    assert set(tagged.domain_prefixes) == {"twitter", "news"} and tagged.name == research.name
    # `make research-model` builds a research-licensed, tagged variant where the registry serves it by name
    target = re.search(r"^research-model:.*\n\t.*--run-config (\S+)", (CONFIGS.parent / "Makefile").read_text(), re.M)
    built = TrainConfig.from_toml(CONFIGS.parent / target.group(1))
    assert licence_of(built.train_sets) == RESEARCH and built.name == research.name and built.domain_prefixes
    assert built.out_dir == "models"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("train-*.toml")), ids=lambda p: p.name)
def test_every_run_config_parses_and_names_known_sets_and_whole_domain_tags(path):
    cfg = TrainConfig.from_toml(path)
    licence_of(cfg.train_sets)
    check_prefixes(cfg.domain_prefixes)
    assert (licence_of(cfg.train_sets) == RESEARCH) == cfg.name.endswith("-research")


def test_pseudo_labels_fill_only_missing_heads_and_only_when_confident(tiny_model_dir):
    examples = [Example("shares of acme fall", topic=3), Example("fed holds rates", sentiment=1)]
    filled, counts = pseudo_label(examples, tiny_model_dir, threshold=0.0)
    assert filled[0].topic == 3 and filled[0].sentiment != IGNORE  # kept its own label, got the other
    assert filled[1].sentiment == 1 and filled[1].topic != IGNORE
    assert counts == {"topic": 1, "sentiment": 1}
    none, counts = pseudo_label(examples, tiny_model_dir, threshold=1.01)
    assert none == examples and counts == {"topic": 0, "sentiment": 0}


@pytest.fixture(scope="module")
def split_teacher_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its sentiment head scaled up: the random one calls every text positive, this one
    calls some neutral and some polar, which the per-class thresholds need."""
    import torch

    from finsent.model import artifact

    model, tokenizer, meta = artifact.load(tiny_model_dir, dropout=0.0)
    batch = tokenizer([e.text for e in _polar_examples()], padding=True, return_tensors="pt")
    with torch.no_grad():
        model.sentiment_head.weight.mul_(100.0)
        _, logits = model(batch["input_ids"], batch["attention_mask"])
        model.sentiment_head.bias.sub_(logits.mean(0))  # centred: no class wins every text
    directory = tmp_path_factory.mktemp("teacher") / "tiny" / "v1"
    artifact.save(directory, model, tokenizer, meta, dtype=torch.float32)
    return directory


def _polar_examples() -> list[Example]:
    words = ["acme", "fed", "rates", "shares", "fall", "jump", "profit", "loss", "bank", "oil", "cut", "beat"]
    return [Example(f"{a} {b} {c}", topic=1) for a in words for b in words[3:] for c in words[6:9]]


def test_polar_pseudo_labels_have_their_own_threshold(split_teacher_dir):
    examples = _polar_examples()
    neutral = SENTIMENT_LABELS.index("neutral")
    every, counts_every = pseudo_label(examples, split_teacher_dir, threshold=0.0)
    labels = [e.sentiment for e in every]
    assert neutral in labels and any(s != neutral for s in labels)  # the fixture's teacher calls both
    polar_only, counts_polar = pseudo_label(examples, split_teacher_dir, threshold=1.01, polar_threshold=0.0)
    neutral_only, counts_neutral = pseudo_label(examples, split_teacher_dir, threshold=0.0, polar_threshold=1.01)
    assert [e.sentiment for e in polar_only] == [s if s != neutral else IGNORE for s in labels]
    assert [e.sentiment for e in neutral_only] == [s if s == neutral else IGNORE for s in labels]
    assert counts_polar["sentiment"] + counts_neutral["sentiment"] == counts_every["sentiment"]


def test_unlabelled_news_is_read_once_each_detokenised_and_never_holds_an_evaluation_text():
    texts = [e.text for e in news_unlabelled(FIXTURES)]
    assert texts == [
        "Hooli shares jump as cloud sales double",  # CNBC and Guardian both carry it: once
        "Pied Piper warns of job cuts at its compression plant",
        "Vandelay Industries to sell latex unit for $600 million: sources",  # the Reuters copy's normalisation undone
        "Is Soylent Corp running out of cash?",
        "Dollar slips as the USD rally fades",  # "USD " before a number only was "$"
    ]  # gone: an S&P 500 headline in capitals with "!", a Twitter valid text
    assert all(e.topic == IGNORE and e.sentiment == IGNORE for e in news_unlabelled(FIXTURES))


def test_unlabelled_news_never_holds_a_text_of_the_twitter_dev_slice(tmp_path):
    """The dev slice selects the epoch and fits the temperatures: 8 of the unlabelled headlines were its texts."""
    import shutil

    from finsent.model.data import _in_dev, load_twitter

    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    dev_text = next(
        t for t in (f"Globex raises quarterly dividend by {n} cents" for n in range(200)) if _in_dev(t, 0.1)
    )
    for head in ("twitter-topic", "twitter-sentiment"):
        (data / head / "train.csv").write_text(f'text,label\n"{dev_text}",0\n"Initech sees flat sales",1\n')
    assert [ex.text for ex in load_twitter(data).dev] == [dev_text, dev_text]  # in both sets' train files
    with (data / "financial-news-headlines-full" / "cnbc_headlines.csv").open("a") as fh:
        fh.write(f'2020-07-17T19:00 America/New_York,"7:00  PM ET Fri, 17 July 2020",{dev_text.upper()},"dev text"\n')
    texts = {e.text.lower() for e in news_unlabelled(data)}
    assert dev_text.lower() not in texts and "hooli shares jump as cloud sales double" in texts


def test_self_training_labels_unlabelled_sets_with_the_teacher_and_keeps_only_what_it_is_sure_of(tiny_model_dir):
    names = ["sp500-posneg", "news-unlabelled"]
    assert licence_of(names) == RESEARCH
    assert not {e.text for e in extra_examples(FIXTURES, names)} & {e.text for e in news_unlabelled(FIXTURES)}
    train_part = TRAIN_SETS["news-unlabelled"].load(FIXTURES)
    sure, counts = self_train(FIXTURES, names, tiny_model_dir, threshold=0.0)
    assert [e.text for e in sure] == [e.text for e in train_part] and counts["texts"] == len(train_part)
    assert all(e.topic != IGNORE and e.sentiment != IGNORE for e in sure)
    unsure, counts = self_train(FIXTURES, names, tiny_model_dir, threshold=1.01)
    assert unsure == [] and counts == {"topic": 0, "sentiment": 0, "texts": len(train_part)}
    assert self_train(FIXTURES, ["sp500-posneg"], None, 0.9)[0] == []  # nothing unlabelled: no teacher needed
    with pytest.raises(ValueError, match="self_train_from"):
        self_train(FIXTURES, names, None, 0.9)


def test_finentity_rewrites_swap_its_annotated_companies_and_keep_every_label():
    from finsent.model.data import finentity, finentity_spans

    spans = finentity_spans(FIXTURES)
    text = "Initech <INIT.N> slumped after regulators opened an inquiry."
    assert spans[text] == [(0, 7)]  # the published offset was one character off: relocated to the name
    dev = finentity(FIXTURES, "dev")
    plain = extra_examples(FIXTURES, ["finentity-dev"], repeat=1)
    rows = extra_examples(FIXTURES, ["finentity-dev"], repeat=1, augment=2, seed=13)
    assert plain == dev and rows[: len(dev)] == dev
    rewrites = rows[len(dev) :]
    assert rewrites and len(rewrites) <= 2 * len(dev)
    names = ("Umbrella Co", "Acme", "Globex", "Initech")

    def skeleton(t: str) -> str:  # what a rewrite must leave alone: everything but the companies and figures
        for n in names:
            t = t.replace(n, "E")
        return re.sub(r"\d", "9", t)

    label_of = {skeleton(e.text): e.sentiment for e in dev}
    assert len(label_of) == len(dev)
    assert [label_of[skeleton(r.text)] for r in rewrites] == [r.sentiment for r in rewrites]
    assert not {r.text for r in rewrites} & {e.text for e in dev}
    assert TrainConfig.from_toml(CONFIGS / "train-minilm-v5.toml").train_set_augment == 3


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("pretrain-*.toml")), ids=lambda p: p.name)
def test_every_pretraining_config_parses_and_says_what_its_encoder_may_be_used_for(path):
    from finsent.model.pretrain import PretrainConfig
    from finsent.model.pretrain import licence_of as pretrain_licence

    cfg = PretrainConfig.from_toml(path)
    check_prefixes(cfg.domain_prefixes)
    if pretrain_licence(cfg.sets) == RESEARCH:  # a research-only encoder is only the base of research runs
        for train_path in CONFIGS.glob("train-*.toml"):
            run = TrainConfig.from_toml(train_path)
            if Path(run.base).parent.name == cfg.name:
                assert run.name.endswith("-research"), train_path.name
