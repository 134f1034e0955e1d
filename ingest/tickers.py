"""Tickers named in a headline: cashtags, exchange-prefixed symbols and company names (pure).

Precision matters more than recall here: a false ticker puts a headline into another company's
window and can raise a surge on the wrong name. So:

* cashtags (``$AAPL``), exchange prefixes (``NASDAQ:AAPL``) and Reuters instrument codes of US listings
  (``<AAPL.O>``, ``<F.N>``, ``<BRKa.N>`` for share class A; in parentheses only the unambiguous ``.O``,
  ``.OQ`` and ``.N``, since ``(BRK.A)`` is a share class) are explicit and always count; RICs of other
  markets (``<VOD.L>``, ``<7203.T>``) name no US symbol and are left alone;
* company names come from the shipped S&P 500 list plus hand aliases, matched case-sensitively on
  word boundaries;
* names that are also ordinary words (Target, Gap, Ford, Block, News, …) count only next to a market
  word (shares, stock, earnings, Inc, CEO, …), and bare symbols (``IT``, ``ALL``, ``A``) never count.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"

_SYMBOL = r"[A-Z]{1,5}(?:[.-][A-Z]{1,2})?"
CASHTAG = re.compile(rf"(?<![\w$])\$({_SYMBOL}|[a-z]{{1,5}})(?![\w])")
EXCHANGE = re.compile(rf"\b(?:NASDAQ|NYSE|NYSEARCA|NYSEAMERICAN|AMEX|BATS|TSX|LSE|OTC|OTCMKTS)\s?:\s?({_SYMBOL})\b")

# Reuters instrument codes of US venues: .O/.OQ Nasdaq, .N NYSE, .P NYSE Arca, .K consolidated, .PK/.OB OTC.
# A lower-case letter before the suffix is the share class (BRKa.N = BRK.A -> BRK-A). Not .A (NYSE American):
# "<MOG.A>" is as likely share class A, and a wrong guess names a symbol that does not trade.
RIC = re.compile(r"<([A-Z]{1,5})([a-z])?\.(?:OQ|O|N|P|K|PK|OB)>")
RIC_PARENTHESISED = re.compile(r"\(([A-Z]{1,5})([a-z])?\.(?:OQ|O|N)\)")
# "FB Financial (FBK)": a symbol in parentheses right after a capitalised name.
PARENTHESISED = re.compile(rf"(?<=[A-Za-z.&]) \(({_SYMBOL})\)")
NOT_SYMBOLS = {
    "CEO",
    "CFO",
    "COO",
    "CTO",
    "IPO",
    "GDP",
    "ECB",
    "FED",
    "SEC",
    "EU",
    "US",
    "USA",
    "UK",
    "AI",
    "EV",
    "ETF",
    "CPI",
    "PPI",
    "FOMC",
    "OPEC",
    "IMF",
    "NYSE",
    "AMEX",
    "LSE",
    "TSX",
    "OTC",
    "PR",
    "EPS",
    "ESG",
    "FDA",
    "DOJ",
    "FTC",
    "WHO",
    "NATO",
    "UN",
    "BOE",
    "BOJ",
    "PBOC",
    "PMI",
    "ISM",
    "YOY",
    "QOQ",
    "TV",
    "API",
    "IRS",
    "FX",
    "LNG",
    "AG",
    "SA",
    "NV",
    "PLC",
    "LLC",
    "LP",
    "INC",
    "CORP",
    "CO",
    "LTD",
    "TBA",
    "NA",
    "Q",
    "II",
    "III",
    "IV",
}

# Words that are also company short names; such a name needs a market word nearby to count.
COMMON_WORDS = {
    "apple",
    "ball",
    "block",
    "match",
    "news",
    "fox",
    "waters",
    "progressive",
    "target",
    "gap",
    "visa",
    "ford",
    "oracle",
    "meta",
    "general",
    "public",
    "united",
    "american",
    "first",
    "southern",
    "national",
    "discover",
    "live",
    "snap",
    "crown",
    "key",
    "state",
    "regions",
    "citizens",
    "principal",
    "assurant",
    "ge",
    "hess",
    "lowe's",
    "best",
    "dominion",
    "entergy",
    "eversource",
    "equity",
    "essex",
    "federal",
    "cardinal",
    "amcor",
    "align",
    "ameren",
    "arch",
    "avery",
    "copart",
    "corning",
    "delta",
    "eaton",
    "fortive",
    "globe",
    "kellogg",
    "loews",
    "mosaic",
    "nasdaq",
    "paychex",
    "rollins",
    "sysco",
    "textron",
    "trane",
    "tyson",
    "universal",
    "ventas",
    "viatris",
    "wabtec",
    "welltower",
    "xylem",
    "zoetis",
    "insulet",
    "jacobs",
    "leidos",
    "masco",
}
CONTEXT_WORDS = re.compile(
    r"\b(shares?|stocks?|Inc|Corp|Co|CEO|CFO|earnings|revenue|profit|sales|quarter|Q[1-4]|analysts?|upgrades?|"
    r"downgrades?|price target|dividend|buyback|acquires?|acquisition|merger|deal|sues|lawsuit|guidance|IPO|"
    r"NYSE|Nasdaq|NASDAQ|rating|outlook|forecast|results|layoffs|recalls?|investors?|stake)\b"
)
CONTEXT_WINDOW = 40  # characters either side of the name


@dataclass(frozen=True)
class Lexicon:
    """Company names -> ticker, split by whether they need a market word nearby."""

    plain: dict[str, str]
    contextual: dict[str, str]
    plain_re: re.Pattern | None
    contextual_re: re.Pattern | None


def _pattern(names: dict[str, str]) -> re.Pattern | None:
    if not names:
        return None
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w&$-])({alternatives})(?:'s)?(?![\w&-])")


def build_lexicon(rows: list[tuple[str, str, bool]]) -> Lexicon:
    """rows: (ticker, name, needs_context). Single-word names that are ordinary words need context."""
    plain: dict[str, str] = {}
    contextual: dict[str, str] = {}
    for ticker, name, needs_context in rows:
        name = name.strip()
        if len(name) < 2:
            continue
        if needs_context or (" " not in name and name.lower() in COMMON_WORDS):
            contextual[name] = ticker
            plain.pop(name, None)
        elif name not in contextual:
            plain[name] = ticker
    return Lexicon(plain, contextual, _pattern(plain), _pattern(contextual))


@lru_cache(maxsize=1)
def default_lexicon() -> Lexicon:
    rows: list[tuple[str, str, bool]] = []
    with (DATA / "sp500.csv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            rows.append((r["ticker"], r["name"], False))
            if r["alias"]:
                rows.append((r["ticker"], r["alias"], False))
    with (DATA / "aliases.csv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            rows.append((r["ticker"], r["alias"], r["needs_context"] == "1"))
    return build_lexicon(rows)


def extract(text: str, lexicon: Lexicon | None = None) -> tuple[str, ...]:
    """Tickers in order of first mention, without repeats."""
    lex = lexicon or default_lexicon()
    found: list[tuple[int, str]] = []
    for m in CASHTAG.finditer(text):
        found.append((m.start(), m.group(1).upper()))
    for m in EXCHANGE.finditer(text):
        found.append((m.start(), m.group(1)))
    for pattern in (RIC, RIC_PARENTHESISED):
        for m in pattern.finditer(text):
            found.append((m.start(), m.group(1) + (f".{m.group(2).upper()}" if m.group(2) else "")))
    rics = {m.start() + 1 for m in RIC_PARENTHESISED.finditer(text)}
    for m in PARENTHESISED.finditer(text):
        if m.group(1) not in NOT_SYMBOLS and m.start(1) not in rics:
            found.append((m.start(), m.group(1)))
    if lex.plain_re:
        found.extend((m.start(), lex.plain[m.group(1)]) for m in lex.plain_re.finditer(text))
    if lex.contextual_re:
        for m in lex.contextual_re.finditer(text):
            around = text[max(0, m.start() - CONTEXT_WINDOW) : m.end() + CONTEXT_WINDOW]
            if CONTEXT_WORDS.search(around) or CASHTAG.search(around):
                found.append((m.start(), lex.contextual[m.group(1)]))
    return tuple(dict.fromkeys(t.replace(".", "-") for _, t in sorted(found)))
