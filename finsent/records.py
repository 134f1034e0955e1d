"""Records that cross a process boundary (Kafka topics, archive, audit log, HTTP).

Every record carries a schema version ``v``. A reader accepts its own version and older ones it
knows how to read; a record written by a *newer* finsent is rejected with
:class:`UnsupportedSchemaVersion` instead of being half-understood. Datetimes must carry a timezone
and are normalised to UTC. Validation is strict (no silent coercion of ``"3"`` to ``3``) and unknown
fields are refused, so a producer bug shows up at the first consumer rather than in a dashboard.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
import unicodedata
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from finsent.errors import RecordError, RestorePointError, UnsupportedSchemaVersion
from finsent.labels import SENTIMENT_LABELS, TOPIC_LABELS

# 2: NewsItem.published_clamped, WindowStat.revision, SurgeAlert.trigger/retracted, DeadLetter
#    truncation fields. Version-1 records are still read.
SCHEMA_VERSION = 2


def _utc(v: datetime) -> datetime:
    """The datetime in UTC; a ValueError (which pydantic reports as a validation error) when it has none.

    An aware time at the edge of datetime's range, e.g. ``0001-01-01T00:00+14:00`` or
    ``9999-12-31T23:59-14:00``, is valid as written but not representable in UTC: ``astimezone`` raises
    OverflowError, which is no ValueError, so pydantic let it escape the record's validation and a single
    such raw record crash-looped the worker. As a ValueError it makes the record invalid (a dead letter)."""
    try:
        return v.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{v.isoformat()} is out of datetime's range in UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Sentiment = Literal["negative", "neutral", "positive"]


# Who did something (an analyst's correction, an action on an alert case): a name, not blanks, which
# would stand in the audit trail as nobody.
def _visible(name: str) -> str:
    """At least one character a reader sees: a zero-width space or a NUL is no one, as blanks are not."""
    if not any(unicodedata.category(ch)[0] not in "CZ" for ch in name):
        raise ValueError("a name needs a visible character")
    return name


PersonName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), AfterValidator(_visible)
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Record(BaseModel):
    """Base: strict, frozen, versioned, compact JSON.

    Floats must be finite: JSON has no NaN or infinity (``to_json`` wrote them as ``null``, which ``from_json``
    then refused), so a record holding one could be written but never read back."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)
    v: int = SCHEMA_VERSION
    SCHEMA: ClassVar[int] = SCHEMA_VERSION

    @field_validator("v")
    @classmethod
    def _check_version(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"schema version must be a positive integer, got {v!r}")
        if v > cls.SCHEMA:
            raise UnsupportedSchemaVersion(
                f"{cls.__name__} schema version {v} is newer than this finsent understands "
                f"(max {cls.SCHEMA}); upgrade finsent to read it"
            )
        return v

    def to_json(self) -> bytes:
        """Compact JSON (no whitespace, None fields left out)."""
        return self.model_dump_json(exclude_none=True).encode("utf-8")

    def to_dict(self) -> dict[str, Any]:
        """What ``to_json`` writes, as plain JSON types (for embedding a record in a larger document)."""
        return self.model_dump(mode="json", exclude_none=True)

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        try:
            return cls.model_validate_json(data)
        except ValidationError as err:
            for e in err.errors():
                ctx_err = (e.get("ctx") or {}).get("error")
                if isinstance(ctx_err, UnsupportedSchemaVersion):
                    raise ctx_err from None
            raise RecordError(f"invalid {cls.__name__}: {_short(err)}") from None


