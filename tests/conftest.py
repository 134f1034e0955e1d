"""Shared fixtures: real services on 127.0.0.1, each on a free port, one per test session.

No mocks here: the broker is the Tansu binary, Prometheus and Alertmanager are the Debian packages.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from finsent.local.broker import broker_child
from finsent.local.feeds import FeedServer
from finsent.local.procs import Child
from finsent.local.services import alertmanager_auth, alertmanager_child, prometheus_child, ready_check
from finsent.net import free_port, port_open
from finsent.settings import Settings, load

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_finsent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see default settings unless they set FINSENT_* themselves."""
    for key in list(os.environ):
        if key.startswith("FINSENT_"):
            monkeypatch.delenv(key)


# Every port a finsent process listens on, as (settings group, field). Tests get a free one for each, never the
# default: `make test` runs the suite on several workers (pytest -n), and two tests must not meet on a default port.
LISTENERS = (
    ("broker", "port"),
    ("services", "prometheus_port"),
    ("services", "alertmanager_port"),
    ("ingest", "metrics_port"),
    ("ingest", "demo_feeds_port"),
    ("stream", "metrics_port"),
    ("receiver", "port"),
    ("web", "port"),
)


def free_listener_ports() -> dict[str, dict[str, int]]:
    ports: dict[str, dict[str, int]] = {}
    for group, field in LISTENERS:
        ports.setdefault(group, {})[field] = free_port()
    return ports


def environ_without_finsent() -> dict[str, str]:
    """This process's environment minus every FINSENT_* variable: what a child finsent process starts from,
    so that only the settings a test gives it apply -- plus a free port for everything it could listen on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    for group, fields in free_listener_ports().items():
        env.update({f"FINSENT_{group.upper()}__{field.upper()}": str(port) for field, port in fields.items()})
    return env


def make_settings(tmp: Path, **overrides) -> Settings:
    """Settings with every port free and every path under ``tmp``."""
    base: dict = free_listener_ports()
    base["services"] |= {"scrape_interval_s": 1, "evaluation_interval_s": 1}
    base["paths"] = {"state_dir": str(tmp / "state"), "archive_dir": str(tmp / "state" / "archive")}
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return load(**base)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that this test holds bound and listening: for what a service does when its port is taken."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def frozen_feeds() -> Iterator[FeedServer]:
    """The demo feeds on a free port, frozen: a backlog (~10 items on each demo feed, with ETags) and nothing new
    between polls, so a test can count what ingest should have got."""
    server = FeedServer(rate_per_s=0.0005, burst_at=3600, backlog=30).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def broker(session_tmp: Path) -> Iterator[str]:
    """A Tansu broker for the whole session; yields its bootstrap address."""
    port = free_port()
    child: Child = broker_child("127.0.0.1", port, session_tmp / "logs")
    child.start(lambda: port_open("127.0.0.1", port), timeout=15)
    yield f"127.0.0.1:{port}"
    child.stop()


@pytest.fixture(scope="session")
def services_settings(session_tmp: Path) -> Settings:
    return make_settings(session_tmp)


def with_credentials(url: str, auth: tuple[str, str]) -> str:
    """``http://user:password@host:port``: httpx sends basic auth for a URL's user info, so a test's calls read as
    plain URLs."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{auth[0]}:{auth[1]}@{rest}"


@pytest.fixture(scope="session")
def alertmanager(services_settings: Settings) -> Iterator[str]:
    """The embedded Alertmanager's URL, with its password in it (it refuses requests without)."""
    child, url = alertmanager_child(services_settings, services_settings.paths.state_dir)
    auth = alertmanager_auth(services_settings, services_settings.paths.state_dir)
    child.start(ready_check(url, auth), timeout=30)
    yield with_credentials(url, auth)
    child.stop()


@pytest.fixture(scope="session")
def prometheus(services_settings: Settings, alertmanager: str) -> Iterator[str]:
    child, url = prometheus_child(services_settings, services_settings.paths.state_dir)
    child.start(ready_check(url), timeout=30)
    yield url
    child.stop()


# ----------------------------------------------------------------------------- tiny model (plumbing only)

TINY_TOPIC_WORDS = ["earnings", "oil", "fed", "merger"]
TINY_SENT_WORDS = ["plunge", "steady", "soar"]


def tiny_examples(n: int, seed: int = 0):
    """Synthetic headlines whose labels follow from a keyword, so even a tiny model can learn them."""
    import random

    from finsent.model.data import Example

    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2:
            t = rng.randrange(len(TINY_TOPIC_WORDS))
            out.append(Example(f"company {rng.randint(1, 99)} {TINY_TOPIC_WORDS[t]} news today", topic=t))
        else:
            s = rng.randrange(len(TINY_SENT_WORDS))
            out.append(Example(f"shares {TINY_SENT_WORDS[s]} after report {rng.randint(1, 99)}", sentiment=s))
    return out


def write_tiny_data(root: Path, n_train: int = 96, n_valid: int = 48) -> Path:
    """The ../shared/data layout (twitter-topic, twitter-sentiment CSVs) filled with tiny synthetic data."""
    import csv

    sent_to_twitter = {0: 0, 1: 2, 2: 1}  # negative->Bearish(0), neutral->Neutral(2), positive->Bullish(1)
    for split, n, seed in (("train", n_train, 1), ("valid", n_valid, 2)):
        rows = tiny_examples(n, seed)
        for folder, pick in (
            ("twitter-topic", lambda e: e.topic),
            ("twitter-sentiment", lambda e: sent_to_twitter.get(e.sentiment)),
        ):
            (root / folder).mkdir(parents=True, exist_ok=True)
            with (root / folder / f"{split}.csv").open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["text", "label"])
                for e in rows:
                    label = pick(e)
                    if label is not None and label >= 0:
                        w.writerow([e.text, label])
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight 2-layer BERT saved as a finsent model directory (real tokenizer of the base)."""
    import torch
    from transformers import AutoTokenizer

    from finsent.labels import SENTIMENT_LABELS, TOPIC_LABELS
    from finsent.model import artifact
    from finsent.model.network import MultiTaskModel, tiny_config

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(artifact.base_path("all-MiniLM-L6-v2"))
    model = MultiTaskModel(tiny_config(tokenizer.vocab_size), len(TOPIC_LABELS), len(SENTIMENT_LABELS), dropout=0.0)
    directory = tmp_path_factory.mktemp("models") / "tiny" / "v1"
    artifact.save(
        directory,
        model,
        tokenizer,
        artifact.ModelMeta(name="tiny", version="v1", base="tiny-random", max_length=32),
        dtype=torch.float32,
    )
    return directory


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("data"))


LAYERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked by its folder: ``pytest -m unit`` runs the pure, fast ones; ``-m e2e`` the
    multi-process runs (demo, worker kill -9, backtest parity through Kafka)."""
    for item in items:
        layer = Path(str(item.path)).parent.name
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))
