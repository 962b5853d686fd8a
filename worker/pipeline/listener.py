"""The LISTEN connection: wake-ups for the dispatcher, never the source of truth.

Its own autocommit connection, straight to PostgreSQL (not from the pool, not through a
transaction pooler). After every (re)connect it LISTENs first and then asks the dispatcher
to drain, so nothing committed while it was away is left behind. A connection that has been
quiet for ``probe_after`` seconds is probed with ``SELECT 1`` (a half-open socket can stay
silent forever); any failure reconnects with capped exponential backoff and jitter.

Wake-ups can be paused (:meth:`Listener.pause`): while the dispatcher is busy claiming
back to back (it polls on its own, see worker/pipeline/polling.py), every notification is
pure cost, about 120 us of this process's CPU plus PostgreSQL's work to deliver it, and at
saturation that is more than the rest of the pipeline's cost per event. Paused, the
connection UNLISTENs and is only probed; resumed, it LISTENs again and then asks for a
drain (as after a reconnect), so an event committed in between is never left waiting.

A ``position_state_change`` payload whose ``old_status`` is null (a position inserted) is
also told to the dispatcher as a new position: its first event is no claim's yet, so a
drainer paused with nothing to take may claim again (worker/pipeline/dispatcher.py). It is
a hint like any wake-up: a forged or lost one costs a claim or a pause, never an event.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
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
        on_new_position: Callable[[], None] = lambda: None,
    ) -> None:
        self.conninfo, self.on_wake, self.log, self.metrics = conninfo, on_wake, log, metrics
        self.on_new_position = on_new_position
        self.probe_after, self.reconnect_max = probe_after, reconnect_max
        self.channels, self.connect_timeout = tuple(channels), connect_timeout
        self.connected = False
        self.listening = False  # LISTEN in place (False while paused or reconnecting)
        self.notifications = 0
        self.pauses = 0  # how often wake-ups were paused (tests, debugging)
        self._paused = False
        self._resumed: anyio.Event | None = None  # set by resume(); one per wait (_sit_out)
        self.last_reconnect: float | None = None
        self._rng = random.Random()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen forever; reports readiness once the first LISTEN is in place."""
        failures = 0
        started = False
        while True:
            try:
                async with self._connection() as conn:
                    await self._listen(conn)
                    failures = 0
                    if not started:
                        started = True
                        task_status.started()
                    await self._receive(conn)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                self.connected = self.listening = False
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

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A new connection, closed however the block is left, cancellation included."""
        conn = await self._connect()
        try:
            yield conn
        finally:
            # Closed here rather than by the connection's own ``async with``: that exit rolls
            # back first (nothing to undo in autocommit), a rollback may yield to the loop,
            # and a cancelled scope cancels it there again, so close() would never run.
            with anyio.CancelScope(shield=True):
                await conn.close()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        with anyio.fail_after(self.connect_timeout):
            return await psycopg.AsyncConnection.connect(
                self.conninfo,
                autocommit=True,
                connect_timeout=int(self.connect_timeout),
                **KEEPALIVES,
            )

    def pause(self) -> None:
        """Stop receiving wake-ups (the caller polls): UNLISTEN at the next notification."""
        self._paused = True

    def resume(self) -> None:
        """Receive wake-ups again: LISTEN, then one wake-up to drain what came meanwhile."""
        if self._paused:
            self._paused = False
            if self._resumed is not None:
                self._resumed.set()

    async def _listen(self, conn: psycopg.AsyncConnection[Any], *, log: bool = True) -> None:
        for channel in self.channels:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        self.connected = self.listening = True
        if log:
            self.log.info("listener_connected", channels=list(self.channels))
        self.on_wake()  # drain whatever was committed while nobody listened

    async def _receive(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            if self._paused:
                await self._sit_out(conn)
                continue
            received = 0
            # aclosing: leaving the loop early must release the connection's lock now
            async with aclosing(conn.notifies(timeout=self.probe_after)) as notifies:
                async for notify in notifies:
                    received += 1
                    self._handle(notify.channel, notify.payload)
                    if self._paused:
                        break
            if not received:
                await self._probe(conn)

    async def _sit_out(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Paused: UNLISTEN, probe the quiet connection until resumed, LISTEN again."""
        await conn.execute("UNLISTEN *")
        self.listening = False
        self.pauses += 1
        self.log.debug("wakeups_paused")
        while self._paused:
            # a fresh event each time: resumed and paused again before this task ran, the
            # previous one is set for good (waiting on it again would spin)
            self._resumed = resumed = anyio.Event()
            with anyio.move_on_after(self.probe_after) as quiet:
                await resumed.wait()
            if quiet.cancelled_caught:
                await self._probe(conn)
        await self._listen(conn, log=False)
        self.log.debug("wakeups_resumed")

    async def _probe(self, conn: psycopg.AsyncConnection[Any]) -> None:
        with anyio.fail_after(self.connect_timeout):
            await conn.execute("SELECT 1")

    def _handle(self, channel: str, payload: str) -> None:
        self.notifications += 1
        if channel == STATE_CHANNEL:
            try:
                doc = parse_notification(payload)
            except MalformedEvent as exc:
                self.log.warning(
                    "notification_malformed", channel=channel, error=str(exc), payload=payload[:200]
                )
            else:
                if doc["old_status"] is None:  # a position inserted: no claim holds it yet
                    self.on_new_position()
        self.on_wake()
