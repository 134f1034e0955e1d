"""Alertmanager's routing as shipped (``alertmanager.yml``), rendered for one machine or one deployment.

The embedded stack (``finsent.local``) and ``finsent receiver alertmanager-config`` (compose, Kubernetes)
render the same file the same way: the receiver's address filled in, the bearer token written to a private
file Alertmanager reads, so the token never lands in a config file of the repo.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from finsent.settings import Settings

ALERTS_DIR = Path(__file__).resolve().parent
RULES_DIR = ALERTS_DIR / "rules"
ALERTMANAGER_CONFIG = ALERTS_DIR / "alertmanager.yml"


DEFAULT_RECEIVER = "127.0.0.1:9184"


def render_alertmanager_config(
    settings: Settings, home: Path, source: Path = ALERTMANAGER_CONFIG, receiver_address: str | None = None
) -> Path:
    """The shipped routing with this machine's receiver address, and the bearer token (from the environment)
    written to a private file Alertmanager reads: the token never lands in a config file of the repo.
    ``receiver_address`` (host:port) overrides services.host:receiver.port, e.g. ``receiver:9184`` in compose."""
    doc = yaml.safe_load(source.read_text())
    address = receiver_address or f"{settings.services.host}:{settings.receiver.port}"
    home.mkdir(parents=True, exist_ok=True)
    token_file = home / "receiver-token"
    if settings.receiver.token is not None:
        token_file.touch(mode=0o600)
        token_file.write_text(settings.receiver.token.get_secret_value())
    for receiver in doc.get("receivers", []):
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = hook["url"].replace(DEFAULT_RECEIVER, address)
            if settings.receiver.token is not None:
                hook["http_config"] = {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}
    out = home / "alertmanager.yml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out
