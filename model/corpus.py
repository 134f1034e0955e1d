"""The training corpus of a run: the Twitter sets, pseudo-labels for their missing head, and extra sets.

Why pseudo-labels: the topic set has no sentiment labels and the sentiment set no topic labels, so each
head learns from half the texts. A teacher model (``pseudo_from``) labels the missing head where its
calibrated probability is at least ``pseudo_threshold``; both heads then see every text.

Why a licence gate: the default model may be trained only on commercially usable data (the MIT Twitter
sets, FinEntity under ODC-BY). ``TRAIN_SETS`` says which sets are; a run that names any other set is a
*research* variant, and its metadata says so (``ModelMeta.licence``) so it cannot be shipped by mistake.
Every set but FinEntity is trained on its non-held-out part only (``data.split_heldout``); FinEntity
trains on its ``dev`` half and is reported on its ``test`` half.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from finsent.model.augment import augmented
from finsent.model.data import (
    IGNORE,
    Example,
    finentity,
    finentity_spans,
    in_news_dev,
    news_unlabelled,
    normalised,
    phrasebank_train_part,
    reuters_topics,
    sentfin_headlines,
    sentifm_topics,
    sentivent_topics_train_part,
    sp500_posneg,
    split_heldout,
)
from finsent.model.licence import COMMERCIAL, RESEARCH, commercial

log = logging.getLogger("finsent.model.corpus")


@dataclass(frozen=True)
class TrainSet:
    name: str
    load: Callable[[Path], list[Example]]
    commercial: bool
    unlabelled: bool = False  # texts only: a run that names it must have a self-training teacher (``self_train``)
    # each text's annotated entity spans, for augmentation's entity swaps (None: the set annotates none)
    entity_spans: Callable[[Path], dict[str, list[tuple[int, int]]]] | None = None


def _train_part(name: str, load: Callable[[Path], list[Example]]) -> Callable[[Path], list[Example]]:
    return lambda d: split_heldout(name, load(d))[0]


TRAIN_SETS: dict[str, TrainSet] = {
    s.name: s
    for s in (
        TrainSet("finentity-dev", lambda d: finentity(d, "dev"), commercial=True, entity_spans=finentity_spans),
        TrainSet("sp500-posneg", _train_part("sp500-posneg", sp500_posneg), commercial=False),
        TrainSet("sentfin-headline", _train_part("sentfin-headline", sentfin_headlines), commercial=False),
        TrainSet("phrasebank-50", phrasebank_train_part, commercial=False),
        TrainSet("reuters-topics", _train_part("reuters-topics", reuters_topics), commercial=False),
        TrainSet("sentivent-topics", sentivent_topics_train_part, commercial=False),
        TrainSet("sentifm-topics", _train_part("sentifm-topics", sentifm_topics), commercial=False),
        TrainSet("news-unlabelled", _train_part("news-unlabelled", news_unlabelled), commercial=False, unlabelled=True),
    )
}


def licence_of(set_names: list[str]) -> str:
    unknown = sorted(set(set_names) - set(TRAIN_SETS))
    if unknown:
        raise ValueError(f"unknown training sets {unknown}; known: {sorted(TRAIN_SETS)}")
    return COMMERCIAL if all(TRAIN_SETS[n].commercial for n in set_names) else RESEARCH


def run_licence(set_names: list[str], *inherited: str) -> str:
    """The licence of a run on ``set_names`` that learned from other weights too (a parent model, a pre-trained base,
    a pseudo-labelling teacher), each with its licence: research unless every one is commercial. An empty licence
    is a model from before licences were recorded (the shipped v1, trained on the MIT Twitter sets) and adds
    nothing; any other text that is not ``COMMERCIAL`` counts as research."""
    if not all(commercial(lic) for lic in inherited):
        return RESEARCH
    return licence_of(set_names)


def split_news_dev(name: str, rows: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """(rows to train on, news dev rows) of one set's training part. A dev text that equals a kept text up to case
    and spacing is dropped from dev, as the held-out cut does (``data.split_heldout``)."""
    if not fraction:
        return rows, []
    dev_side = [in_news_dev(name, ex.text, fraction) for ex in rows]
    kept = [ex for ex, d in zip(rows, dev_side) if not d]
    trained = {normalised(ex.text) for ex in kept}
    return kept, [ex for ex, d in zip(rows, dev_side) if d and normalised(ex.text) not in trained]


def news_dev(data_dir: Path, set_names: list[str], fraction: float) -> list[Example]:
    """The news dev slice of every named labelled set (``split_news_dev``): selection data cut from training data,
    so that choosing an epoch or a run never looks at a held-out row."""
    licence_of(set_names)
    out: list[Example] = []
    for name in set_names:
        if TRAIN_SETS[name].unlabelled or not fraction:
            continue
        dev = split_news_dev(name, TRAIN_SETS[name].load(data_dir), fraction)[1]
        log.info("news dev slice", extra={"set": name, "examples": len(dev), "fraction": fraction})
        out.extend(dev)
    return out


def extra_examples(
    data_dir: Path, set_names: list[str], repeat: int = 1, augment: int = 0, seed: int = 0, dev_fraction: float = 0.0
) -> list[Example]:
    """The named labelled sets' training parts, each repeated ``repeat`` times (small in-domain sets), plus
    ``augment`` label-preserving rewrites of each example (``finsent.model.augment``: entity swaps where the set
    annotates entities, ``TrainSet.entity_spans``, and changed figures). ``dev_fraction``: the news dev slice
    (``news_dev``) is left out."""
    licence_of(set_names)
    out: list[Example] = []
    for name in set_names:
        if TRAIN_SETS[name].unlabelled:
            continue
        train_set = TRAIN_SETS[name]
        rows = split_news_dev(name, train_set.load(data_dir), dev_fraction)[0]
        rewrites: list[Example] = []
        if augment:
            spans = train_set.entity_spans(data_dir) if train_set.entity_spans is not None else {}
            rewrites = augmented(rows, spans, augment, seed)
        log.info(
            "training set added",
            extra={"set": name, "examples": len(rows), "repeat": repeat, "rewrites": len(rewrites)},
        )
        out.extend(rows * repeat + rewrites)
    return out


def pseudo_label(
    examples: list[Example], teacher_dir: Path, threshold: float, polar_threshold: float | None = None
) -> tuple[list[Example], dict[str, int]]:
    """Fill each example's missing head from the teacher where it is confident; returns counts per head.

    ``polar_threshold`` (default: ``threshold``) applies to negative and positive sentiment calls. Why a
    separate one: a teacher trained on tweets (65 % neutral) is most confident on neutral, so one high
    threshold keeps ~80 % neutral pseudo-labels and teaches the student an even stronger neutral prior,
    the very bias that makes it file polar news headlines as neutral.
    """
    polar_threshold = threshold if polar_threshold is None else polar_threshold
    from finsent.model.classifier import Classifier

    teacher = Classifier.load(teacher_dir, backend="torch", batch_size=128)
    texts = [ex.text for ex in examples]
    log.info(
        "pseudo-labelling",
        extra={"teacher": teacher.version, "texts": len(texts), "threshold": threshold, "polar": polar_threshold},
    )
    # Twitter texts as tweets, the rest as news: a domain-tagged teacher reads each behind its own tag (model.domain);
    # for an untagged one both calls are its default rule.
    preds: list = [None] * len(examples)
    as_tweet = [ex.domain == "twitter" for ex in examples]
    for tweets, domain in ((True, "twitter"), (False, None)):
        idx = [i for i, t in enumerate(as_tweet) if t is tweets]
        for i, p in zip(idx, teacher.predict([texts[i] for i in idx], domain=domain)):
            preds[i] = p
    topics, sents = teacher.meta.topic_labels, teacher.meta.sentiment_labels
    counts = {"topic": 0, "sentiment": 0}
    out = []
    for ex, p in zip(examples, preds):
        if p.flag is None and ex.topic == IGNORE and max(p.topic_probs.values()) >= threshold:
            ex = replace(ex, topic=topics.index(p.topic))
            counts["topic"] += 1
        needed = threshold if p.sentiment == "neutral" else polar_threshold
        if p.flag is None and ex.sentiment == IGNORE and max(p.sentiment_probs.values()) >= needed:
            ex = replace(ex, sentiment=sents.index(p.sentiment))
            counts["sentiment"] += 1
        out.append(ex)
    log.info("pseudo-labelled", extra=counts)
    return out, counts


def self_train(
    data_dir: Path, set_names: list[str], teacher_dir: Path | None, threshold: float
) -> tuple[list[Example], dict[str, int]]:
    """The named unlabelled sets' training parts, labelled by ``teacher_dir`` where it is confident (both heads
    on their own); texts it is unsure of on both heads are left out. Self-training: the teacher's confident
    calls on in-domain text become supervision for the student."""
    names = [n for n in set_names if TRAIN_SETS[n].unlabelled]
    if not names:
        return [], {"topic": 0, "sentiment": 0, "texts": 0}
    if teacher_dir is None:
        raise ValueError(f"training sets {names} have no labels: set self_train_from to a teacher model")
    texts = [ex for name in names for ex in TRAIN_SETS[name].load(data_dir)]
    labelled, counts = pseudo_label(texts, teacher_dir, threshold)
    kept = [ex for ex in labelled if ex.topic != IGNORE or ex.sentiment != IGNORE]
    log.info("self-training set", extra={"sets": names, "texts": len(texts), "kept": len(kept), **counts})
    return kept, {**counts, "texts": len(texts)}


def label_counts(examples: list[Example]) -> dict[str, int]:
    t = np.array([e.topic for e in examples])
    s = np.array([e.sentiment for e in examples])
    return {"topic": int((t != IGNORE).sum()), "sentiment": int((s != IGNORE).sum())}
