"""Would a word list (VADER) beside the model read news better? Measured before building a rule on it.

Why: #15 reports that on clearly polar news headlines VADER (the lexicon stocksight uses) beats the model on
polar accuracy, while the model wins on the graded score. A decision rule that adds VADER's scores to the model's
calibrated sentiment logits could combine the two. Before fitting one on allowed data, this measures the most any
such rule could reach: a multinomial logistic regression on [model logits, VADER neg/neu/pos/compound] fitted on
the news test sets THEMSELVES (each set weighted equally, as the news score weighs them), against the same fit on
the model's logits alone. That fit is an upper bound for scale, never a candidate: it is scored on what it saw.

    pip install vaderSentiment==3.3.2   # MIT; not a finsent dependency
    .venv/bin/python scripts/vader_probe.py [--data-dir ../shared/data] [MODEL_DIR]

Needs the evaluation data (``../shared/data``); ~1.5 min on 2 CPU cores (torch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", type=Path, default=None, help="model directory (default: the shipped one)")
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    args = ap.parse_args(argv)

    try:
        from sklearn.linear_model import LogisticRegression
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as err:
        print(f"vader_probe: {err} (pip install vaderSentiment==3.3.2 scikit-learn)", file=sys.stderr)
        return 2
    from finsent.errors import MissingData
    from finsent.model.classifier import Classifier
    from finsent.model.data import NEWS_SETS, check_data_dir, domain_of, twitter_sentiment
    from finsent.model.report import LogitCache
    from finsent.model.text import prepare

    try:
        check_data_dir(args.data_dir)
    except MissingData as err:
        print(f"vader_probe: {err}", file=sys.stderr)
        return 2
    clf = Classifier.load(args.model, backend="torch", device="cpu")
    logits, vader = LogitCache(clf), SentimentIntensityAnalyzer()
    sets = [(ns.name, ns.load(args.data_dir), ns.scored) for ns in NEWS_SETS]
    sets.append(("twitter-sentiment (valid)", twitter_sentiment(args.data_dir, "valid"), False))
    rows = []  # (name, scored, model logits / T, vader features, gold)
    for name, examples, scored in sets:
        kept = [(ex.text, prepare(ex.text), ex.sentiment) for ex in examples]
        kept = [k for k in kept if k[1]]
        _, z = logits([k[1] for k in kept], domain_of(examples))
        v = [vader.polarity_scores(k[0]) for k in kept]
        features = np.array([[d["neg"], d["neu"], d["pos"], d["compound"]] for d in v])
        rows.append((name, scored, z / clf.meta.temperature_sentiment, features, np.array([k[2] for k in kept])))
        print(f"scored {name}: {len(kept)}", file=sys.stderr)

    def vader_alone(f: np.ndarray) -> np.ndarray:  # VADER's own thresholds on the compound score
        return np.where(f[:, 3] >= 0.05, 2, np.where(f[:, 3] <= -0.05, 0, 1))

    scored = [r for r in rows if r[1]]
    rules = {"model (argmax)": lambda z, f: z.argmax(1), "VADER alone": lambda z, f: vader_alone(f)}
    for label, with_vader in (("bound: LR on model logits", False), ("bound: LR on logits + VADER", True)):
        x = np.vstack([np.hstack([z, f]) if with_vader else z for _, _, z, f, _ in scored])
        y = np.concatenate([g for *_, g in scored])
        w = np.concatenate([np.full(len(g), len(y) / len(g) / len(scored)) for *_, g in scored])
        fit = LogisticRegression(C=10, max_iter=2000).fit(x, y, sample_weight=w)
        rules[label] = lambda z, f, fit=fit, v=with_vader: fit.predict(np.hstack([z, f]) if v else z)

    print("| set | n | " + " | ".join(rules) + " |")
    print("|---|---|" + "---|" * len(rules))
    news = {k: [] for k in rules}
    for name, is_scored, z, f, gold in rows:
        accs = {k: float((rule(z, f) == gold).mean()) for k, rule in rules.items()}
        for k, a in accs.items():
            if is_scored:
                news[k].append(a)
        print(f"| {name} | {len(gold)} | " + " | ".join(f"{a:.3f}" for a in accs.values()) + " |")
    print("| **news score** | | " + " | ".join(f"**{np.mean(v):.3f}**" for v in news.values()) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
