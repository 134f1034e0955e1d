"""Training and evaluation data: the MIT Twitter sets, PhraseBank and the news-domain test sets.

The Twitter sets come as train/valid only. ``valid`` is held back as the *test* set we report on;
early stopping and temperature scaling use a ``dev`` slice carved deterministically out of
``train`` (by a hash of the text, so it is stable across runs and machines), so the reported
numbers never saw model selection.

The news-domain sets (``../shared/data/README.md``, "News-domain sets") are read in the formats their
PROVENANCE.md describes; see ``NEWS_SETS`` for what each evaluation set contains. FinEntity (ODC-BY,
the only permissively licensed news set) is cut by a hash of the text into a ``dev`` half, which may
be used for fitting (e.g. the news decision rule, ``finsent.model.domain``), and a ``test`` half that
is only ever reported on.
"""

from __future__ import annotations

import csv
import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from finsent.errors import DataError, MissingData
from finsent.labels import SENTIMENT_INDEX, TWITTER_SENTIMENT_TO_LABEL

IGNORE = -100  # label value for "this example has no label for this head"


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    topic: int = IGNORE
    sentiment: int = IGNORE
    domain: str = "news"  # "twitter" for the Twitter sets: the tag a domain-tagged model reads it behind (model.domain)


def domain_of(examples: list[Example]) -> str:
    """The one domain a set's examples share (an evaluation set is read behind one tag, ``model.domain``)."""
    domains = {ex.domain for ex in examples}
    if len(domains) > 1:
        raise ValueError(f"a set mixes domains {sorted(domains)}")
    return domains.pop() if domains else "news"


def check_data_dir(data_dir: Path, what: str = "evaluation data directory", hint: str = "") -> None:
    """Raise ``MissingData`` naming ``data_dir`` unless it is an existing directory; ``hint``: how this command is
    told where the data is (training reads its run config, evaluation the settings)."""
    if not Path(data_dir).is_dir():
        raise MissingData(Path(data_dir), what, *([hint] if hint else []))


