import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from factories import news_item, surge_alert

from finsent.labels import SENTIMENT_LABELS, TOPIC_LABELS
from finsent.records import (
    SCHEMA_VERSION,
    DeadLetter,
    Feedback,
    NewsItem,
    RecordError,
    ScoredItem,
    SurgeAlert,
    UnsupportedSchemaVersion,
    WindowStat,
)

T0 = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)


def news(**kw) -> NewsItem:
    return news_item(
        **{
            "id": "n1",
            "title": "Fed hikes rates",
            "source": "test",
            "at": T0,
            "fetched": T0 + timedelta(seconds=5),
            **kw,
        }
    )


def scored() -> ScoredItem:
    return ScoredItem(
        item=news(tickers=("AAPL",)),
        topic="Fed | Central Banks",
        topic_probs={"Fed | Central Banks": 0.9, "Macro": 0.1},
        sentiment="negative",
        sentiment_probs={"negative": 0.7, "neutral": 0.2, "positive": 0.1},
        model="finsent-minilm@1",
        scored_at=T0 + timedelta(seconds=6),
        latency_s=6.0,
    )


def alert() -> SurgeAlert:
    return surge_alert(at=T0)


ALL = [
    news(),
    scored(),
    WindowStat(
        key="all", start=T0, end=T0 + timedelta(minutes=5), count=3, negative=1, neutral=1, positive=1, mean_score=0.0
    ),
    alert(),
    Feedback(item_id="n1", text="Fed hikes rates", sentiment="negative", who="ana", at=T0),
    DeadLetter.of(topic="finsent.news.raw", partition=2, offset=7, key=b"k", value=b"\xff\x00bad", error="boom"),
]


@pytest.mark.parametrize("record", ALL, ids=lambda r: type(r).__name__)
def test_round_trip_is_lossless_and_compact(record):
    raw = record.to_json()
    assert b" " not in raw.replace(b"Fed hikes rates", b"").replace(b"Fed | Central Banks", b"")
    assert type(record).from_json(raw) == record
    assert json.loads(raw)["v"] == SCHEMA_VERSION


def test_datetimes_are_normalised_to_utc():
    item = news(published=datetime(2024, 3, 1, 16, 30, tzinfo=timezone(timedelta(hours=2))))
    assert item.published == T0 and item.published.tzinfo == UTC
    assert b'"published":"2024-03-01T14:30:00Z"' in item.to_json()


@pytest.mark.parametrize("field", ["published", "fetched"])
@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:00-14:00"])
def test_a_time_out_of_range_in_utc_is_a_record_error_not_an_overflow(field, at):
    """Valid as written, but astimezone(UTC) overflows: the record is invalid (a dead letter), never an
    OverflowError that escapes the worker's decoding."""
    doc = json.loads(news().to_json())
    doc[field] = at
    with pytest.raises(RecordError, match=f"{field}: .*out of datetime's range in UTC"):
        NewsItem.from_json(json.dumps(doc))


def test_naive_datetime_rejected():
    doc = json.loads(news().to_json())
    doc["published"] = "2024-03-01T14:30:00"
    with pytest.raises(RecordError, match="published"):
        NewsItem.from_json(json.dumps(doc))


def test_newer_schema_version_rejected_clearly():
    doc = json.loads(scored().to_json())
    doc["v"] = SCHEMA_VERSION + 1
    with pytest.raises(UnsupportedSchemaVersion, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        ScoredItem.from_json(json.dumps(doc))


def test_version_1_records_are_still_read():
    doc = json.loads(scored().to_json())
    doc["v"] = 1
    assert ScoredItem.from_json(json.dumps(doc)).item.published_clamped is None


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d.update(title=""), "title"),
        (lambda d: d.update(published_inferred="yes"), "published_inferred"),
        (lambda d: d.pop("source"), "source"),
        (lambda d: d.update(v=0), "v"),
    ],
)
def test_bad_news_items_rejected_naming_the_field(mutate, field):
    doc = json.loads(news().to_json())
    mutate(doc)
    with pytest.raises(RecordError, match=field):
        NewsItem.from_json(json.dumps(doc))


def test_garbage_bytes_rejected():
    with pytest.raises(RecordError, match="Invalid JSON"):
        NewsItem.from_json(b"\xff\xfe not json")


def test_scored_item_rejects_unknown_labels():
    doc = json.loads(scored().to_json())
    doc["topic"] = "Sports"
    with pytest.raises(RecordError, match="unknown topic"):
        ScoredItem.from_json(json.dumps(doc))
    doc = json.loads(scored().to_json())
    doc["sentiment_probs"] = {"bad": 1.0}
    with pytest.raises(RecordError, match="sentiment_probs"):
        ScoredItem.from_json(json.dumps(doc))


