"""Prometheus metrics for operators (endpoint off by default: ``metrics.port``; the app
serves it, see worker/app.py)."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from worker.lifecycle import POSITION_STATUSES

POSITIONS_SAMPLE_SECONDS: Final = 30.0  # how often the app counts positions by status


class BatchHistogram(Collector):
    """A histogram fed a batch of observations at a time (``observe_many``).

    prometheus_client's ``Histogram.observe`` takes a lock and walks the buckets for every
    value (~2.5 us); the dispatcher observes one value per event, which would be a tenth of
    the per-event cost of a backlog drain. Here a batch costs one lock and a bisect per value.
    Exposed exactly like a ``Histogram`` (``_bucket{le=...}``, ``_sum``, ``_count``).
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = sorted(buckets)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        counts, bounds = self._counts, self.bounds
        with self._lock:
            total = self._sum  # added one by one, as Histogram does (same rounding)
            for value in values:
                counts[bisect_left(bounds, value)] += 1
                total += value
            self._sum = total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, count in zip([*self.bounds, float("inf")], counts, strict=True):
            cumulative += count
            buckets.append((_le(bound), cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


PREFIX: Final = "position_worker_"


class Metrics:
    """One registry per worker (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        counter, gauge = self._counter, self._gauge
        self.events_processed = counter("events_processed", "Events published and handled", "kind")
        self.handler_failures = counter("handler_failures", "Handler failures", "handler")
        self.events_dead = counter("events_dead", "Events parked as dead")
        self.reconnects = counter("reconnects", "Reconnections", "target")
        self.outbox_lag = gauge("outbox_lag_seconds", "Age of the oldest pending event")
        self.outbox_pending = gauge("outbox_pending", "Events waiting to be handled")
        self.wakeups_paused = gauge(
            "wakeups_paused",
            "1 while the dispatcher polls on its own and the listener's wake-ups are paused",
        )
        self.publish_latency = self._histogram(
            "publish_seconds",
            "Time to publish one batch to Redis",
            (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.commit_to_stream = BatchHistogram(
            f"{PREFIX}commit_to_stream_seconds",
            "From the event's database write to its stream entry",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=self.registry,
        )
        self.outage = gauge(
            "outage",
            "1 while the worker waits out an outage of the target (database, redis)",
            "target",
        )
        self.outage_deferrals = counter(
            "outage_deferrals",
            "Events deferred, without counting an attempt, because of an outage",
            "target",
        )
        for target in ("database", "redis"):
            self.outage.labels(target).set(0)  # exported before the first outage
            self.outage_deferrals.labels(target)
        self.reconcile_pass = self._histogram(
            "reconcile_pass_seconds",
            "Time of one reconcile pass over the orders in flight",
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )
        self.reconcile_orders_read = counter(
            "reconcile_orders_read",
            "Orders in flight the reconcile passes read (every one at a listing; between "
            "listings only those to send and those that moved)",
        )
        self.positions = gauge(
            "positions",
            f"Positions by status, counted every {POSITIONS_SAMPLE_SECONDS:.0f} s "
            "(the whole table: every replica reports the same counts)",
            "status",
        )

    def _histogram(self, name: str, documentation: str, buckets: Sequence[float]) -> Histogram:
        return Histogram(f"{PREFIX}{name}", documentation, buckets=buckets, registry=self.registry)

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(f"{PREFIX}{name}", documentation, labels, registry=self.registry)

    def _gauge(self, name: str, documentation: str, *labels: str) -> Gauge:
        return Gauge(f"{PREFIX}{name}", documentation, labels, registry=self.registry)

    def set_positions(self, counts: Mapping[str, int]) -> None:
        """One sample of ``positions_by_status``: a status with no positions reads 0, so a
        series that drops to nothing does not keep its last count."""
        others = sorted(counts.keys() - set(POSITION_STATUSES))  # none while the CHECK holds
        for status in (*POSITION_STATUSES, *others):
            self.positions.labels(status).set(counts.get(status, 0))
