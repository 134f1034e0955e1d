"""Would an ensemble of the runs we have make a better teacher for the default model? Measured before training one.

Why: "an ensemble of several seeds distilled into one student" is one of #15's candidates; a student distilled
from an ensemble can at best approach the ensemble, so if averaging the existing default-model runs (v1, v2, v4:
same base, different recipes and seeds) does not beat v2 on news, distilling it cannot either, and the ~1.5 h of
CPU training it costs is saved. Averages the calibrated probabilities of the given models on every news set,
Twitter sentiment and Twitter topic, and prints one accuracy table (markdown) for each model and each combination.

    .venv/bin/python scripts/ensemble_probe.py [--data-dir ../shared/data] MODEL_DIR [MODEL_DIR ...]

Needs the evaluation data (``../shared/data``); takes ~2 min per model on 2 CPU cores (torch).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    args = ap.parse_args(argv)

    from finsent.errors import MissingData
    from finsent.model.classifier import Classifier
    from finsent.model.data import (
        NEWS_SETS,
        check_data_dir,
        domain_of,
        phrasebank_finbert_test,
        twitter_sentiment,
        twitter_topic,
    )
    from finsent.model.quality import softmax
    from finsent.model.text import prepare

    try:
        check_data_dir(args.data_dir)
    except MissingData as err:
        print(f"ensemble_probe: {err}", file=sys.stderr)
        return 2
    d = args.data_dir
    sets = [(ns.name, ns.load(d), "sentiment", ns.scored) for ns in NEWS_SETS]
    # PhraseBank's held-out part (the research variant trains on the rest), so every research goal row is here
    sets += [("phrasebank-50-finbert-test", phrasebank_finbert_test(d), "sentiment", False)]
    sets += [("twitter-sentiment", twitter_sentiment(d, "valid"), "sentiment", False)]
    sets += [("twitter-topic", twitter_topic(d, "valid"), "topic", False)]
    probs: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for model in args.models:
        started = time.monotonic()
        clf = Classifier.load(model, backend="torch")
        for name, examples, head, _ in sets:
            texts = [prepare(ex.text) for ex in examples]
            keep = [i for i, t in enumerate(texts) if t]
            topic, sentiment = clf.logits([texts[i] for i in keep], domain_of(examples))
            logits, t = (
                (topic, clf.meta.temperature_topic) if head == "topic" else (sentiment, clf.meta.temperature_sentiment)
            )
            gold = np.array([getattr(examples[i], head) for i in keep])
            probs[(str(model), name)] = (softmax(logits, t), gold)
        print(f"scored {model} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)

    names = {str(m): m.name for m in args.models}
    combos = [list(c) for k in range(1, len(args.models) + 1) for c in itertools.combinations(map(str, args.models), k)]
    print("| set | " + " | ".join(" + ".join(names[m] for m in c) for c in combos) + " |")
    print("|---|" + "---|" * len(combos))
    news: dict[int, list[float]] = {k: [] for k in range(len(combos))}
    for name, _, _, scored in sets:
        row = []
        for k, combo in enumerate(combos):
            p = np.mean([probs[(m, name)][0] for m in combo], axis=0)
            accuracy = float((p.argmax(1) == probs[(combo[0], name)][1]).mean())
            row.append(f"{accuracy:.3f}")
            if scored:
                news[k].append(accuracy)
        print(f"| {name} | " + " | ".join(row) + " |")
    print("| **news score** | " + " | ".join(f"**{np.mean(v):.3f}**" for v in news.values()) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
