from datetime import UTC, datetime, timedelta

import pytest
from factories import news_item

from finsent.ingest.archive import Archive

T0 = datetime(2024, 5, 2, 23, 50, tzinfo=UTC)


def item(i, minutes, **kw):
    return news_item(f"id{i:03d}", f"headline {i}", at=T0 + timedelta(minutes=minutes), **kw)


def test_items_come_back_in_event_time_order_across_days_and_appends(tmp_path):
    a = Archive(tmp_path)
    a.append([item(3, 30), item(1, 0, tickers=("AAPL",), url="https://x.com/1")])
    a.append([item(2, 5, summary="s"), item(0, -5)])
    assert a.days() == [T0.date(), (T0 + timedelta(days=1)).date()]
    got = list(a.read())
    assert [x.id for x in got] == ["id000", "id001", "id002", "id003"]
    assert got[1].tickers == ("AAPL",) and got[1].url == "https://x.com/1" and got[2].summary == "s"
    assert got[1] == item(1, 0, tickers=("AAPL",), url="https://x.com/1")  # lossless


def test_time_range_is_half_open(tmp_path):
    a = Archive(tmp_path)
    a.append([item(i, i * 10) for i in range(6)])
    got = [x.id for x in a.read(T0 + timedelta(minutes=10), T0 + timedelta(minutes=30))]
    assert got == ["id001", "id002"]


def test_repeated_ids_read_once_and_compaction_merges_parts(tmp_path):
    a = Archive(tmp_path)
    a.append([item(1, 1)])
    a.append([item(1, 1), item(2, 2)])
    assert a.count() == 2
    assert a.compact(T0.date()) == 2
    assert len(list((tmp_path / f"day={T0.date()}").glob("part-*.parquet"))) == 1
    assert [x.id for x in a.read()] == ["id001", "id002"]


def test_no_partial_files_visible(tmp_path):
    a = Archive(tmp_path)
    a.append([item(1, 1)])
    assert not list(tmp_path.rglob(".*.tmp"))


def test_the_clamped_flag_is_kept_and_parts_written_before_it_existed_still_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from finsent.ingest.archive import SCHEMA

    a = Archive(tmp_path)
    a.append([item(1, 1, published_clamped=True), item(2, 2)])
    old_schema = pa.schema([f for f in SCHEMA if f.name != "published_clamped"])  # the archive before the flag
    row = item(3, 3).model_dump(exclude={"published_clamped"})
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), tmp_path / f"day={T0.date()}" / "part-0-old.parquet")
    got = {x.id: x for x in a.read()}
    assert got["id001"].published_clamped is True and got["id001"] == item(1, 1, published_clamped=True)
    assert got["id002"].published_clamped is None and got["id003"] == item(3, 3)


def test_parts_are_fsynced_with_their_directories_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    """Ingest marks an item as seen once ``append`` returns, so by then the part must be on disk for good:
    the file and the directories naming it (the new day directory, the part's rename) are fsynced."""
    import os
    import stat

    import pyarrow.parquet as pq

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    a = Archive(tmp_path / "archive")
    a.append([item(1, 1)])
    assert synced.count("file") == 1 and synced.count("dir") >= 3  # archive root's parent, root, day dir
    synced.clear()
    a.append([item(2, 2)])
    assert synced == ["file", "dir"]  # an existing day: the part, then its directory

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full_disk)
    with pytest.raises(OSError, match="No space left"):  # reaches the caller: ingest retries it
        a.append([item(3, 3)])
    assert not list(tmp_path.rglob("*.tmp")) and a.count() == 2


def test_a_day_that_cannot_be_written_does_not_hide_the_days_that_were(tmp_path):
    """Ingest retries only what is not durable yet, so ``append`` says which items it did write: every day is
    tried, and the error carries the ids of the days that made it (before: it raised on the first failing day,
    and the retry rewrote the days that had succeeded)."""
    from finsent.errors import ArchiveWriteError

    root = tmp_path / "archive"
    root.mkdir()
    (root / "day=2024-05-02").write_text("not a directory")  # the first day cannot be written, the second can
    first, second = [item(1, 1), item(2, 2)], [item(3, 15), item(4, 16)]  # 23:51, 23:52 and 00:05, 00:06
    a = Archive(root)
    with pytest.raises(ArchiveWriteError, match="2024-05-02") as caught:
        a.append(first + second)
    assert caught.value.written == {"id003", "id004"} and isinstance(caught.value, OSError)
    assert [i.id for i in a.read()] == ["id003", "id004"]
    (root / "day=2024-05-02").unlink()
    assert a.append(first) == 2 and a.count() == 4


def test_an_unreadable_part_is_named_and_can_be_skipped_and_counted(tmp_path, caplog):
    """A corrupt part file: a strict read names it in one line (no pyarrow traceback); a read that skips
    unreadable parts logs each at ERROR, counts it, and returns everything else."""
    import logging

    from finsent.errors import ArchiveReadError

    Archive(tmp_path / "a").append([item(1, 1), item(2, 20)])
    Archive(tmp_path / "a").append([item(3, 2)])
    bad = tmp_path / "a" / "day=2024-05-02" / "part-zzzz-corrupt.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ArchiveReadError, match=r"part-zzzz-corrupt\.parquet"):
        list(Archive(tmp_path / "a").read())
    caplog.set_level(logging.ERROR, logger="finsent.ingest")
    a = Archive(tmp_path / "a", skip_unreadable=True)
    assert [i.id for i in a.read()] == ["id001", "id003", "id002"]
    assert a.skipped == [bad]
    lines = [r for r in caplog.records if r.getMessage().startswith("archive part unreadable")]
    assert len(lines) == 1 and lines[0].path == str(bad) and lines[0].levelno == logging.ERROR and not lines[0].exc_info


def test_a_foreign_day_folder_is_skipped_with_one_warning_not_a_crash(tmp_path, caplog):
    a = Archive(tmp_path)
    a.append([item(1, 0), item(2, 1)])
    backup = tmp_path / f"day={T0.date()}.bak"  # a copy set aside by hand, with a part file in it
    backup.mkdir()
    for part in (tmp_path / f"day={T0.date()}").glob("part-*.parquet"):
        (backup / part.name).write_bytes(part.read_bytes())
    (tmp_path / "day=20240502").mkdir()  # parses as a date, but it is not the folder that day is read from
    with caplog.at_level("WARNING", logger="finsent.ingest"):
        assert a.count() == 2 and [x.id for x in a.read()] == ["id001", "id002"]
    warnings = [r for r in caplog.records if "not day folders" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].folders == [f"day={T0.date()}.bak", "day=20240502"]


def test_temp_files_of_a_killed_write_are_removed_when_the_day_is_next_written(tmp_path, caplog):
    """A ``kill -9`` mid-write skips the write's own cleanup: its temp file stayed for ever, one per crash."""
    import os
    import time

    archive = Archive(tmp_path)
    archive.append([item(1, 1)])
    (day,) = tmp_path.glob("day=*")
    stale, fresh = day / ".part-killed-long-ago.parquet.tmp", day / ".part-being-written.parquet.tmp"
    for tmp in (stale, fresh):
        tmp.write_bytes(b"half a parquet file")
    hours_ago = time.time() - 2 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    archive.append([item(2, 2)])
    assert not stale.exists() and fresh.exists()  # another writer's part in progress is left alone
    assert [getattr(r, "path", None) for r in caplog.records if "stale temp" in r.getMessage()] == [str(stale)]
    assert {i.id for i in archive.read()} == {"id001", "id002"}
