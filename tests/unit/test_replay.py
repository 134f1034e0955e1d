"""``finsent replay`` resumes by position in the archive's (event time, id) order, not by count: an archive
that gained part files between the runs must not make the resumed replay skip items it never sent."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from factories import news_item

from finsent.errors import BrokerUnavailable, ConfigError
from finsent.ingest.archive import Archive
from finsent.ingest.replay import replay, state_path
from finsent.records import NewsItem

T0 = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)


def item(name: str, minutes: float) -> NewsItem:
    return news_item(name, f"headline {name}", at=T0 + timedelta(minutes=minutes))


class Broker:
    """Acknowledges everything until ``fail_after`` items were sent, then nothing (an outage)."""

    def __init__(self, fail_after: int | None = None):
        self.sent: list[str] = []
        self.fail_after = fail_after

    def __call__(self, batch: list[NewsItem]) -> list[NewsItem]:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            return []
        self.sent.extend(i.id for i in batch)
        return batch


def test_resume_after_the_archive_gained_earlier_items_skips_nothing(tmp_path):
    archive = Archive(tmp_path / "archive")
    # day 1 (May 2) and day 2 (May 3): a minute apart, 20 items on each
    archive.append([item(f"a{i:02d}", i) for i in range(20)] + [item(f"b{i:02d}", 24 * 60 + i) for i in range(20)])
    state = state_path(tmp_path / "state", None, None, "raw")
    first = Broker(fail_after=30)
    with pytest.raises(BrokerUnavailable, match="not acknowledged"):  # a FinsentError: one line, exit 1
        replay(archive.read(), first, None, state, batch=5)
    assert first.sent == [f"a{i:02d}" for i in range(20)] + [f"b{i:02d}" for i in range(10)]

    # New part files: items dated before the resume position (on both days, and on a day before both),
    # and after it. Counting 30 items into the new order would land on b04 and skip every one of them.
    archive.append(
        [
            item("early-a", 5.5),
            item("early-b", 24 * 60 + 3.5),
            item("older-day", -24 * 60),
            item("late-b", 24 * 60 + 15.5),
        ]
    )
    second = Broker()
    report = replay(archive.read(), second, None, state, batch=5)

    everything = {i.id for i in archive.read()}
    assert everything - set(first.sent) - set(second.sent) == set()  # nothing skipped
    assert report.failed == 0 and report.published == len(second.sent)
    # what was sent after the position goes out once, in order; the days that changed behind it are sent again
    assert Counter(second.sent)["b15"] == 1 and "late-b" in second.sent
    assert report.caught_up == 1 + 21 + 11  # older-day, day 1 (20 + early-a), day 2 up to b09 (10 + early-b)

    third = Broker()
    again = replay(archive.read(), third, None, state, batch=5)
    assert third.sent == [] and again.skipped == len(everything)  # a finished replay resumes to nothing


def test_an_unchanged_archive_resumes_right_after_the_position_without_repeats(tmp_path):
    archive = Archive(tmp_path / "archive")
    archive.append([item(f"a{i:02d}", i * 90) for i in range(40)])  # 60 hours: three event days
    state = state_path(tmp_path / "state", None, None, "raw")
    first = Broker(fail_after=25)
    with pytest.raises(BrokerUnavailable):
        replay(archive.read(), first, None, state, batch=5)
    second = Broker()
    report = replay(archive.read(), second, None, state, batch=5)
    assert first.sent + second.sent == [f"a{i:02d}" for i in range(40)]
    assert (report.skipped, report.caught_up) == (25, 0)


def test_a_state_file_from_the_count_based_version_still_resumes(tmp_path):
    archive = Archive(tmp_path / "archive")
    archive.append([item(f"a{i:02d}", i) for i in range(10)])
    state = state_path(tmp_path / "state", None, None, "raw")
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"published": 4}))
    sent = Broker()
    report = replay(archive.read(), sent, None, state, batch=3)
    assert sent.sent == [f"a{i:02d}" for i in range(4, 10)] and report.skipped == 4
    assert json.loads(state.read_text())["position"][1] == "a09"


def test_speed_must_be_finite_and_positive_and_a_batch_at_least_one(tmp_path):
    from finsent.ingest.replay import parse_speed, refill

    assert parse_speed("60x") == 60.0 and parse_speed("max") is None
    for bad in ("nan", "NaNx", "inf", "0", "-2x", "fast"):  # ConfigError: the CLI's one line and exit 2
        with pytest.raises(ConfigError, match="speed"):
            parse_speed(bad)
    with pytest.raises(ConfigError, match="batch"):
        replay([item("a", 0)], Broker(), None, tmp_path / "state.json", batch=0)
    with pytest.raises(ConfigError, match="batch"):
        refill([item("a", 0)], Broker(), batch=0)
