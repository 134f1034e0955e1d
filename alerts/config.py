"""Alertmanager's routing as shipped (``alertmanager.yml``), rendered for one machine or one deployment, and the
basic auth that protects its API.

The embedded stack (``finsent.local``) and ``finsent receiver alertmanager-config`` (compose, Kubernetes)
render the same file the same way: the receiver's address filled in, the bearer token written to a private
file Alertmanager reads, so the token never lands in a config file of the repo.

Alertmanager's API takes new alerts and silences from anyone who reaches it and answers a browser's preflight
from any origin (``Access-Control-Allow-Origin: *``): without a password any web page its user opens could
silence every surge before compliance sees it, or file false ones. Both the embedded stack and compose give it
one (basic auth, user ``finsent``) through ``--web.config.file``, written here by :func:`write_web_config`
(a bcrypt hash, never the password), and Prometheus reads the password from a 0600 file.
"""

from __future__ import annotations

import re
from pathlib import Path

import bcrypt
import yaml

from finsent.errors import ConfigError
from finsent.files import write_private
from finsent.settings import Settings

ALERTS_DIR = Path(__file__).resolve().parent
RULES_DIR = ALERTS_DIR / "rules"
ALERTMANAGER_CONFIG = ALERTS_DIR / "alertmanager.yml"
ALERTMANAGER_USER = "finsent"  # the basic-auth user of Alertmanager's web config
WEB_CONFIG = "web.yml"  # Alertmanager's --web.config.file, next to its alertmanager.yml
PASSWORD_FILE = "alertmanager-password"  # default name of the file Prometheus reads the password from


DEFAULT_RECEIVER = "127.0.0.1:9184"


def write_web_config(path: Path, password: str, user: str = ALERTMANAGER_USER) -> Path:
    """Alertmanager's ``--web.config.file``: basic auth for ``user``, the password kept as a bcrypt hash."""
    if not password:
        raise ConfigError("Alertmanager's web config needs a non-empty password")
    # cost 10: each request checks the hash (Prometheus posts and scrapes every 2 s); still ~2^10 rounds per guess
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
    return write_private(path, yaml.safe_dump({"basic_auth_users": {user: hashed}}))


def render_alertmanager_web_auth(
    settings: Settings, home: Path, password_file: Path | None = None
) -> tuple[Path, Path]:
    """For a deployment (compose): ``home/web.yml`` for Alertmanager and the password in a 0600 file for
    Prometheus (``password_file``, default ``home/alertmanager-password``), from
    ``FINSENT_SERVICES__ALERTMANAGER_PASSWORD``. Refuses, writing nothing, when that is unset or empty."""
    given = settings.services.alertmanager_password
    password = given.get_secret_value().strip() if given is not None else ""
    if not password:
        raise ConfigError(
            "set FINSENT_SERVICES__ALERTMANAGER_PASSWORD (deploy/alertmanager.env): without a password Alertmanager's API "
            "takes silences and alerts from anyone who reaches it"
        )
    web = write_web_config(home / WEB_CONFIG, password)
    return web, write_private(password_file or home / PASSWORD_FILE, password + "\n")


def render_alertmanager_config(
    settings: Settings, home: Path, source: Path = ALERTMANAGER_CONFIG, receiver_address: str | None = None
) -> Path:
    """The shipped routing with this machine's receiver address, and the bearer token (from the environment)
    written to a private file Alertmanager reads: the token never lands in a config file of the repo.
    ``receiver_address`` (host:port) overrides services.host:receiver.port, e.g. ``receiver:9184`` in compose."""
    doc = yaml.safe_load(source.read_text())
    address = receiver_address or f"{settings.services.host}:{settings.receiver.port}"
    host, sep, port = address.rpartition(":")
    if not (
        sep and port.isdigit() and 0 < int(port) < 65536 and re.fullmatch(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]", host)
    ):
        # written into a URL, "not an address" made a config Alertmanager refuses only when it loads it
        raise ConfigError(f"receiver address {address!r}: expected host:port (e.g. receiver:9184)")
    home.mkdir(parents=True, exist_ok=True)
    token_file = home / "receiver-token"
    if settings.receiver.token is not None:
        write_private(token_file, settings.receiver.token.get_secret_value())
    for receiver in doc.get("receivers", []):
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = hook["url"].replace(DEFAULT_RECEIVER, address)
            if settings.receiver.token is not None:
                hook["http_config"] = {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}
    out = home / "alertmanager.yml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out