def _short(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "(record)"
        parts.append(f"{loc}: {e['msg']}")
    more = err.error_count() - 5
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


class NewsItem(Record):
    """One headline as ingested: the unit that flows through ``finsent.news.raw``."""

    id: str = Field(min_length=1, max_length=200)
    title: str = Field(min_length=1, max_length=2000)
    summary: str = Field(default="", max_length=20000)
    url: str | None = Field(default=None, max_length=4000)
    source: str = Field(min_length=1, max_length=200)
    published: UtcDatetime
    fetched: UtcDatetime
    published_inferred: bool = False  # True: no usable publish time in the feed, ``fetched`` used instead
    # True: the source's publish time lay too far ahead of the fetch time and was clamped to it
    published_clamped: bool | None = None
    tickers: tuple[str, ...] = Field(default=(), strict=False)
    tags: tuple[str, ...] = Field(default=(), strict=False)
    language: str | None = Field(default=None, max_length=16)

    @field_validator("tickers")
    @classmethod
    def _upper(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        """Upper case, once each; a blank one names no ticker (it made a window key ``ticker:``) and is left out."""
        return tuple(dict.fromkeys(t.strip().upper() for t in v if t.strip()))


def checked_item(
    item: NewsItem, now: datetime, future_tolerance_s: float, max_tickers: int
) -> tuple[NewsItem, list[str]]:
    """The item as the windows may count it, and what was corrected (``"clamped"``, ``"tickers_capped"``).

    The edge check of event time, shared by ingest, import, the worker and the backtest (a record can reach the raw
    topic from any producer): a publish time more than ``future_tolerance_s`` ahead of the fetch time is
    replaced by the fetch time, and a fetch time ahead of ``now`` by more than the tolerance by ``now``,
    so no record can drag the watermark into the future. More than ``max_tickers`` tickers is spam:
    the first ``max_tickers`` are kept.
    """
    fixes: list[str] = []
    update: dict[str, Any] = {}
    limit = timedelta(seconds=future_tolerance_s)
    fetched = item.fetched
    if fetched > now + limit:
        fetched = now
        update["fetched"] = now
    if item.published > fetched + limit:
        update["published"] = fetched
    if update.get("published") is not None or item.published > now + limit:
        update["published"] = min(update.get("published", item.published), fetched)
        update["published_clamped"] = True
        fixes.append("clamped")
    if len(item.tickers) > max_tickers:
        update["tickers"] = item.tickers[:max_tickers]
        fixes.append("tickers_capped")
    return (item.model_copy(update=update) if update else item), fixes


class ScoredItem(Record):
    """A NewsItem with the classifier's verdict: the unit of ``finsent.news.scored``."""

    item: NewsItem
    topic: str
    topic_probs: dict[str, Probability]
    sentiment: Sentiment
    sentiment_probs: dict[str, Probability]
    model: str = Field(min_length=1)  # "name@version"
    scored_at: UtcDatetime
    latency_s: float = Field(ge=0)  # published -> scored; from the event's own clock
    flag: str | None = None  # set when the text could not be classified normally (e.g. "empty")

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if v not in TOPIC_LABELS:
            raise ValueError(f"unknown topic {v!r}")
        return v

    @field_validator("sentiment_probs")
    @classmethod
    def _sent_keys(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != set(SENTIMENT_LABELS):
            raise ValueError(f"sentiment_probs keys must be {SENTIMENT_LABELS}, got {sorted(v)}")
        return v

    @property
    def score(self) -> float:
        """Mean-sentiment contribution: p(positive) - p(negative), in [-1, 1]."""
        return self.sentiment_probs["positive"] - self.sentiment_probs["negative"]


class WindowStat(Record):
    """Aggregate of one rolling window for one dimension key (``all``, ``topic:…``, ``ticker:…``)."""

    key: str = Field(min_length=1)
    start: UtcDatetime
    end: UtcDatetime
    count: int = Field(ge=0)
    negative: int = Field(ge=0)
    neutral: int = Field(ge=0)
    positive: int = Field(ge=0)
    mean_score: float = Field(ge=-1.0, le=1.0)
    # The window's item count when published (older builds: the late items counted after the on-time result).
    # The same (key, start, end) may be published several times (late items, a restart's replay): consumers
    # keep the highest revision, which is the most complete, and the same content gets the same number.
    revision: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if self.negative + self.neutral + self.positive != self.count:
            raise ValueError("negative + neutral + positive must equal count")
        return self

    @property
    def negative_share(self) -> float:
        return self.negative / self.count if self.count else 0.0

    @property
    def end_s(self) -> float:
        return self.end.timestamp()


class Evidence(Record):
    """A headline behind an alert, as compliance will see it."""

    item_id: str
    title: str
    source: str
    url: str | None = None
    published: UtcDatetime
    p_negative: Probability


class SurgeAlert(Record):
    """A negative-sentiment surge (or its end) for one key, with the headlines behind it."""

    alert_id: str = Field(min_length=1)  # stable for one surge: firing and resolved share it
    key: str = Field(min_length=1)
    state: Literal["firing", "resolved"]
    severity: Literal["warning", "critical"]
    window_start: UtcDatetime
    window_end: UtcDatetime
    count: int = Field(ge=0)
    negative: int = Field(ge=0)
    negative_share: Probability
    zscore: float
    baseline_mean: float
    baseline_std: float = Field(ge=0)
    raised_at: UtcDatetime
    evidence: tuple[Evidence, ...] = Field(default=(), strict=False)
    # early: judged on the still-open window (provisional); close: on the complete window; late: a
    # decision revised because late items changed a window already judged.
    trigger: Literal["early", "close", "late"] = "close"
    # The alerts topic is a changelog of transitions keyed by (alert_id, state, severity): the newest
    # record of a transition is the truth, and ``retracted`` withdraws it (a provisional firing the
    # complete window did not confirm, or a decision that late items undid).
    retracted: bool | None = None

    @property
    def transition(self) -> tuple[str, str, str]:
        return (self.alert_id, self.state, self.severity)


class Feedback(Record):
    """An analyst's correction of one scored item."""

    item_id: str = Field(min_length=1)
    text: str = Field(min_length=1, max_length=2000)
    topic: str | None = None
    sentiment: Sentiment | None = None
    who: PersonName
    comment: str = Field(default="", max_length=2000)
    at: UtcDatetime
    model: str | None = None  # the version whose prediction was corrected
    # What that model said, so agreement can be counted from the store alone (after restarts, for old items).
    model_topic: str | None = None
    model_sentiment: Sentiment | None = None

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str | None) -> str | None:
        if v is not None and v not in TOPIC_LABELS:
            raise ValueError(f"unknown topic {v!r}")
        return v

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.topic is None and self.sentiment is None:
            raise ValueError("feedback must correct topic, sentiment or both")
        return self


class DeadLetter(Record):
    """A record the stream could not process, kept byte-for-byte with why and where it came from.

    A value too large to fit a dead letter under the broker's message limit is cut to its first
    ``MAX_VALUE_BYTES``, with its original size and SHA-256 kept: the letter is always deliverable, so
    a huge poison record can never be retried for ever. The original key is kept in the letter up to
    ``MAX_KEY_BYTES``; the letter's own Kafka key is bounded too (``kafka_key``): a record with a 720 KiB key
    (the broker accepts up to its 1 MiB message limit) once made a letter over the limit, refused for ever.
    A broker with a lower limit than expected refuses even that: ``smaller()`` cuts the letter further.
    """

    MAX_VALUE_BYTES: ClassVar[int] = 256 * 1024  # base64 makes it ~342 KiB, far below Kafka's 1 MiB default
    MAX_KEY_BYTES: ClassVar[int] = 4096

    source_topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    key_b64: str | None = None
    value_b64: str
    error: str = Field(max_length=4000)
    at: UtcDatetime
    truncated: bool | None = None  # True: value_b64 holds only the first MAX_VALUE_BYTES of the value
    original_size: int | None = Field(default=None, ge=0)
    original_sha256: str | None = None

    @classmethod
    def of(cls, *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes, error: str) -> DeadLetter:
        cut = len(value) > cls.MAX_VALUE_BYTES
        return cls(
            source_topic=topic,
            partition=partition,
            offset=offset,
            key_b64=base64.b64encode(key[: cls.MAX_KEY_BYTES]).decode() if key is not None else None,
            value_b64=base64.b64encode(value[: cls.MAX_VALUE_BYTES]).decode(),
            error=error[:4000],
            at=utcnow(),
            truncated=True if cut else None,
            original_size=len(value) if cut else None,
            original_sha256=hashlib.sha256(value).hexdigest() if cut else None,
        )

    @classmethod
    def kafka_key(cls, key: bytes | None) -> bytes | None:
        """The dead letter's Kafka key for a record keyed ``key``: the key itself up to ``MAX_KEY_BYTES``, else
        ``b"sha256:"`` and the hex SHA-256 of the whole key (71 bytes). Still one key per original key, so the
        letters of one key land in one partition, and the letter stays far below the broker's message limit."""
        if key is None or len(key) <= cls.MAX_KEY_BYTES:
            return key
        return b"sha256:" + hashlib.sha256(key).hexdigest().encode()

    def smaller(self) -> DeadLetter | None:
        """This letter with a quarter of the value it keeps (at last none, and the key and error cut to 256
        bytes each), for a broker that refused it as too large; None when nothing is left to cut. The original's
        size and SHA-256 stay (computed now if this letter still kept the whole value), so the letter still
        names the record it stands for."""
        kept = self.value
        key = base64.b64decode(self.key_b64) if self.key_b64 is not None else None
        if not kept and (key is None or len(key) <= 256) and len(self.error) <= 256:
            return None
        cut = kept[: len(kept) // 4] if len(kept) > 1024 else b""
        return self.model_copy(
            update={
                "value_b64": base64.b64encode(cut).decode(),
                "key_b64": base64.b64encode(key[:256]).decode() if key is not None and not cut else self.key_b64,
                "error": self.error[:256] if not cut else self.error,
                "truncated": True,
                "original_size": self.original_size if self.truncated else len(kept),
                "original_sha256": self.original_sha256 if self.truncated else hashlib.sha256(kept).hexdigest(),
            }
        )

    @property
    def value(self) -> bytes:
        return base64.b64decode(self.value_b64)


# -- a classifier's answer ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Prediction:
    """One text's labels and calibrated probabilities: what the classifier answers, what the backtest's score
    cache keeps, and what a ScoredItem is made from. Not a Kafka record itself (no schema version)."""

    topic: str
    topic_probs: dict[str, float]
    sentiment: Sentiment
    sentiment_probs: dict[str, float]
    model: str  # "name@version"
    flag: str | None = None

    @property
    def score(self) -> float:
        """p(positive) - p(negative), in [-1, 1]."""
        return self.sentiment_probs["positive"] - self.sentiment_probs["negative"]


# -- the aggregator's restore point --------------------------------------------------------------------------
# Its own version, separate from SCHEMA_VERSION: it changes when the detector's state layout does, and a
# restore point of another version is skipped (the aggregator rebuilds from the scored log), never mis-read.
RESTORE_POINT_VERSION = 2
COMPRESSED = b"Z"  # zlib-compressed JSON follows: 100k keys of detector state stay far below Kafka's 1 MiB


@dataclass
class RestorePoint:
    """The aggregator's state on the checkpoints topic: where to replay from, what was published, and the
    surge detector as of the oldest window late items may still revise (``detector`` is
    ``Aggregation.snapshot()``; the detector owns that layout). Plain JSON, zlib-compressed."""

    replay_from: dict[int, int]
    emitted_until: float
    detector: dict[str, Any]
    positions: dict[int, int] = field(default_factory=dict)  # per partition: everything before was processed
    written_at: float = field(default_factory=time.time)
    # Per alerts-topic partition: the offset after the last alert acknowledged when this was written; what lies
    # past it was published after this restore point. None: written by a build that did not record it.
    alerts_from: dict[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": RESTORE_POINT_VERSION,
            "replay_from": {str(p): o for p, o in self.replay_from.items()},
            "positions": {str(p): o for p, o in self.positions.items()},
            "emitted_until": _finite(self.emitted_until),
            "detector": self.detector,
            "written_at": self.written_at,
            **({} if self.alerts_from is None else {"alerts_from": {str(p): o for p, o in self.alerts_from.items()}}),
        }

    def to_json(self) -> bytes:
        body = json.dumps(self.to_dict(), separators=(",", ":")).encode()
        return COMPRESSED + zlib.compress(body, 6)

    @classmethod
    def from_json(cls, data: bytes | None) -> RestorePoint:
        """Raises RestorePointError (a ValueError) for anything that is not a restore point of this version."""
        return cls.from_dict(_decode_restore_point(data))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RestorePoint:
        if raw.get("v") != RESTORE_POINT_VERSION:
            raise RestorePointError("version", f"restore point version {raw.get('v')!r} is not {RESTORE_POINT_VERSION}")
        try:
            until = raw["emitted_until"]
            if not isinstance(raw["detector"], dict):
                raise TypeError("detector is not an object")
            return cls(
                _offsets(raw["replay_from"]),
                -math.inf if until is None else float(until),
                raw["detector"],
                _offsets(raw.get("positions", {})),
                float(raw.get("written_at", 0.0)),
                None if raw.get("alerts_from") is None else _offsets(raw["alerts_from"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise RestorePointError("unreadable", f"restore point fields: {type(err).__name__}: {err}") from None

    def poisoned(self, now: float, tolerance_s: float) -> bool:
        """A restore point from before the edge checks could hold event times in the future."""
        return self.emitted_until > now + tolerance_s


def _decode_restore_point(data: bytes | None) -> dict[str, Any]:
    """The JSON object in a record's value (zlib-compressed or not); RestorePointError("unreadable") otherwise."""
    if data is None:
        raise RestorePointError("unreadable", "not a restore point: a tombstone (no value)")
    try:
        raw = json.loads(zlib.decompress(data[1:]) if data[:1] == COMPRESSED else data)
    except (ValueError, zlib.error) as err:  # ValueError: bad JSON or UTF-8
        raise RestorePointError("unreadable", f"not a restore point: {type(err).__name__}: {err}") from None
    if not isinstance(raw, dict):
        raise RestorePointError("unreadable", f"not a restore point: a JSON {type(raw).__name__}")
    return raw


def _offsets(raw: dict[str, Any]) -> dict[int, int]:
    return {int(p): int(o) for p, o in raw.items()}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
