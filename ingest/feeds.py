"""The feed list: ``[[feeds]]`` tables in TOML (name, url, optional interval, tickers, tags)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from finsent.errors import FeedListError

PUBLIC_FEEDS = Path(__file__).resolve().parent / "data" / "feeds-public.toml"  # ingest.feeds_file's default


class FeedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    url: str = Field(min_length=8)
    interval: float = Field(default=300.0, ge=1.0, le=86400.0)  # seconds between polls
    tickers: tuple[str, ...] = ()  # default tickers for every item of this feed (a company's own feed)
    tags: tuple[str, ...] = ()  # free labels, e.g. "region:us", "kind:central-bank"

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v


def load_feeds(path: Path) -> list[FeedConfig]:
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise FeedListError(f"{path}: {err}") from None
    tables = raw.get("feeds")
    if not isinstance(tables, list) or not tables:
        raise FeedListError(f"{path}: expected one or more [[feeds]] tables")
    feeds, problems = [], []
    for i, table in enumerate(tables):
        try:
            feeds.append(FeedConfig(**table))
        except (ValidationError, TypeError) as err:
            detail = (
                "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
                if isinstance(err, ValidationError)
                else str(err)
            )
            problems.append(f"feeds[{i}] ({table.get('name', '?')}): {detail}")
    names = [f.name for f in feeds]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"duplicate feed names: {dupes}")
    if problems:
        raise FeedListError(f"{path}:\n  " + "\n  ".join(problems))
    return feeds