def test_scored_item_score_and_labels():
    s = scored()
    assert s.score == pytest.approx(-0.6)
    assert len(TOPIC_LABELS) == 20 and SENTIMENT_LABELS == ("negative", "neutral", "positive")


def test_window_stat_counts_must_add_up():
    with pytest.raises(ValueError, match="must equal count"):
        WindowStat(
            key="all", start=T0, end=T0 + timedelta(minutes=1), count=3, negative=1, neutral=1, positive=0, mean_score=0
        )
    w = WindowStat(
        key="all", start=T0, end=T0 + timedelta(minutes=1), count=4, negative=3, neutral=1, positive=0, mean_score=-0.5
    )
    assert w.negative_share == 0.75


def test_feedback_must_correct_something():
    with pytest.raises(ValueError, match="must correct"):
        Feedback(item_id="n1", text="x", who="ana", at=T0)


def test_dead_letter_keeps_original_bytes():
    dl = DeadLetter.from_json(ALL[-1].to_json())
    assert dl.value == b"\xff\x00bad" and dl.offset == 7
    assert dl.truncated is None and dl.original_size is None and dl.original_sha256 is None


def test_a_dead_letter_of_a_huge_value_is_truncated_with_its_size_and_sha256():
    """A 900 KiB poison value would make a letter (base64: 1.2 MB) over the broker's 1 MiB limit: the letter
    keeps the first MAX_VALUE_BYTES and says how big the original was and what its SHA-256 is."""
    value = bytes(range(256)) * (900 * 4)  # 900 KiB
    letter = DeadLetter.of(topic="raw", partition=0, offset=3, key=b"k" * 10_000, value=value, error="too big")
    assert letter.truncated is True and letter.original_size == len(value) == 900 * 1024
    assert letter.original_sha256 == hashlib.sha256(value).hexdigest()
    assert letter.value == value[: DeadLetter.MAX_VALUE_BYTES]
    assert base64.b64decode(letter.key_b64) == b"k" * 4096  # the key is cut too
    raw = letter.to_json()
    assert len(raw) < 400 * 1024  # deliverable under Kafka's default 1 MiB message limit
    assert DeadLetter.from_json(raw) == letter


def test_a_dead_letters_kafka_key_is_the_key_up_to_4_kib_else_its_sha256():
    """The original key as the letter's Kafka key once made a letter of a record with a 720 KiB key too large for
    the broker, refused for ever."""
    assert DeadLetter.kafka_key(None) is None
    assert DeadLetter.kafka_key(b"k" * 4096) == b"k" * 4096
    huge = b"k" * (720 * 1024)
    assert DeadLetter.kafka_key(huge) == b"sha256:" + hashlib.sha256(huge).hexdigest().encode()
    assert DeadLetter.kafka_key(huge + b"x") != DeadLetter.kafka_key(huge)


def test_a_dead_letter_refused_as_too_large_is_cut_until_nothing_is_left_to_cut():
    """A broker whose limit is lower than expected refuses even a bounded letter: it is cut further, a quarter of
    the value at a time, then the key and error, and still names the original's size and SHA-256."""
    value = bytes(range(256)) * 1024  # 256 KiB: kept whole at first
    letter = DeadLetter.of(topic="raw", partition=0, offset=3, key=b"k" * 10_000, value=value, error="e" * 4000)
    sizes = []
    while (smaller := letter.smaller()) is not None:
        assert len(smaller.to_json()) < len(letter.to_json())
        assert smaller.truncated is True and smaller.original_size == len(value)
        assert smaller.original_sha256 == hashlib.sha256(value).hexdigest()
        assert value.startswith(smaller.value)
        letter = smaller
        sizes.append(len(letter.to_json()))
    assert len(sizes) < 12 and sizes[-1] < 1024
    assert letter.value == b"" and len(letter.error) == 256 and base64.b64decode(letter.key_b64) == b"k" * 256
    assert DeadLetter.from_json(letter.to_json()) == letter


def test_a_dead_letter_at_the_limit_is_kept_whole():
    value = b"x" * DeadLetter.MAX_VALUE_BYTES
    letter = DeadLetter.of(topic="raw", partition=0, offset=3, key=None, value=value, error="e")
    assert letter.value == value and letter.truncated is None and letter.original_size is None
    cut = DeadLetter.of(topic="raw", partition=0, offset=3, key=None, value=value + b"y", error="e")
    assert cut.truncated is True and cut.original_size == len(value) + 1 and cut.value == value


def test_tickers_upper_cased_and_deduplicated():
    assert news(tickers=["aapl", "AAPL", "msft"]).tickers == ("AAPL", "MSFT")
    assert news(tickers=["", "  ", " xom "]).tickers == ("XOM",)  # a blank names no ticker (was a key "ticker:")
