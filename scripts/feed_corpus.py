"""Run ``finsent ingest --once`` over a folder of feed files and account for every one of them.

    python scripts/feed_corpus.py                       # tests/fixtures/hostile-feeds/
    python scripts/feed_corpus.py path/to/feeds --keep out/

Each file in the folder (except README.md) is served on 127.0.0.1 by a throwaway HTTP server, with a
content type chosen by its extension (below: ``.xml`` is ``text/xml`` without a charset on purpose), and
becomes one ``[[feeds]]`` entry of a generated feed list. ``finsent ingest --once --output items.jsonl``
then runs in a child process with a fresh state directory and ``FINSENT_ALLOW_PRIVATE_FEEDS=1`` (the
setting the tests use for loopback feeds); every other ``FINSENT_*`` variable is removed, so a config of
your own cannot change the result.

The accounting printed: per feed, the outcome from the run's summary (``ok``, ``not_modified`` or
``error`` with its kind), entries, new, duplicates, invalid and sent, and how many items of that feed
were written. Problems (the script exits 1 on any): the run exited non-zero or printed a traceback; a
feed is missing from the summary; a feed's entries are not all counted (entries != new + dup + invalid)
or its written items differ from "sent"; an emitted title or summary is not clean (a control or invisible
format character, a lone surrogate, a ``<script`` tag).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import unicodedata
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from finsent.local.feeds import LoopbackServer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FOLDER = ROOT / "tests" / "fixtures" / "hostile-feeds"
SKIP = {"README.md"}
CONTENT_TYPES = {
    ".rss": "application/rss+xml",
    ".atom": "application/atom+xml",
    ".xml": "text/xml",  # no charset: RFC 3023 would read it as us-ascii
    ".html": "text/html; charset=utf-8",
}
DEFAULT_TYPE = "application/octet-stream"
SCRIPT_TAG = re.compile(r"<\s*/?\s*script", re.I)


def feed_name(path: Path) -> str:
    """A feed name the feed list accepts (``[A-Za-z0-9._-]``, at most 100 characters)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", path.name)[:100]


