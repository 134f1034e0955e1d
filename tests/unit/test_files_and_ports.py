"""The small file and port helpers: whole-file replacement and free-port picking (CI's flakes came from them), and
whole-line appends (a full disk once glued two lines into one unreadable one)."""

import socket
import subprocess
import sys
import threading
from pathlib import Path

from finsent.files import append_lines, replace_text, write_private
from finsent.net import free_port


def _ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_free_ports_come_from_below_the_ephemeral_range_and_can_be_bound():
    """A port from the ephemeral range can be taken by any outgoing connection before the service binds it."""
    low, _ = _ephemeral_range()
    ports = {free_port() for _ in range(50)}
    assert all(1024 < p < low for p in ports), sorted(p for p in ports if p >= low)
    assert len(ports) > 40  # drawn at random, so parallel test workers rarely draw the same one
    for port in list(ports)[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_free_port_skips_a_port_someone_listens_on(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        draws = iter([busy, busy, busy + 1 if busy + 1 < 65536 else busy - 1])
        monkeypatch.setattr("finsent.net._ephemeral_low", lambda: 65535)
        monkeypatch.setattr("finsent.net._pick.randrange", lambda a, b: next(draws))
        assert free_port() != busy


def test_a_reader_never_sees_a_half_written_file(tmp_path):
    """Readers poll state files (``demo.json``) while they are rewritten; each read must be one whole version."""
    path = tmp_path / "state.json"
    versions = [f'{{"n": {i}, "pad": "{"x" * 20000}"}}' for i in range(200)]
    replace_text(path, versions[0])
    seen: set[str] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(path.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    for text in versions[1:]:
        replace_text(path, text)
    done.set()
    reader.join()
    assert seen <= set(versions), "a reader saw a file that was never written whole"
    assert path.read_text() == versions[-1]
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp files left behind


def test_a_private_file_is_0600_and_a_reader_of_the_older_wider_file_never_sees_the_new_secret(tmp_path):
    """Rewriting in place (O_TRUNC, then chmod) let a process that had opened the older 0644 file read the new
    password through its handle."""
    import stat

    path = tmp_path / "auth" / "password"
    path.parent.mkdir()
    path.write_text("old-secret\n")
    path.chmod(0o644)
    with path.open() as earlier:
        write_private(path, "new-secret\n")
        assert earlier.read() == "old-secret\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "new-secret\n"
    assert [p.name for p in path.parent.iterdir()] == ["password"]  # no temp file left


FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from finsent.files import append_lines
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit write() fails with EFBIG, as with ENOSPC on a full disk
path = Path(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 40, resource.RLIM_INFINITY))
try:
    append_lines(path, b'{"n": 3, "text": "' + b"x" * 200 + b'"}\\n')
except OSError as err:
    print(err.errno)
"""


def test_a_failed_append_leaves_no_part_of_itself_and_a_torn_tail_cannot_swallow_the_next_line(tmp_path):
    """A full disk mid-line left half a line that the next append was glued onto: both lines lost to every reader."""
    path = tmp_path / "store.jsonl"
    append_lines(path, b'{"n": 1}\n')
    before = path.read_bytes()
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "27" and path.read_bytes() == before  # EFBIG, and the file as it was
    with path.open("ab") as fh:
        fh.write(b'{"n": 2, "cut sh')  # a crash mid-line in an older writer
    append_lines(path, b'{"n": 4}\n')
    assert path.read_bytes().split(b"\n") == [b'{"n": 1}', b'{"n": 2, "cut sh', b'{"n": 4}', b""]


def test_concurrent_appends_keep_every_line_whole(tmp_path):
    path = tmp_path / "store.jsonl"
    lines = [b"%d:" % i + b"y" * 5000 + b"\n" for i in range(64)]
    threads = [threading.Thread(target=append_lines, args=(path, line)) for line in lines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(path.read_bytes().splitlines(keepends=True)) == sorted(lines)
