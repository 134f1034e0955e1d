"""The two small helpers that CI's flakes came from: whole-file replacement and free-port picking."""

import socket
import threading
from pathlib import Path

from finsent.files import replace_text, write_private
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