def unclean(text: str) -> list[str]:
    """What makes a text unclean, by Unicode category (not by the cleaner's own rules)."""
    problems = []
    bad = sorted({f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs")})
    if bad:
        problems.append("characters " + " ".join(bad[:8]))
    if SCRIPT_TAG.search(text):
        problems.append("a <script> tag")
    return problems


class _Handler(BaseHTTPRequestHandler):
    server: _FolderServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        path = self.server.files.get(self.path.split("?", 1)[0].lstrip("/"))
        body = path.read_bytes() if path else b"not found"
        self.send_response(200 if path else 404)
        self.send_header("Content-Type", CONTENT_TYPES.get(path.suffix, DEFAULT_TYPE) if path else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _FolderServer(LoopbackServer):
    daemon_threads = True

    def __init__(self, files: dict[str, Path]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files


@dataclass
class FeedOutcome:
    feed: str
    file: str
    outcome: str = "missing"  # ok | not_modified | error | missing (not in the summary)
    error: str = ""
    entries: int = 0
    new: int = 0
    duplicate: int = 0
    invalid: int = 0
    sent: int = 0
    written: int = 0


@dataclass
class CorpusReport:
    returncode: int
    stdout: str
    stderr: str
    feeds: dict[str, FeedOutcome]
    items: list[dict]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def parse_summary(stdout: str, names: set[str]) -> dict[str, dict]:
    """``finsent ingest --once``'s table (finsent.ingest.service.format_summary) -> feed -> columns."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split(None, 7)
        if len(parts) >= 7 and parts[0] in names and all(p.isdigit() for p in parts[2:7]):
            error = parts[7] if len(parts) > 7 else ""
            rows[parts[0]] = {
                "outcome": parts[1],
                "entries": int(parts[2]),
                "new": int(parts[3]),
                "duplicate": int(parts[4]),
                "invalid": int(parts[5]),
                "sent": int(parts[6]),
                "error": error.split(":", 1)[0] if error else "",
            }
    return rows


def run_corpus(folder: Path, workdir: Path, timeout_s: float = 300.0) -> CorpusReport:
    files = {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.name not in SKIP}
    names = {feed_name(p): p.name for p in files.values()}
    if len(names) != len(files):
        raise SystemExit(f"{folder}: two files map to the same feed name")
    workdir.mkdir(parents=True, exist_ok=True)
    server = _FolderServer(files)
    threading.Thread(target=server.serve_forever, name="corpus-server", daemon=True).start()
    try:
        feeds_toml = workdir / "feeds.toml"
        feeds_toml.write_text(
            "".join(
                f'[[feeds]]\nname = "{name}"\nurl = "{server.url}/{file}"\n\n' for name, file in sorted(names.items())
            ),
            encoding="utf-8",
        )
        output = workdir / "items.jsonl"
        output.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
        env.update(
            {
                "FINSENT_ALLOW_PRIVATE_FEEDS": "1",
                "FINSENT_PATHS__STATE_DIR": str(workdir / "state"),
                "FINSENT_PATHS__ARCHIVE_DIR": str(workdir / "archive"),
            }
        )
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "finsent.cli",
                "ingest",
                "--feeds",
                str(feeds_toml),
                "--once",
                "--output",
                str(output),
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    finally:
        server.shutdown()
        server.server_close()
    items = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()] if output.exists() else []
    rows = parse_summary(proc.stdout, set(names))
    report = CorpusReport(
        proc.returncode,
        proc.stdout,
        proc.stderr,
        {n: FeedOutcome(n, f, **rows.get(n, {})) for n, f in sorted(names.items())},
        items,
    )
    for item in items:
        if item["source"] in report.feeds:
            report.feeds[item["source"]].written += 1
    if proc.returncode != 0:
        report.problems.append(f"finsent ingest --once exited {proc.returncode}")
    if "Traceback" in proc.stderr or "Traceback" in proc.stdout:
        report.problems.append("a traceback was printed")
    for f in report.feeds.values():
        if f.outcome == "missing":
            report.problems.append(f"{f.file}: not in the summary")
        elif f.entries != f.new + f.duplicate + f.invalid:
            report.problems.append(
                f"{f.file}: {f.entries} entries but {f.new} new + {f.duplicate} dup + {f.invalid} invalid"
            )
        if f.written != f.sent:
            report.problems.append(f"{f.file}: {f.sent} sent but {f.written} written")
    for item in items:
        for part in ("title", "summary"):
            for problem in unclean(item.get(part) or ""):
                report.problems.append(
                    f"{names.get(item['source'], item['source'])}: {part} {item.get(part)!r} has {problem}"
                )
    return report


def format_report(report: CorpusReport) -> str:
    lines = [
        f"{'file':<32} {'outcome':<8} {'error':<16} {'entries':>7} {'new':>4} {'dup':>4} {'invalid':>7} {'written':>7}"
    ]
    for f in report.feeds.values():
        lines.append(
            f"{f.file:<32} {f.outcome:<8} {f.error:<16} {f.entries:>7} {f.new:>4} {f.duplicate:>4} {f.invalid:>7} {f.written:>7}"
        )
    clean = sum(1 for i in report.items if not unclean(i.get("title") or "") and not unclean(i.get("summary") or ""))
    lines.append(
        f"{len(report.feeds)} feeds, {sum(f.outcome != 'missing' for f in report.feeds.values())} in the summary; "
        f"{len(report.items)} items written, {clean} clean; exit status {report.returncode}"
    )
    lines += [f"PROBLEM: {p}" for p in report.problems] or ["no problems"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--keep", type=Path, help="work in this folder (feed list, items, state) and keep it")
    parser.add_argument("--titles", action="store_true", help="also print every emitted title")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="feed-corpus-") as tmp:
        report = run_corpus(args.folder, args.keep or Path(tmp))
    print(format_report(report))
    if args.titles:
        for item in report.items:
            print(f"{item['source']}: {item['title']!r}")
    if report.returncode != 0 or "Traceback" in report.stderr:
        print(report.stderr[-3000:], file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