def _read_csv(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        raise MissingData(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != ["text", "label"]:
            raise DataError(f"{path}: expected columns text,label, got {reader.fieldnames}")
        return [(row["text"], int(row["label"])) for row in reader]


def _in_dev(text: str, dev_fraction: float) -> bool:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < dev_fraction


def twitter_topic(data_dir: Path, split: str) -> list[Example]:
    return [Example(t, topic=y, domain="twitter") for t, y in _read_csv(data_dir / "twitter-topic" / f"{split}.csv")]


def twitter_sentiment(data_dir: Path, split: str) -> list[Example]:
    rows = _read_csv(data_dir / "twitter-sentiment" / f"{split}.csv")
    return [Example(t, sentiment=SENTIMENT_INDEX[TWITTER_SENTIMENT_TO_LABEL[y]], domain="twitter") for t, y in rows]


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    dev: list[Example]
    test_topic: list[Example]
    test_sentiment: list[Example]
    twins_left_out: int = 0  # train texts dropped as a copy (up to case and punctuation) of a dev or test text


def twitter_train_rows(data_dir: Path) -> list[Example]:
    """Every row of both Twitter train files, the dev slice and the copies of test texts included."""
    return twitter_topic(data_dir, "train") + twitter_sentiment(data_dir, "train")


def load_twitter(data_dir: Path, dev_fraction: float = 0.1) -> Splits:
    """Both Twitter sets: train minus a hash-selected dev slice, dev, and the two valid sets as test.

    The published train files hold copies of valid texts that differ only in case (11), and the dev slice, drawn on
    the exact text, can leave a text's other casing in train (2). Builds before session 39 trained on those 13: now
    a train text whose ``normalised`` form is a dev or test text is left out (counted in ``twins_left_out``). The
    dev slice itself is still drawn on the exact text, so every recorded dev figure keeps its rows."""
    train_all = twitter_train_rows(data_dir)
    dev = [ex for ex in train_all if _in_dev(ex.text, dev_fraction)]
    test_topic, test_sentiment = twitter_topic(data_dir, "valid"), twitter_sentiment(data_dir, "valid")
    held = {normalised(ex.text) for ex in dev + test_topic + test_sentiment} - {
        ""
    }  # "" would match every emoji-only text
    rest = [ex for ex in train_all if not _in_dev(ex.text, dev_fraction)]
    train = [ex for ex in rest if normalised(ex.text) not in held]
    return Splits(train, dev, test_topic, test_sentiment, twins_left_out=len(rest) - len(train))


def phrasebank(data_dir: Path, agreement: str = "50Agree") -> list[Example]:
    """Financial PhraseBank (CC BY-NC-SA 3.0): ``sentence@label`` lines; an out-of-domain test set."""
    path = data_dir / "phrasebank" / f"Sentences_{agreement}.txt"
    if not path.exists():
        raise MissingData(path)
    out = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        if not line.strip():
            continue
        text, _, label = line.rpartition("@")
        if label not in SENTIMENT_INDEX:
            raise DataError(f"{path}: bad label {label!r} in line {line[:60]!r}")
        out.append(Example(text.strip(), sentiment=SENTIMENT_INDEX[label]))
    return out


# ----------------------------------------------------------------------------- news-domain sets

NEG, NEU, POS = (SENTIMENT_INDEX[x] for x in ("negative", "neutral", "positive"))
FINENTITY_DEV_FRACTION = 0.5  # the rest is FinEntity's held-out test half


def _read_rows(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a UTF-8 CSV with a header that must contain ``columns`` (extra columns are fine)."""
    if not path.exists():
        raise MissingData(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: expected columns {', '.join(columns)}; missing {', '.join(missing)}")
        return list(reader)


def _sentiment(path: Path, label: str) -> int:
    if label not in SENTIMENT_INDEX:
        raise DataError(f"{path}: unexpected sentiment label {label!r}")
    return SENTIMENT_INDEX[label]


def sp500_posneg(data_dir: Path) -> list[Example]:
    """S&P 500 headlines labelled positive / negative only (neutral ones were excluded by the author)."""
    path = data_dir / "sp500-headlines-posneg" / "sp500_headlines_posneg.csv"
    out = []
    for row in _read_rows(path, ("headline", "label")):
        label = _sentiment(path, row["label"].strip().lower())
        if label == NEU:
            raise DataError(f"{path}: this set has no neutral class, found {row['label']!r}")
        out.append(Example(row["headline"], sentiment=label))
    return out


def sentfin_headlines(data_dir: Path) -> list[Example]:
    """SEntFiN headlines whose entities all share one label (``label_consensus``); ``mixed`` is dropped."""
    path = data_dir / "sentfin" / "sentfin_headlines.csv"
    return [
        Example(row["headline"], sentiment=_sentiment(path, row["label_consensus"]))
        for row in _read_rows(path, ("headline", "label_consensus"))
        if row["label_consensus"] != "mixed"
    ]


def sentfin_entities(data_dir: Path) -> list[Example]:
    """One example per (headline, entity): the headline's text with that entity's label.

    The classifier is entity-blind, so every entity of a headline gets the headline's prediction;
    headlines whose entities disagree therefore cost at least one error each.
    """
    path = data_dir / "sentfin" / "sentfin_entities.csv"
    return [
        Example(row["headline"], sentiment=_sentiment(path, row["sentiment"]))
        for row in _read_rows(path, ("headline", "entity", "sentiment"))
    ]


def finentity_split(text: str, dev_fraction: float = FINENTITY_DEV_FRACTION) -> str:
    """``dev`` or ``test`` for a FinEntity passage: a stable hash of its text (salted, so unrelated to ``_in_dev``)."""
    digest = hashlib.blake2b(("finentity:" + text).encode("utf-8"), digest_size=8).digest()
    return "dev" if int.from_bytes(digest, "big") / 2**64 < dev_fraction else "test"


def finentity(data_dir: Path, split: str = "test") -> list[Example]:
    """FinEntity passages whose entities all share one label (``mixed`` dropped); ``split`` dev, test or all."""
    if split not in ("dev", "test", "all"):
        raise ValueError(f"split must be dev, test or all, not {split!r}")
    path = data_dir / "finentity" / "finentity_sentences.csv"
    return [
        Example(row["text"], sentiment=_sentiment(path, row["label_consensus"]))
        for row in _read_rows(path, ("text", "label_consensus"))
        if row["label_consensus"] != "mixed" and (split == "all" or finentity_split(row["text"]) == split)
    ]


def finentity_spans(data_dir: Path) -> dict[str, list[tuple[int, int]]]:
    """Each FinEntity passage's annotated entity spans (character offsets into its text), for
    ``finsent.model.augment``'s entity swaps. Some published offsets are off by a few characters ("bbott " for
    "Abbott"): a span is kept where it holds the entity's name, else at the name's first occurrence, else
    dropped."""
    path = data_dir / "finentity" / "finentity_entities.csv"
    spans: dict[str, list[tuple[int, int]]] = {}
    for row in _read_rows(path, ("text", "entity", "start", "end")):
        text, name = row["text"], row["entity"].strip()
        try:
            start = int(row["start"])
        except ValueError as err:
            raise DataError(f"{path}: entity offsets must be integers ({err})") from err
        if not name:
            continue
        if text[start : start + len(name)] != name:
            start = text.find(name)
        if start >= 0:
            spans.setdefault(text, []).append((start, start + len(name)))
    return spans


def sentivent_headlines(data_dir: Path) -> list[Example]:
    """SENTiVENT headlines (sentence 0 of each article, all source splits) whose polar expressions agree.

    The text is tokenised as in the source ("Inc . AAL"); BERT's tokenizer splits punctuation anyway.
    """
    path = data_dir / "sentivent" / "sentivent_implicit_sentences.csv"
    return [
        Example(row["sentence"], sentiment=_sentiment(path, row["label_consensus"]))
        for row in _read_rows(path, ("is_title", "sentence", "label_consensus"))
        if row["is_title"] == "1" and row["label_consensus"] != "mixed"
    ]


# Event types -> the project's topic ids, as the sets' PROVENANCE files suggest (their first choice where they offer two).
SENTIVENT_TOPICS: dict[str, int] = {
    **dict.fromkeys(("FinancialReport", "Revenue", "Profit/Loss", "Expense"), 5),  # Earnings
    "Dividend": 4,
    **dict.fromkeys(("Merger/Acquisition", "Investment"), 13),  # M&A | Investments
    "Rating": 0,  # Analyst Update
    "SecurityValue": 19,  # Stock Movement
    "Macroeconomics": 14,
    "Legal": 12,
    "Employment": 17,  # Personnel Change
    "Financing": 3,  # Treasuries | Corporate Debt
    **dict.fromkeys(("Product/Service", "Facility", "Deal", "CSR/Brand", "SalesVolume"), 2),  # Company | Product News
}
SENTIFM_TOPICS: dict[str, int] = {
    **dict.fromkeys(("Profit", "QuarterlyResults", "Turnover", "SalesVolume"), 5),  # Earnings
    "Dividend": 4,
    **dict.fromkeys(("MergerAcquisition", "ShareRepurchase"), 13),  # M&A | Investments
    **dict.fromkeys(("BuyRating", "TargetPrice"), 0),  # Analyst Update
    "Debt": 3,  # Treasuries | Corporate Debt
}


def _event_topics(path: Path, text_column: str, mapping: dict[str, int]) -> list[Example]:
    """Sentences whose event types all map to one project topic (a sentence with none, or with types of several
    topics, is left out); an event type the mapping does not know is a ``DataError``, not a silent drop."""
    out = []
    for row in _read_rows(path, (text_column, "event_types")):
        types = [t.strip() for t in row["event_types"].split(";") if t.strip()]
        unknown = [t for t in types if t not in mapping]
        if unknown:
            raise DataError(f"{path}: event types {unknown} have no topic in the mapping")
        topics = {mapping[t] for t in types}
        if len(topics) == 1:
            out.append(Example(row[text_column], topic=topics.pop()))
    return out


def sentivent_topics(data_dir: Path) -> list[Example]:
    """Topic on news: SENTiVENT sentences (US company news, headlines and body; research only) whose event types map
    to one topic. Tokenised as in the source ("Inc . AAL")."""
    return _event_topics(data_dir / "sentivent" / "sentivent_event_sentences.csv", "text", SENTIVENT_TOPICS)


def sentifm_topics(data_dir: Path) -> list[Example]:
    """Topic on news: SentiFM sentences (Financial Times company news, both of the authors' splits; research only)
    whose event types map to one topic. Tokenised as in the source."""
    return _event_topics(data_dir / "sentifm-events" / "sentifm_event_sentences.csv", "sentence", SENTIFM_TOPICS)


def sentivent_topics_train_part(data_dir: Path) -> list[Example]:
    """SENTiVENT topic sentences a model may train on: the set's training part (``split_heldout``) less every headline
    of the SENTiVENT sentiment set (``sentivent_headlines``), which the news score reads whole: a model that learned a
    headline's topic has read that headline, so it must not be scored on it for sentiment."""
    headlines = sentivent_headlines(data_dir)
    return _untrained(split_heldout("sentivent-topics", sentivent_topics(data_dir))[0], headlines)


@dataclass(frozen=True)
class NewsSet:
    """One news-domain evaluation set: how to load it and which sentiment classes its gold labels use."""

    name: str
    load: Callable[[Path], list[Example]]
    labels: tuple[int, ...]
    source: str
    licence: str
    description: str
    commercial: bool = False  # licence allows commercial use (may train the default model; quote freely)
    scored: bool = True  # counts in the news score (the held-out slices are reported beside it)
    # the training set (``corpus.TRAIN_SETS``) whose training part holds some of these texts, and the result (a news
    # set or the PhraseBank FinBERT test row) of this set's rows that part leaves out: a model that trained on
    # ``trained_on`` is scored on ``heldout`` in this set's place (``report.run``), never on text it learned
    trained_on: str = ""
    heldout: str = ""

    @property
    def binary(self) -> bool:
        return NEU not in self.labels


# The held-out parts (``split_heldout``) of the sets a model trains on: what the report scores them on and what
# pre-training must never read (``evaluation_texts``), named once.
def sp500_heldout(data_dir: Path) -> list[Example]:
    return split_heldout("sp500-posneg", sp500_posneg(data_dir))[1]


def sentfin_heldout(data_dir: Path) -> list[Example]:
    return split_heldout("sentfin-headline", sentfin_headlines(data_dir))[1]


def reuters_heldout(data_dir: Path) -> list[Example]:
    return split_heldout("reuters-topics", reuters_topics(data_dir))[1]


def sentivent_topics_heldout(data_dir: Path) -> list[Example]:
    return split_heldout("sentivent-topics", sentivent_topics(data_dir))[1]


def sentifm_topics_heldout(data_dir: Path) -> list[Example]:
    return split_heldout("sentifm-topics", sentifm_topics(data_dir))[1]


def phrasebank_finbert_test(data_dir: Path) -> list[Example]:
    return finbert_test_split(phrasebank(data_dir, "50Agree"))


def _untrained(examples: list[Example], train_part: list[Example]) -> list[Example]:
    """The rows of a set whose text (up to case and spacing) is not in a training part."""
    trained = {normalised(ex.text) for ex in train_part}
    return [ex for ex in examples if normalised(ex.text) not in trained]


def sentfin_entity_heldout(data_dir: Path) -> list[Example]:
    """SEntFiN (headline, entity) rows of the headlines the SEntFiN cut holds out (``is_heldout``, applied to every
    headline, mixed ones too), minus any whose headline is in the training part up to case: the same 20 % sample of
    headlines as the consensus held-out row, with the whole set's mix of agreeing and mixed headlines. (Taking every
    untrained headline instead would take all the mixed ones, whose entities an entity-blind model cannot all get
    right: a harder set than the one it stands in for.)"""
    held = [ex for ex in sentfin_entities(data_dir) if is_heldout("sentfin-headline", ex.text)]
    return _untrained(held, split_heldout("sentfin-headline", sentfin_headlines(data_dir))[0])


def phrasebank_allagree_heldout(data_dir: Path) -> list[Example]:
    """PhraseBank all-agree sentences outside PhraseBank's training part: those of the FinBERT test split."""
    return _untrained(phrasebank(data_dir, "AllAgree"), phrasebank_train_part(data_dir))


NEWS_SETS: tuple[NewsSet, ...] = (
    NewsSet(
        "sp500-posneg",
        sp500_posneg,
        (NEG, POS),
        "sp500-headlines-posneg/sp500_headlines_posneg.csv",
        "unknown",
        "S&P 500 company headlines, positive / negative only; scored on the 3-way prediction",
        trained_on="sp500-posneg",
        heldout="sp500-posneg-heldout",
    ),
    NewsSet(
        "sentfin-headline",
        sentfin_headlines,
        (NEG, NEU, POS),
        "sentfin/sentfin_headlines.csv",
        "unknown (treat as NC)",
        "SEntFiN headlines, consensus label (mixed dropped)",
        trained_on="sentfin-headline",
        heldout="sentfin-headline-heldout",
    ),
    NewsSet(
        "sentfin-entity",
        sentfin_entities,
        (NEG, NEU, POS),
        "sentfin/sentfin_entities.csv",
        "unknown (treat as NC)",
        "SEntFiN (headline, entity) rows; the headline's prediction for each entity",
        trained_on="sentfin-headline",
        heldout="sentfin-entity-heldout",
    ),
    NewsSet(
        "finentity-test",
        lambda d: finentity(d, "test"),
        (NEG, NEU, POS),
        "finentity/finentity_sentences.csv",
        "ODC-BY 1.0",
        "FinEntity passages, consensus label (mixed dropped), held-out test half (hash split)",
        commercial=True,
    ),
    NewsSet(
        "sentivent-headlines",
        sentivent_headlines,
        (NEG, NEU, POS),
        "sentivent/sentivent_implicit_sentences.csv",
        "unknown (research)",
        "SENTiVENT headlines, consensus of polar expressions (mixed dropped)",
    ),
    NewsSet(
        "phrasebank-50-all",
        lambda d: phrasebank(d, "50Agree"),
        (NEG, NEU, POS),
        "phrasebank/Sentences_50Agree.txt",
        "CC BY-NC-SA 3.0",
        "Financial PhraseBank, >= 50 % annotator agreement, all sentences",
        trained_on="phrasebank-50",
        heldout="phrasebank-50-finbert-test",
    ),
    NewsSet(
        "phrasebank-allagree",
        lambda d: phrasebank(d, "AllAgree"),
        (NEG, NEU, POS),
        "phrasebank/Sentences_AllAgree.txt",
        "CC BY-NC-SA 3.0",
        "Financial PhraseBank, 100 % annotator agreement",
        trained_on="phrasebank-50",
        heldout="phrasebank-allagree-heldout",
    ),
    # The held-out 20 % of each set the research variant trains on: its only fair figures on these sets.
    NewsSet(
        "sp500-posneg-heldout",
        sp500_heldout,
        (NEG, POS),
        "sp500-headlines-posneg/sp500_headlines_posneg.csv",
        "unknown",
        "S&P 500 pos/neg, held-out 20 % (data.is_heldout)",
        scored=False,
    ),
    NewsSet(
        "sentfin-headline-heldout",
        sentfin_heldout,
        (NEG, NEU, POS),
        "sentfin/sentfin_headlines.csv",
        "unknown (treat as NC)",
        "SEntFiN consensus headlines, held-out 20 %",
        scored=False,
    ),
    NewsSet(
        "sentfin-entity-heldout",
        sentfin_entity_heldout,
        (NEG, NEU, POS),
        "sentfin/sentfin_entities.csv",
        "unknown (treat as NC)",
        "SEntFiN (headline, entity) rows of the held-out 20 % of headlines (mixed ones included, as in the whole set)",
        scored=False,
    ),
    NewsSet(
        "phrasebank-allagree-heldout",
        phrasebank_allagree_heldout,
        (NEG, NEU, POS),
        "phrasebank/Sentences_AllAgree.txt",
        "CC BY-NC-SA 3.0",
        "Financial PhraseBank all-agree sentences outside PhraseBank's training part (the FinBERT test split's)",
        scored=False,
    ),
)


# ----------------------------------------------------------------------------- held-out splits and topic on news

HELDOUT_FRACTION = 0.2  # of every non-Twitter set that any model trains on; reported, never selected on


def is_heldout(set_name: str, text: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """The fixed held-out part of a set: a hash of (set, text), so it is stable across runs and machines,
    identical texts fall on the same side, and the cut of one set is unrelated to any other's."""
    digest = hashlib.blake2b(f"heldout:{set_name}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def in_news_dev(set_name: str, text: str, fraction: float) -> bool:
    """The news dev slice of a set's training part (``TrainConfig.news_dev_fraction``): a hash of (set, text) under
    its own salt, so it is stable across runs, independent of the held-out cut, and identical texts fall together.
    Why it exists: models are chosen on dev only, and a Twitter dev slice cannot see how a model reads news."""
    digest = hashlib.blake2b(f"newsdev:{set_name}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def split_heldout(set_name: str, examples: list[Example]) -> tuple[list[Example], list[Example]]:
    """(train part, held-out part) of a set. The cut hashes the text as given; a held-out text that is the same as
    a train-part text up to case and spacing (``normalised``) is dropped from the held-out part, so that no held-out
    figure is taken on a text the model trained on (12 of S&P 500's 1,073 held-out rows, 1 of SEntFiN's, 2 of
    Reuters')."""
    held = [is_heldout(set_name, ex.text) for ex in examples]
    train = [ex for ex, h in zip(examples, held) if not h]
    trained = {normalised(ex.text) for ex in train}
    return train, [ex for ex, h in zip(examples, held) if h and normalised(ex.text) not in trained]


def finbert_test_split(examples: list[Example], seed: int = 42, fraction: float = 0.2) -> list[Example]:
    """The FinBERT protocol's 20 % test split of PhraseBank (fixed seed), for a like-for-like comparison;
    it is PhraseBank's held-out part (the research variant trains on the rest)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in order[: int(len(order) * fraction)]]


def phrasebank_train_part(data_dir: Path) -> list[Example]:
    """PhraseBank 50 % minus the FinBERT test split (by normalised text, so duplicates cannot leak across: builds
    before session 21 compared exact text and trained on 2 of the test split's 969 sentences in another casing)."""
    examples = phrasebank(data_dir, "50Agree")
    test = {normalised(ex.text) for ex in finbert_test_split(examples)}
    return [ex for ex in examples if normalised(ex.text) not in test]


def reuters_topics(data_dir: Path) -> list[Example]:
    """Reuters-21578 headlines (research only) whose codes all map to one project topic
    (``suggested_topic_id``, see its PROVENANCE.md); the titles are upper case, which the uncased
    tokenizer does not see."""
    path = data_dir / "reuters21578-topics" / "reuters21578_titles.csv"
    return [
        Example(row["title"], topic=int(row["suggested_topic_id"]))
        for row in _read_rows(path, ("title", "suggested_topic_id"))
        if row["suggested_topic_id"].strip()
    ]


# ----------------------------------------------------------------------------- unlabelled news (self-training)


def _detokenise_reuters(text: str) -> str:
    """Undo the uploader's normalisation of the Reuters copy (PROVENANCE.md): "boycott : WSJ" -> "boycott: WSJ"."""
    for spaced, plain in ((" : ", ": "), (" ?", "?"), (" ,", ","), (" !", "!"), (" , 000", ",000")):
        text = text.replace(spaced, plain)
    return re.sub(r"\bUSD (?=\d)", "$", text)  # "USD 600" was "$600"; "the USD rallies" stays


def normalised(text: str) -> str:
    """Lower case, letters and digits only: the key under which two copies of a headline compare equal."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


def news_unlabelled(data_dir: Path) -> list[Example]:
    """The unlabelled CNBC, Guardian and Reuters headlines (``financial-news-headlines-full``, licence unknown:
    research only), once each, minus every headline that is also a text of an evaluation set (the Twitter
    ``valid`` files and all ``NEWS_SETS``) or of the Twitter dev slice that selects and calibrates a model (8 of the
    headlines were), so that self-training never sees a test or selection text, not even unlabelled."""
    base = data_dir / "financial-news-headlines-full"
    texts = [row["headline"] for row in _read_rows(base / "cnbc_headlines.csv", ("headline",))]
    texts += [row["headline"] for row in _read_rows(base / "guardian_headlines.csv", ("headline",))]
    texts += [
        _detokenise_reuters(row["headline_normalised"])
        for row in _read_rows(base / "reuters_headlines_normalised.csv", ("headline_normalised",))
    ]
    evaluated = {normalised(ex.text) for ex in twitter_topic(data_dir, "valid") + twitter_sentiment(data_dir, "valid")}
    try:
        evaluated |= {normalised(ex.text) for ex in load_twitter(data_dir).dev}
    except MissingData:  # no Twitter training files: no dev slice to keep apart
        pass
    for news_set in NEWS_SETS:
        evaluated |= {normalised(ex.text) for ex in news_set.load(data_dir)}
    seen: set[str] = set()
    out = []
    for text in (t.strip() for t in texts):
        key = normalised(text)
        if key and key not in seen and key not in evaluated:
            seen.add(key)
            out.append(Example(text))
    return out


def evaluation_texts(data_dir: Path, dev_fraction: float = 0.1) -> set[str]:
    """Every text a fair figure is taken on, or a model selected on, normalised: the Twitter ``valid`` sets and
    the dev slice, the held-out parts of the sets a model trains on (S&P 500, SEntFiN, Reuters, PhraseBank's FinBERT
    test split), FinEntity's test half, SENTiVENT and SentiFM. Reading text without labels (``model.pretrain``) leaves them
    out too: a model must not have read a test text in any form. A news set absent from ``data_dir`` is skipped:
    what is not there cannot be read either (the unlabelled headlines need every news set to exclude them)."""
    texts = twitter_topic(data_dir, "valid") + twitter_sentiment(data_dir, "valid")
    texts += load_twitter(data_dir, dev_fraction).dev
    parts: list[Callable[[Path], list[Example]]] = [
        sp500_heldout,
        sentfin_heldout,
        reuters_heldout,
        phrasebank_finbert_test,
        lambda d: finentity(d, "test"),
        sentivent_headlines,
        sentivent_topics,
        sentifm_topics,
    ]
    for part in parts:
        try:
            texts += part(data_dir)
        except MissingData:
            continue
    return {normalised(ex.text) for ex in texts}
