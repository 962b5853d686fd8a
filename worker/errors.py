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
    """Not the event's fault (an exchange ban, an outage): handle it again after ``delay``
    seconds, without counting an attempt toward parking it as dead."""

    def __init__(self, delay: float, reason: str) -> None:
        self.delay = delay
        super().__init__(reason)


class DatabaseUnavailable(WorkerError):
    """PostgreSQL cannot be reached or dropped the connection."""


class StreamUnavailable(WorkerError):
    """Redis cannot be reached or dropped the connection."""
