"""The LISTEN connection: wake-ups for the dispatcher, never the source of truth.

Its own autocommit connection, straight to PostgreSQL (not from the pool, not through a
transaction pooler). After every (re)connect it LISTENs first and then asks the dispatcher
to drain, so nothing committed while it was away is left behind. A connection that has been
quiet for ``probe_after`` seconds is probed with ``SELECT 1`` (a half-open socket can stay
silent forever); any failure reconnects with capped exponential backoff and jitter.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio
import psycopg
from anyio.abc import TaskStatus
from psycopg import sql

from worker.events import MalformedEvent, parse_notification, retry_delay
from worker.metrics import Metrics

STATE_CHANNEL: Final = "position_state_change"
WAKEUP_CHANNEL: Final = "position_worker_wakeup"
CHANNELS: Final = (STATE_CHANNEL, WAKEUP_CHANNEL)
KEEPALIVES: Final[dict[str, Any]] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


class Listener:
    def __init__(
        self,
        conninfo: str,
        on_wake: Callable[[], None],
        *,
        log: Any,
        metrics: Metrics,
        probe_after: float,
        reconnect_max: float,
        channels: Sequence[str] = CHANNELS,
        connect_timeout: float = 10.0,
    ) -> None:
        self.conninfo, self.on_wake, self.log, self.metrics = conninfo, on_wake, log, metrics
        self.probe_after, self.reconnect_max = probe_after, reconnect_max
        self.channels, self.connect_timeout = tuple(channels), connect_timeout
        self.connected = False
        self.notifications = 0
        self.last_reconnect: float | None = None
        self._rng = random.Random()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen forever; reports readiness once the first LISTEN is in place."""
        failures = 0
        started = False
        while True:
            try:
                async with await self._connect() as conn:
                    await self._listen(conn)
                    failures = 0
                    if not started:
                        started = True
                        task_status.started()
                    await self._receive(conn)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                self.connected = False
                failures += 1
                delay = retry_delay(failures, 0.1, self.reconnect_max, self._rng)
                self.metrics.reconnects.labels("listener").inc()
                self.last_reconnect = time.time()
                self.log.warning(
                    "listener_reconnecting",
                    error=str(exc).strip(),
                    attempt=failures,
                    delay_seconds=round(delay, 3),
                )
                await anyio.sleep(delay)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        with anyio.fail_after(self.connect_timeout):
            return await psycopg.AsyncConnection.connect(
                self.conninfo,
                autocommit=True,
                connect_timeout=int(self.connect_timeout),
                **KEEPALIVES,
            )

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        for channel in self.channels:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        self.connected = True
        self.log.info("listener_connected", channels=list(self.channels))
        self.on_wake()  # drain whatever was committed while nobody listened

    async def _receive(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            received = 0
            async for notify in conn.notifies(timeout=self.probe_after):
                received += 1
                self._handle(notify.channel, notify.payload)
            if not received:
                with anyio.fail_after(self.connect_timeout):
                    await conn.execute("SELECT 1")

    def _handle(self, channel: str, payload: str) -> None:
        self.notifications += 1
        if channel == STATE_CHANNEL:
            try:
                parse_notification(payload)
            except MalformedEvent as exc:
                self.log.warning(
                    "notification_malformed", channel=channel, error=str(exc), payload=payload[:200]
                )
        self.on_wake()
