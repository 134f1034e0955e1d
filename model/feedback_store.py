"""The analysts' corrections on disk: one JSON-lines file, appended to by the web API, read by the review
queue, the stats and the fine-tune.

Kept apart from ``feedback`` (the fine-tune) because the web API reads and appends on every request of the
review loop: importing the fine-tune would import torch, and doing that inside a request held the API's event
loop for seconds on a busy machine (every other request, the event stream included, waited behind it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from finsent.errors import RecordError
from finsent.files import append_lines
from finsent.records import Feedback

log = logging.getLogger("finsent.model.feedback")


def read_store(path: Path) -> tuple[list[Feedback], int]:
    """Feedback records from a JSON-lines store, one per item. Returns (records, bad lines).

    Each head keeps its own newest correction: the review queue corrects sentiment only and the row's button may
    correct topic only, so "the newest record wins" lost the first of two such corrections of one headline (its
    topic fix vanished from the stats and the fine-tune the moment its sentiment was fixed). A record names the head
    it corrects; a head it leaves ``None`` is not corrected back. Who, when and the comment are the newest record's.

    Read as bytes and decoded line by line: a crash mid-append leaves a line cut inside a UTF-8 sequence, and
    decoding the whole file at once lost every good line to that one byte (the fine-tune stopped with a traceback,
    the API's stats and review queue answered 500). Such a line is a bad line like any other, counted and skipped.
    Raises FileNotFoundError when there is no store (the API reads that as no corrections yet)."""
    latest: dict[str, Feedback] = {}
    topic: dict[str, Feedback] = {}
    sentiment: dict[str, Feedback] = {}
    bad = 0
    if not path.exists():
        raise FileNotFoundError(f"no feedback store at {path}")
    for n, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            fb = Feedback.from_json(raw.decode("utf-8"))
        except (UnicodeDecodeError, RecordError) as err:
            bad += 1
            log.warning("bad feedback line skipped", extra={"line": n, "error": str(err)[:300]})
            continue
        for newest, corrects in ((latest, True), (topic, fb.topic is not None), (sentiment, fb.sentiment is not None)):
            if corrects and (fb.item_id not in newest or fb.at >= newest[fb.item_id].at):
                newest[fb.item_id] = fb
    return [_merged(fb, topic.get(item), sentiment.get(item)) for item, fb in latest.items()], bad


def _merged(newest: Feedback, topic: Feedback | None, sentiment: Feedback | None) -> Feedback:
    """``newest`` with each head's newest correction (and what the model had said for that head)."""
    return newest.model_copy(
        update={
            "topic": topic.topic if topic else None,
            "model_topic": topic.model_topic if topic else newest.model_topic,
            "sentiment": sentiment.sentiment if sentiment else None,
            "model_sentiment": sentiment.model_sentiment if sentiment else newest.model_sentiment,
        }
    )


def append(path: Path, feedback: Feedback) -> None:
    """One correction, on disk (fsynced) when this returns; on a full disk ``OSError`` and the store unchanged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    append_lines(path, feedback.to_json() + b"\n")
