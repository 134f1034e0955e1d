from datetime import UTC, datetime, timedelta

from finsent.ingest.dedup import Deduper, DedupStore, minhash, similarity
from finsent.records import NewsItem

T0 = datetime(2024, 5, 2, 12, tzinfo=UTC)


def item(i, title, url=None, at=T0, source="wire"):
    return NewsItem(id=f"id{i}", title=title, url=url, source=source, published=at, fetched=at)


def test_exact_duplicates_by_id_url_and_title():
    d = Deduper()
    d.mark(item(1, "Apple shares slide after earnings miss", url="https://a.com/1"))
    assert d.check(item(1, "different")).reason == "id"
    assert d.check(item(2, "different", url="https://a.com/1")).reason == "url"
    v = d.check(item(3, "APPLE shares slide, after earnings miss!", source="other"))
    assert v.duplicate and v.reason == "title" and v.of == "id1"
    assert not d.check(item(4, "Microsoft shares rise after earnings beat")).duplicate


def test_near_duplicates_found_and_distinct_stories_kept():
    d = Deduper()
    d.mark(item(1, "Apple shares slide 5% after iPhone maker misses quarterly earnings estimates"))
    v = d.check(item(2, "Apple shares slide 5% after iPhone maker misses quarterly earnings estimates - Reuters"))
    assert v.duplicate and v.reason == "near" and v.of == "id1"
    assert d.check(item(4, "Apple shares slide 5 pct after iPhone maker misses quarterly earnings estimates")).duplicate
    assert not d.check(item(3, "Apple shares jump 5% after iPhone maker beats quarterly revenue estimates")).duplicate


def test_minhash_similarity_tracks_jaccard():
    a = minhash("Fed raises interest rates by a quarter point as inflation cools")
    b = minhash("Fed raises interest rates by a quarter point as inflation cools further")
    c = minhash("Oil prices tumble as OPEC output rises sharply")
    assert similarity(a, b) >= 0.7 > 0.2 > similarity(a, c)


def test_horizon_evicts_old_marks():
    d = Deduper(horizon=timedelta(hours=1))
    d.mark(item(1, "Old story about the bond market selloff today", at=T0))
    d.mark(item(2, "A much newer and unrelated market headline", at=T0 + timedelta(hours=2)))
    assert len(d) == 1
    assert not d.check(item(3, "Old story about the bond market selloff today", at=T0 + timedelta(hours=2))).duplicate


def test_store_survives_restart(tmp_path):
    path = tmp_path / "dedup.sqlite"
    s = DedupStore(path)
    s.mark(item(1, "Apple shares slide after earnings miss", url="https://a.com/1"))
    s.close()
    s2 = DedupStore(path)
    assert s2.check(item(9, "x", url="https://a.com/1")).duplicate
    assert s2.check(item(1, "anything")).reason == "id"
    s2.close()
