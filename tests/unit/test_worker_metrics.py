"""The worker's counters and lag gauges as Prometheus sees them (a real registry, scraped as text)."""

from collections import namedtuple

from prometheus_client import generate_latest

from finsent.stream.metrics import FAILED_REASONS, REJECTED_REASONS, WorkerMetrics
from finsent.stream.worker import export_consumer_lag

TP = namedtuple("TP", "topic partition")  # the shape of Faust's TP: what an assignment holds


def scrape(metrics: WorkerMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_every_watched_reason_is_exported_at_zero_before_the_first_failure():
    """A series that first appears at N is no increase to Prometheus: a fresh worker's first flood of dead letters
    (after every restart) never raised DeadLettersGrowing."""
    text = scrape(WorkerMetrics())
    for reason in FAILED_REASONS:
        assert f'finsent_worker_items_failed_total{{reason="{reason}"}} 0.0' in text
    for reason in REJECTED_REASONS:
        assert f'finsent_window_rejected_items_total{{reason="{reason}"}} 0.0' in text
    assert 'finsent_worker_items_corrected_total{fix="clamped"} 0.0' in text


def test_the_lag_of_a_partition_a_rebalance_took_away_leaves_this_workers_metrics():
    """The last lag of a partition that went to another worker stayed here for ever: ConsumerLagHigh summed it
    with the new owner's 0 and fired on a pipeline that had caught up."""
    metrics = WorkerMetrics()
    highwater = {TP("raw", 0): 900, TP("raw", 1): 700, TP("raw", 2): 50}
    positions = {("raw", 0): 300, ("raw", 1): 400, ("raw", 2): 50}
    export_consumer_lag(metrics, positions, list(highwater), highwater.get)
    assert 'finsent_worker_consumer_lag{partition="0",topic="raw"} 600.0' in scrape(metrics)

    export_consumer_lag(metrics, positions, [TP("raw", 2)], highwater.get)  # the rebalance: 0 and 1 went away
    text = scrape(metrics)
    assert 'partition="0"' not in text and 'partition="1"' not in text
    assert 'finsent_worker_consumer_lag{partition="2",topic="raw"} 0.0' in text
    assert positions == {("raw", 2): 50}  # handed back later, 0 reports nothing until its next delivered batch
    export_consumer_lag(metrics, positions, [TP("raw", 0), TP("raw", 2)], highwater.get)
    assert 'partition="0"' not in scrape(metrics)
