"""Records hold finite floats only: JSON has no NaN or infinity, so a record that held one could be written (as
null) but never read back."""

import math

import pytest
from factories import T0, news_item, scored_item, surge_alert

from finsent.records import RecordError, SurgeAlert


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda v: surge_alert(at=T0, zscore=v), "zscore"),
        (lambda v: surge_alert(at=T0, baseline_mean=v), "baseline_mean"),
        (lambda v: surge_alert(at=T0, baseline_std=v), "baseline_std"),
        (lambda v: scored_item(news_item(at=T0), latency_s=v), "latency_s"),
    ],
    ids=["zscore", "baseline_mean", "baseline_std", "latency_s"],
)
def test_a_non_finite_float_is_refused_so_every_record_round_trips(build, field, bad):
    """JSON has no NaN or infinity: ``to_json`` wrote them as null, which ``from_json`` then refused, so an alert
    with an infinite z-score could be published but never read back. Such a record is refused where it is made."""
    with pytest.raises(ValueError, match=f"{field}\n.*finite number"):
        build(bad)
    good = build(1.5)
    assert type(good).from_json(good.to_json()) == good


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_a_wire_record_with_a_non_finite_float_is_a_record_error(token):
    """A producer that writes the non-standard tokens (Python's json.dumps does) makes an invalid record, not one
    that is accepted and then written back as null."""
    raw = surge_alert(at=T0).to_json().decode().replace('"zscore":4.2', f'"zscore":{token}')
    assert f'"zscore":{token}' in raw
    with pytest.raises(RecordError, match="zscore: Input should be a finite number"):
        SurgeAlert.from_json(raw)
