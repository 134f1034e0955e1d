"""Regenerate local/data/demo_headlines.csv from ../shared/data (MIT Twitter financial news), by a developer.

    python scripts/build_demo_headlines.py ../shared/data > local/data/demo_headlines.csv

background: 2,400 headlines drawn at random (seed 11) from both Twitter training sets;
burst: every Bearish (negative) headline about oil (oil, crude, OPEC, Brent, WTI), replayed close
together by the demo feeds so that a negative surge on Energy | Oil (and the oil desk's ticker) shows.
"""

import csv
import random
import re
import sys
from pathlib import Path

data = Path(sys.argv[1])
OIL = re.compile(r"\b(oil|crude|opec|brent|wti)\b", re.I)
topic = [r["text"] for r in csv.DictReader((data / "twitter-topic" / "train.csv").open())]
sent = list(csv.DictReader((data / "twitter-sentiment" / "train.csv").open()))
burst = [r["text"] for r in sent if r["label"] == "0" and OIL.search(r["text"])]
pool = [t for t in topic + [r["text"] for r in sent] if t not in set(burst)]
rng = random.Random(11)
background = rng.sample(pool, 2400)
out = csv.writer(sys.stdout)
out.writerow(["kind", "text"])
for t in background:
    out.writerow(["background", " ".join(t.split())])
for t in burst:
    out.writerow(["burst", " ".join(t.split())])
