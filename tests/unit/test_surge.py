"""Surge detection on hand-built window sequences."""

from datetime import timedelta

from factories import T0, window_stat

from finsent.settings import Surge
from finsent.stream.surge import SurgeDetector

CFG = Surge(
    z_threshold=3.0,
    z_resolve=1.5,
    min_volume=5,
    min_negative_share=0.4,
    ewma_alpha=0.1,
    warmup_windows=5,
    cooldown_s=600,
    critical_z=6.0,
)


def window(i, count, negative, key="topic:Energy | Oil"):
    return window_stat(key, at=T0 + timedelta(minutes=i), count=count, negative=negative)


def run(seq, cfg=CFG):
    d = SurgeDetector(cfg)
    return d, [(i, a) for i, (c, n) in enumerate(seq) if (a := d.observe(window(i, c, n)))]


def test_quiet_topic_never_alerts():
    _, alerts = run([(20, 2 + i % 3) for i in range(60)])
    assert alerts == []


def test_slow_drift_is_absorbed_by_the_baseline():
    _, alerts = run([(20, min(20, 2 + i // 6)) for i in range(90)])  # +1 negative every 6 windows
    assert alerts == []


def test_sudden_burst_is_one_alert_then_resolved():
    seq = [(20, 2)] * 20 + [(30, 24)] * 6 + [(20, 2)] * 10
    _d, alerts = run(seq)
    states = [(a.state, a.alert_id) for _, a in alerts]
    assert [s for s, _ in states] == ["firing", "resolved"]
    assert states[0][1] == states[1][1]  # the same surge
    firing = alerts[0][1]
    assert alerts[0][0] == 20 and firing.severity == "critical" and firing.zscore > 6 and firing.count == 30
    assert firing.baseline_mean < 0.15  # the baseline did not learn from the burst


def test_burst_with_tiny_volume_does_not_alert():
    _, alerts = run([(20, 2)] * 20 + [(3, 3)] * 5 + [(20, 2)] * 5)
    assert alerts == []


def test_flapping_around_the_threshold_is_one_alert():
    # After the warm-up, negative share alternates just above the firing level and just above the resolve level.
    seq = [(20, 2)] * 20 + [(20, 9), (20, 5)] * 10
    _, alerts = run(seq)
    assert [a.state for _, a in alerts] == ["firing"]


def test_escalation_reemits_with_critical_and_cooldown_blocks_refiring():
    cfg = Surge(**{**CFG.model_dump(), "critical_z": 8.0})
    seq = [(20, 2)] * 20 + [(20, 8), (20, 19), (20, 2), (20, 19), (20, 2)]  # z 6 (warning), 17 (critical)
    _, alerts = run(seq, cfg)
    assert [(a.state, a.severity) for _, a in alerts] == [
        ("firing", "warning"),
        ("firing", "critical"),
        ("resolved", "critical"),
    ]
    assert len({a.alert_id for _, a in alerts}) == 1  # the second burst 2 min later falls in the cooldown


def test_keys_are_independent():
    d = SurgeDetector(CFG)
    for i in range(20):
        d.observe(window(i, 20, 2, key="all"))
        d.observe(window(i, 20, 2, key="ticker:USO"))
    assert d.observe(window(20, 20, 18, key="ticker:USO")).state == "firing"
    assert d.state("all").firing is None
