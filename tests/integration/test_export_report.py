"""``finsent export``'s table shows every figure the gate judges, precisely enough to see why a row was refused,
and says per refused row which criterion failed."""

from __future__ import annotations

from finsent.cli.model import export_table


def _row(topic=0.9, sentiment=0.87, agreement=1.0, invariance=1.0, speed=1.0, accepted=True) -> dict:
    return {
        "topic_accuracy": topic,
        "sentiment_accuracy": sentiment,
        "agreement_with_fp32": agreement,
        "batch_invariance": invariance,
        "texts_per_s": 300.0 * speed,
        "speedup_vs_fp32": speed,
        "accepted": accepted,
    }


REPORT = {
    "backends": {
        "torch": _row(),
        "onnx-int8:dynamic-pc": _row(agreement=0.9795, invariance=0.959, speed=2.1, accepted=False),
        "onnx-int8:static": _row(topic=0.8960, agreement=0.9886, speed=1.9, accepted=False),
        "onnx": _row(speed=1.3),
    },
    "max_accuracy_drop": 0.003,
    "min_agreement": 0.98,
    "min_batch_invariance": 0.999,
    "int8_recipe": None,
    "recommended": "onnx",
}


def test_the_export_table_shows_invariance_four_decimals_and_why_each_row_was_refused():
    lines = export_table(REPORT)
    header, torch_row, dynamic, dynamic_why, static, static_why, onnx, gate = lines
    assert static.split()[-1] == "False"
    assert "agree" in header and "invariant" in header
    assert " 0.9795 " in dynamic and " 0.9590 " in dynamic  # not 0.980, which read as passing 0.98
    assert dynamic_why.strip() == "refused: agreement 0.9795 < 0.98; batch invariance 0.9590 < 0.999"
    assert static_why.strip() == "refused: topic accuracy 0.40 pt below fp32 (max 0.30)"
    assert "refused" not in torch_row + onnx and onnx.rstrip().endswith("True")
    assert "batch invariance >= 0.999" in gate and "agreement >= 0.98" in gate
    assert "int8 recipe: none passed" in gate and gate.endswith("recommended CPU backend: onnx")


def test_the_gate_wants_each_head_to_agree_not_just_the_pool():
    """Pooled over both validation sets, the topic set (4,117 texts) outweighs sentiment (2,388): a sentiment head
    agreeing on 0.963 of its texts passed at a pooled 0.980. Each head must agree on 0.98 of its own texts."""
    from finsent.model.export import accepted, refusals

    base = _row()
    weak_sentiment = {**_row(agreement=0.9801), "agreement_topic": 0.99, "agreement_sentiment": 0.963}
    assert not accepted(weak_sentiment, base, 0.003, 0.98)
    assert refusals(weak_sentiment, base, 0.003, 0.98) == ["sentiment agreement 0.9630 < 0.98"]
    both = {**_row(agreement=0.9886), "agreement_topic": 0.9886, "agreement_sentiment": 0.9887}  # the shipped static
    assert accepted(both, base, 0.003, 0.98)
    assert accepted(_row(agreement=0.9886), base, 0.003, 0.98)  # a table from before per-head figures: pooled only
