"""The project's own exceptions. Adapters translate driver errors into these."""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error position-worker raises on purpose."""


class SettingsError(WorkerError):
    """A configuration value is missing or invalid. The message names the key."""


class MigrationError(WorkerError):
    """A migration cannot be applied (edited after applying, bad SQL, ...)."""


class IllegalTransition(WorkerError):
    """A status change that the lifecycle does not allow."""

    def __init__(self, entity: str, old: str | None, new: str, detail: str = "") -> None:
        self.entity, self.old, self.new = entity, old, new
        suffix = f" ({detail})" if detail else ""
        super().__init__(f"illegal {entity} transition: {old} -> {new}{suffix}")


class RetryLater(WorkerError):
    """Not the event's fault (an exchange ban, an exchange outage): handle it again after
    ``delay`` seconds, without counting an attempt toward parking it as dead."""

    def __init__(self, delay: float, reason: str) -> None:
        self.delay = delay
        super().__init__(reason)


class Conflict(WorkerError):
    """PostgreSQL rolled a transaction back to settle a conflict with a concurrent one
    (SQLSTATE class 40: a deadlock, a serialization failure). Nothing of it was kept, so
    running the whole transaction again is safe. Not an outage: the server answers."""


class Outage(WorkerError):
    """A server the worker needs is unavailable (``target``: ``database`` or ``redis``).

    Never the event's fault: raised from a handler (or classified as one by the dispatcher,
    ``worker.driver_errors.outage_of``), the event is deferred without counting an
    attempt, with a backoff shared by every event that meets the same outage."""

    target = "unknown"


class DatabaseUnavailable(Outage):
    """PostgreSQL cannot be reached or dropped the connection."""

    target = "database"


class StreamUnavailable(Outage):
    """Redis cannot be reached or dropped the connection."""

    target = "redis"
