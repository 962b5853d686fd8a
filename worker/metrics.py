"""Prometheus metrics for operators (endpoint off by default: ``metrics.port``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    """One registry per worker (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_processed = Counter(
            "position_worker_events_processed",
            "Events published and handled",
            ["kind"],
            registry=r,
        )
        self.handler_failures = Counter(
            "position_worker_handler_failures", "Handler failures", ["handler"], registry=r
        )
        self.events_dead = Counter(
            "position_worker_events_dead", "Events parked as dead", registry=r
        )
        self.reconnects = Counter(
            "position_worker_reconnects", "Reconnections", ["target"], registry=r
        )
        self.outbox_lag = Gauge(
            "position_worker_outbox_lag_seconds", "Age of the oldest pending event", registry=r
        )
        self.outbox_pending = Gauge(
            "position_worker_outbox_pending", "Events waiting to be handled", registry=r
        )
        self.publish_latency = Histogram(
            "position_worker_publish_seconds",
            "Time to publish one batch to Redis",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.commit_to_stream = Histogram(
            "position_worker_commit_to_stream_seconds",
            "From the event's database write to its stream entry",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=r,
        )

    def serve(self, host: str, port: int) -> None:
        """Expose ``/metrics`` on ``host:port`` (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)
