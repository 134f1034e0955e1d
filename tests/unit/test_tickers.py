"""Ticker extraction: rules on hand-made cases, and precision/recall on the hand-labelled sample."""

import csv
from pathlib import Path

import pytest

from finsent.ingest.tickers import build_lexicon, extract

SAMPLE = Path(__file__).parents[1] / "fixtures" / "ticker_sample.csv"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$aapl and $TSLA up; $5 coffee", ("AAPL", "TSLA")),
        ("NASDAQ:MSFT and NYSE: BRK.B rally", ("MSFT", "BRK-B")),
        ("IT spending up for ALL firms, A new high", ()),
        ("FB Financial (FBK) CEO on results", ("FBK",)),
        ("The ECB (ECB) and the Fed (FOMC)", ()),
        ("Target shares fall", ("TGT",)),
        ("Target date funds", ()),
        ("Apple's iPhone sales", ("AAPL",)),
        # Reuters instrument codes: US venues name the symbol, a lower-case letter is the share class
        ("Results from <RIVN.O> due", ("RIVN",)),
        ("<F.N> and <HOOD.OQ> and <BRKa.N>", ("F", "HOOD", "BRK-A")),
        ("Rivian Automotive Inc (RIVN.O) falls", ("RIVN",)),  # was "RIVN-O", a ticker nobody trades
        ("Vodafone <VOD.L> and Toyota <7203.T>", ()),  # other markets: no US symbol
        ("Class A (MOG.A) and <MOG.A> rise", ("MOG-A",)),  # .A: a share class as much as NYSE American
    ],
)
def test_rules(text, expected):
    assert extract(text) == expected


def test_lexicon_marks_common_words_contextual():
    lex = build_lexicon([("TGT", "Target", False), ("AAPL", "Apple Inc.", False)])
    assert "Target" in lex.contextual and "Apple Inc." in lex.plain


def test_precision_and_recall_on_hand_labelled_sample():
    tp = fp = fn = 0
    with SAMPLE.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            gold = set(row["tickers"].split())
            got = set(extract(row["text"]))
            tp += len(gold & got)
            fp += len(got - gold)
            fn += len(gold - got)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    print(
        f"ticker extraction on {SAMPLE.name}: precision {precision:.3f} recall {recall:.3f} (tp {tp}, fp {fp}, fn {fn})"
    )
    assert precision >= 0.95
    assert recall >= 0.80
