"""Regenerate ingest/data/sp500.csv from the pytickersymbols package (MIT), run by a developer, not at run time.

    pip download --no-deps pytickersymbols==1.17.10 && unzip -o pytickersymbols-*.whl -d /tmp/pts
    python scripts/build_ticker_list.py /tmp/pts > ingest/data/sp500.csv

Aliases: the official name, and the name without legal suffixes ("Inc.", "Corporation", …), which is how
headlines name companies. Hand-made aliases for household names live in ingest/data/aliases.csv.
"""

import csv
import re
import sys

sys.path.insert(0, sys.argv[1])
from pytickersymbols.indices_data import INDICES

SUFFIX = re.compile(
    r"[,\s]+(inc\.?|incorporated|corp\.?|corporation|co\.?|company|ltd\.?|limited|plc|n\.v\.|s\.a\.|holdings?|group|"
    r"& co\.?|the|class [a-c]|l\.p\.|lp|llc|ag|se)$",
    re.I,
)


def short(name: str) -> str:
    prev = None
    while prev != name:
        prev, name = name, SUFFIX.sub("", name).strip(" ,.")
    return re.sub(r"^the\s+", "", name, flags=re.I)


out = csv.writer(sys.stdout)
out.writerow(["ticker", "name", "alias"])
for company in sorted(INDICES["S&P 500"]["companies"], key=lambda c: c["symbol"]):
    ticker = company["symbol"].replace(".", "-").upper()
    name = company["name"].strip()
    alias = short(name)
    out.writerow([ticker, name, alias if alias.lower() != name.lower() else ""])
