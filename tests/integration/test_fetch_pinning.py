"""The feed fetcher connects only to the addresses it checked (DNS rebinding), on every redirect hop,
against real HTTP(S) servers on 127.0.0.1.

No DNS server runs here, so the tests inject a *fake resolver*: a function answering from a table, the way
an attacker's DNS server would (a public address for the check, 127.0.0.1 for a second lookup). The
connection itself is real; only the name lookup is scripted."""

import asyncio
import ipaddress
import shutil
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from finsent.ingest.fetch import Fetcher, FetchLimits

PUBLIC = "8.8.8.8"  # a globally routable address: passes the check; unreachable from this sandbox
RSS = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title><item><title>x</title></item></channel></rss>'
LIMITS = FetchLimits(connect_s=1, read_s=2, total_s=5)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        self.server.seen.append((self.path, self.headers.get("Host")))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/rss+xml")
        self.send_header("Content-Length", str(len(RSS)))
        self.end_headers()
        self.wfile.write(RSS)


@pytest.fixture
def server():
    """A feed server on 127.0.0.1 that records (path, Host header) of every request it gets."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.seen, srv.redirect_to = [], ""
    srv.port = srv.server_address[1]
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def fake_resolver(table: dict[str, list[list[str]]]):
    """A scripted name lookup (no DNS server here): ``table[host]`` lists the answer to the 1st, 2nd, …
    lookup; the last answer repeats. An address literal answers itself, as with the system resolver.
    ``calls`` records the names asked for."""
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            answers = table[host]
            return answers[min(calls.count(host), len(answers)) - 1]

    resolve.calls = calls
    return resolve


async def _fetch(fetcher: Fetcher, url: str):
    try:
        return await fetcher.fetch(url)
    finally:
        await fetcher.aclose()


def test_a_name_that_rebinds_to_loopback_after_the_check_is_not_reached(server):
    """The check sees a public address; a second lookup would say 127.0.0.1 (``localhost`` also says so to
    the system resolver, which an unpinned connection would ask). The fetch goes to the checked address."""
    resolve = fake_resolver({"localhost": [[PUBLIC], ["127.0.0.1"]]})
    result = asyncio.run(_fetch(Fetcher(LIMITS, resolve=resolve), f"http://localhost:{server.port}/feed"))
    assert result.error in ("connect", "timeout"), result
    assert server.seen == [] and resolve.calls == ["localhost"]


def test_every_redirect_hop_is_resolved_again_checked_and_pinned(server):
    """Hop 1 (127.0.0.1, let through as if public) redirects to a name that rebinds: the second hop is
    resolved once, checked, and connected to the public address it was checked with."""
    server.redirect_to = f"http://localhost:{server.port}/feed"
    resolve = fake_resolver({"localhost": [[PUBLIC], ["127.0.0.1"]]})
    fetcher = Fetcher(LIMITS, resolve=resolve, allow_addresses={"127.0.0.1"})
    result = asyncio.run(_fetch(fetcher, f"http://127.0.0.1:{server.port}/redirect"))
    assert result.error in ("connect", "timeout"), result
    assert server.seen == [("/redirect", f"127.0.0.1:{server.port}")]
    assert resolve.calls == ["127.0.0.1", "localhost"]


@pytest.mark.parametrize(
    "location",
    [
        "http://metadata.test/latest/meta-data",
        "http://10.0.0.5/feed",
        "http://[::ffff:127.0.0.2]:{port}/feed",
        "http://[::1]:{port}/feed",
        "http://internal.test:{port}/feed",
    ],
)
def test_a_redirect_to_a_private_address_is_refused(server, location):
    server.redirect_to = location.format(port=server.port)
    resolve = fake_resolver(
        {"metadata.test": [["169.254.169.254"]], "internal.test": [[PUBLIC, "192.168.1.10"]]}
    )  # one private answer is enough
    fetcher = Fetcher(LIMITS, resolve=resolve, allow_addresses={"127.0.0.1"})
    result = asyncio.run(_fetch(fetcher, f"http://127.0.0.1:{server.port}/redirect"))
    assert result.error == "ssrf", result
    assert [path for path, _ in server.seen] == ["/redirect"]


def test_a_normal_fetch_connects_to_the_checked_address_with_the_host_name(server):
    resolve = fake_resolver({"feeds.test": [["127.0.0.1"]]})
    fetcher = Fetcher(LIMITS, resolve=resolve, allow_addresses={"127.0.0.1"})
    result = asyncio.run(_fetch(fetcher, f"http://feeds.test:{server.port}/feed"))
    assert (result.error, result.status, result.body) == (None, 200, RSS)
    assert server.seen == [("/feed", f"feeds.test:{server.port}")]
    # The tests' usual escape hatch (every private address allowed, the system resolver) still works.
    result = asyncio.run(_fetch(Fetcher(LIMITS, allow_private=True), f"http://127.0.0.1:{server.port}/feed"))
    assert (result.error, result.body) == (None, RSS)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
def test_tls_to_a_pinned_address_verifies_the_certificate_for_the_host_name(server, tmp_path, monkeypatch):
    """HTTPS on 127.0.0.1 with a certificate for feeds.test only: pinned to that address, feeds.test is
    verified and fetched; another name pinned to the same address fails verification."""
    ca, leaf = _certificates(tmp_path, "feeds.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*leaf)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # httpx's default SSL context trusts this CA only
    resolve = fake_resolver({"feeds.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
    ok = asyncio.run(
        _fetch(
            Fetcher(LIMITS, resolve=resolve, allow_addresses={"127.0.0.1"}), f"https://feeds.test:{server.port}/feed"
        )
    )
    assert (ok.error, ok.body) == (None, RSS), ok
    wrong = asyncio.run(
        _fetch(
            Fetcher(LIMITS, resolve=resolve, allow_addresses={"127.0.0.1"}), f"https://other.test:{server.port}/feed"
        )
    )
    assert wrong.error == "connect" and "CERTIFICATE_VERIFY_FAILED" in wrong.detail, wrong
    assert server.seen == [("/feed", f"feeds.test:{server.port}")]


def _certificates(tmp, host: str):
    """A throwaway CA and a certificate for ``host`` signed by it (openssl CLI)."""

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=finsent test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}", "-keyout", "leaf.key", "-out", "leaf.csr")
    (tmp / "ext.cnf").write_text(f"subjectAltName=DNS:{host}\nextendedKeyUsage=serverAuth\n")
    run(
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "leaf.pem",
    )
    return tmp / "ca.pem", (str(tmp / "leaf.pem"), str(tmp / "leaf.key"))
