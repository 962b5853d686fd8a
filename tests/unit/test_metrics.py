"""The batch-fed histogram must expose exactly what prometheus_client's Histogram would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from worker.lifecycle import POSITION_STATUSES
from worker.metrics import BatchHistogram, Metrics

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


def exposition(registry: CollectorRegistry) -> list[str]:
    """The sample lines, without ``_created`` (a timestamp only the stock class has)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if line and "_created" not in line]


values = st.lists(
    st.one_of(
        st.sampled_from(BUCKETS),  # exactly on a bound: counted in that bucket (le)
        st.floats(min_value=0, max_value=10, allow_nan=False),
    ),
    max_size=50,
)


@given(batches=st.lists(values, max_size=5))
def test_batches_expose_the_same_buckets_sum_and_count_as_a_histogram(
    batches: list[list[float]],
) -> None:
    stock_registry, batch_registry = CollectorRegistry(), CollectorRegistry()
    stock = Histogram("lat_seconds", "latency", buckets=BUCKETS, registry=stock_registry)
    batched = BatchHistogram("lat_seconds", "latency", BUCKETS, batch_registry)
    for batch in batches:
        for value in batch:
            stock.observe(value)
        batched.observe_many(batch)
    assert exposition(batch_registry) == exposition(stock_registry)


def test_positions_by_status_reads_zero_for_a_status_with_none_left() -> None:
    metrics = Metrics()

    def sampled() -> dict[str, float]:
        return {
            s.labels["status"]: s.value
            for family in metrics.registry.collect()
            if family.name == "position_worker_positions"
            for s in family.samples
        }

    assert sampled() == {}  # nothing before the first count
    metrics.set_positions({"open": 3, "closing": 1, "closed": 40})
    first = sampled()
    assert set(first) == set(POSITION_STATUSES)  # every status, zero where none
    assert (first["open"], first["closing"], first["closed"], first["created"]) == (3, 1, 40, 0)
    metrics.set_positions({"closed": 44})
    assert sampled()["open"] == sampled()["closing"] == 0 and sampled()["closed"] == 44
