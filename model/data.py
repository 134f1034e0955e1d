"""Training and evaluation data: the MIT Twitter sets and the (non-commercial) PhraseBank.

The Twitter sets come as train/valid only. ``valid`` is held back as the *test* set we report on;
early stopping and temperature scaling use a ``dev`` slice carved deterministically out of
``train`` (by a hash of the text, so it is stable across runs and machines), so the reported
numbers never saw model selection.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from finsent.labels import SENTIMENT_INDEX, TWITTER_SENTIMENT_TO_LABEL

IGNORE = -100  # label value for "this example has no label for this head"


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    topic: int = IGNORE
    sentiment: int = IGNORE


class DataError(RuntimeError):
    """The data directory is missing or a file does not look like what PROVENANCE describes."""


def _read_csv(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        raise DataError(f"missing data file {path} (expected ../shared/data, see its README)")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != ["text", "label"]:
            raise DataError(f"{path}: expected columns text,label, got {reader.fieldnames}")
        return [(row["text"], int(row["label"])) for row in reader]


def _in_dev(text: str, dev_fraction: float) -> bool:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < dev_fraction


def twitter_topic(data_dir: Path, split: str) -> list[Example]:
    return [Example(t, topic=y) for t, y in _read_csv(data_dir / "twitter-topic" / f"{split}.csv")]


def twitter_sentiment(data_dir: Path, split: str) -> list[Example]:
    rows = _read_csv(data_dir / "twitter-sentiment" / f"{split}.csv")
    return [Example(t, sentiment=SENTIMENT_INDEX[TWITTER_SENTIMENT_TO_LABEL[y]]) for t, y in rows]


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    dev: list[Example]
    test_topic: list[Example]
    test_sentiment: list[Example]


def load_twitter(data_dir: Path, dev_fraction: float = 0.1) -> Splits:
    """Both Twitter sets: train minus a hash-selected dev slice, dev, and the two valid sets as test."""
    train_all = twitter_topic(data_dir, "train") + twitter_sentiment(data_dir, "train")
    train = [ex for ex in train_all if not _in_dev(ex.text, dev_fraction)]
    dev = [ex for ex in train_all if _in_dev(ex.text, dev_fraction)]
    return Splits(
        train=train,
        dev=dev,
        test_topic=twitter_topic(data_dir, "valid"),
        test_sentiment=twitter_sentiment(data_dir, "valid"),
    )


def phrasebank(data_dir: Path, agreement: str = "50Agree") -> list[Example]:
    """Financial PhraseBank (CC BY-NC-SA 3.0): ``sentence@label`` lines; an out-of-domain test set."""
    path = data_dir / "phrasebank" / f"Sentences_{agreement}.txt"
    if not path.exists():
        raise DataError(f"missing {path}")
    out = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        if not line.strip():
            continue
        text, _, label = line.rpartition("@")
        if label not in SENTIMENT_INDEX:
            raise DataError(f"{path}: bad label {label!r} in line {line[:60]!r}")
        out.append(Example(text.strip(), sentiment=SENTIMENT_INDEX[label]))
    return out
