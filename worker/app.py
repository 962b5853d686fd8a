"""The composition root: the one place that builds the real adapters (pools, Redis, the
exchanges), wires them together, owns the task group, and closes every client, server and
thread it made.

``App.run()`` is ``position-worker run``: pools + Redis + exchanges + listener + dispatcher +
lag sampler + heartbeat (+ the engine's watcher, + the metrics endpoint), all children of
one anyio task group. A child that crashes takes the process down with a non-zero exit (the
supervisor restarts it) instead of leaving a half-alive daemon. SIGTERM/SIGINT: stop
claiming, finish the batch in hand within ``shutdown_grace_seconds``, close the connections,
the exchanges' HTTP clients and the metrics server, return normally (exit 0).

Over 300 lines on purpose: it is the one composition root, the only module that knows every
concrete class; split, it would be two wiring places again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial
from typing import Any, Final

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus
from prometheus_client import start_http_server
from psycopg_pool import AsyncConnectionPool

from worker.db import arrays
from worker.db.migrate import require_current_schema
from worker.db.outbox import Outbox
from worker.db.paper_store import PgPaperStore
from worker.db.queries import q
from worker.driver_errors import translated_errors, translated_redis_errors
from worker.errors import Conflict, DatabaseUnavailable, SettingsError, StreamUnavailable
from worker.exchanges.binance import BinanceClient, RateLimitGate
from worker.exchanges.paper import PaperExchange
from worker.exchanges.paper import from_settings as paper_from_settings
from worker.exchanges.signing import credentials_from_env
from worker.execution.accounts import AccountRegistry
from worker.execution.context import CrashPoint, no_crash_point
from worker.execution.engine import Engine
from worker.execution.handlers import add_execution_handlers
from worker.execution.live_fills import UserStreams
from worker.execution.routing import ExchangeRouter
from worker.execution.watcher import Watcher
from worker.logs import get_logger
from worker.metrics import POSITIONS_SAMPLE_SECONDS, Metrics
from worker.pipeline.dispatcher import Dispatcher
from worker.pipeline.handlers import Registry, any_event, position_opened
from worker.pipeline.handlers.ai_monitoring import make_start_monitoring, make_start_monitoring_many
from worker.pipeline.handlers.audit_log import make_audit_log
from worker.pipeline.listener import KEEPALIVES, Listener
from worker.pipeline.streams import RedisClient, StreamPublisher
from worker.sealing import Keyring
from worker.settings import PipelineSettings, Settings

HEARTBEAT_PREFIX = "pw:worker:"
# the worker's connections send Python lists as array literals (worker/db/arrays.py)
ARRAYS = arrays.adapters()
ExtraHandlers = Callable[[Registry, AsyncConnectionPool[Any]], None]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def make_pool(settings: Settings) -> AsyncConnectionPool[Any]:
    return AsyncConnectionPool(
        settings.database.url,
        min_size=settings.database.pool_min_size,
        max_size=max(settings.database.pool_max_size, settings.database.pool_min_size),
        kwargs={"autocommit": True, "context": ARRAYS, **KEEPALIVES},
        check=AsyncConnectionPool.check_connection,
        timeout=settings.database.connect_timeout,
        open=False,
        name="position-worker",
    )


def make_outbox_pool(settings: Settings) -> AsyncConnectionPool[Any]:
    """Connections for the outbox's own bookkeeping (claims and their settlement).

    They commit with synchronous_commit=off: a mark lost in a database crash only means the
    event is handled again (the stream publish is idempotent, handlers must be), and WAL
    order keeps any surviving mark behind the change it records. A claim's transaction left
    idle longer than ``pipeline.lease_seconds`` (a hung worker) is ended by PostgreSQL, which
    releases its events to the other workers. Never used for state changes or orders.
    No check on checkout (it costs a round trip per batch): a broken connection fails the
    claim, which rolls back and backs off, and the pool replaces it.
    """
    idle_ms = max(1, int(settings.pipeline.lease_seconds * 1000))
    options = (
        f"-c synchronous_commit=off -c idle_in_transaction_session_timeout={idle_ms}"
        " -c DateStyle=ISO"  # the claim reads times as ISO text (worker.events)
    )
    return AsyncConnectionPool(
        settings.database.url,
        min_size=1,
        max_size=settings.pipeline.concurrency + 1,
        kwargs={"autocommit": True, "options": options, "context": ARRAYS, **KEEPALIVES},
        timeout=settings.database.connect_timeout,
        open=False,
        name="position-worker-outbox",
    )


def make_redis(settings: Settings) -> RedisClient:
    """The worker's Redis client: a :class:`redis.asyncio.RedisCluster` when
    ``redis.cluster`` is set (the URL names one node; the others are discovered)."""
    if settings.redis.cluster:
        return aioredis.RedisCluster.from_url(
            settings.redis.url,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=15,
        )
    return aioredis.Redis.from_url(
        settings.redis.url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=15
    )


def build_router(
    settings: Settings,
    owned: contextlib.AsyncExitStack,
    pool: AsyncConnectionPool[Any],
    redis: RedisClient,
    log: Any,
) -> ExchangeRouter:
    """The exchanges: paper always (its orders and balances in PostgreSQL); each user's own
    Binance account (the registry); the operator account (the environment's keys) only where
    ``accounts.operator_account`` opts in. Their HTTP clients are closed with ``owned``."""
    paper = paper_from_settings(
        settings, store=PgPaperStore(pool, settings.paper.starting_balances)
    )
    owned.push_async_callback(paper.aclose)
    gate = RateLimitGate()  # request weight is per IP: one gate for every account
    operator = None
    credentials = credentials_from_env()
    if settings.accounts.operator_account:
        if credentials is None:
            raise SettingsError(
                "config: accounts.operator_account is true, but BINANCE_API_KEY with"
                " BINANCE_API_SECRET (or BINANCE_PRIVATE_KEY_FILE) is not set"
            )
        operator = BinanceClient(
            credentials,
            base_url=settings.binance.base_url,
            recv_window_ms=settings.binance.recv_window_ms,
            timeout_s=settings.binance.timeout_seconds,
            gate=gate,
            ws_api_url=settings.binance.ws_api_url,
        )
        owned.push_async_callback(operator.aclose)
    elif credentials is not None:
        log.warning(
            "operator_account_off",
            detail="BINANCE_API_KEY is set but accounts.operator_account is false: unused",
        )
    streams = settings.streams

    async def notify(fields: Mapping[str, str]) -> None:
        entry: dict[Any, Any] = dict(fields)
        await redis.xadd(streams.notifications, entry, maxlen=streams.maxlen, approximate=True)

    accounts = AccountRegistry(pool, settings, Keyring.from_env(), notify, log, gate=gate)
    owned.push_async_callback(accounts.aclose)
    return ExchangeRouter(paper=paper, operator=operator, accounts=accounts)


async def serve_metrics(
    metrics: Metrics, host: str, port: int, *, task_status: TaskStatus[None]
) -> None:
    """``/metrics`` on ``host:port`` for as long as this task runs: prometheus_client's
    server answers in its own thread, which is shut down and joined when the task ends."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    task_status.started()
    try:
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.shutdown)  # returns once serving stopped
            server.server_close()
            await anyio.to_thread.run_sync(thread.join)


# Pool connections kept for what runs beside the positions' handlers (the watcher, the
# lag sampler, the accounts' pass).
POOL_RESERVE: Final = 2


def positions_within_pool(settings: Settings) -> PipelineSettings:
    """The pipeline settings, with ``position_concurrency`` cut to what the pool can serve:
    every position handled holds a pool connection (its lock) for its whole turn, and a
    turn that waited out the pool's timeout would be taken for a database outage."""
    pipeline = settings.pipeline
    room = max(1, settings.database.pool_max_size - POOL_RESERVE)
    if pipeline.position_concurrency <= room:
        return pipeline
    return dataclasses.replace(pipeline, position_concurrency=room)


ANALYZE_BACKLOG: Final = 5_000  # pending events from which the outbox is analyzed


class App:
    """One worker process. ``extra_handlers`` registers more handlers (tests); ``router``
    gives the exchanges to trade on (tests, the demo: whoever made them closes them); when
    None they are built from the settings and the environment, and closed by the app."""

    def __init__(
        self,
        settings: Settings,
        *,
        extra_handlers: ExtraHandlers | None = None,
        handle_signals: bool = True,
        router: ExchangeRouter | None = None,
        crash_point: CrashPoint = no_crash_point,
    ) -> None:
        self.settings = settings
        self.name = worker_name()
        self.log = get_logger("worker").bind(worker=self.name)
        self.metrics = Metrics()
        self.extra_handlers = extra_handlers
        self.handle_signals = handle_signals
        self.router = router
        self.crash_point = crash_point  # the engine's, for recovery tests (testing/armed_worker)
        self.engine: Engine | None = None
        self.watcher: Watcher | None = None
        self.user_streams: UserStreams | None = None
        self.dispatcher: Dispatcher | None = None
        self.listener: Listener | None = None
        self._scope: anyio.CancelScope | None = None

    def build_handlers(self, pool: AsyncConnectionPool[Any]) -> Registry:
        registry = Registry()
        registry.add("audit_log", any_event, make_audit_log(self.log))
        registry.add(
            "ai_monitoring",
            position_opened,
            make_start_monitoring(pool, self.log),
            slow=True,
            batch=make_start_monitoring_many(pool, self.log),
        )
        if self.engine is not None:
            add_execution_handlers(registry, self.engine)
        if self.extra_handlers is not None:
            self.extra_handlers(registry, pool)
        return registry

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        owned = contextlib.AsyncExitStack()  # closed last to first, whatever happens
        started = False
        try:
            pool, outbox_pool = make_pool(s), make_outbox_pool(s)
            client = make_redis(s)
            owned.push_async_callback(pool.close)
            owned.push_async_callback(outbox_pool.close)
            owned.push_async_callback(client.aclose)
            await pool.open(wait=False)
            await outbox_pool.open(wait=False)
            # Before anything starts: a database whose schema is not this code's is refused
            # with one MigrationError (one line and exit 2 from the CLI), nothing else logged.
            async with translated_errors(), pool.connection() as conn:
                await require_current_schema(conn)
            started = True
            router = self.router
            if router is None and s.execution.enabled:
                router = build_router(s, owned, pool, client, self.log)
            await self._run(pool, outbox_pool, client, router, task_status)
        finally:
            with anyio.move_on_after(5, shield=True):
                await owned.aclose()
            if started:
                self.log.info(
                    "worker_stopped", processed=self.dispatcher.processed if self.dispatcher else 0
                )

    async def _run(
        self,
        pool: AsyncConnectionPool[Any],
        outbox_pool: AsyncConnectionPool[Any],
        client: RedisClient,
        router: ExchangeRouter | None,
        task_status: TaskStatus[None],
    ) -> None:
        s = self.settings
        if s.execution.enabled and router is not None:
            self.engine = Engine(
                pool,
                router,
                resend_after=s.execution.missing_lookups_before_resend,
                log=self.log,
                crash_point=self.crash_point,
                risk=s.risk,
                lost_after_s=s.execution.lost_order_seconds,
                send_concurrency=max(1, positions_within_pool(s).position_concurrency // 2),
            )
            self.watcher = Watcher(
                self.engine, pool, router.paper, s.execution, self.log, self.metrics
            )
        outbox = Outbox(outbox_pool, s.pipeline.lease_seconds)
        publisher = StreamPublisher(client, s.streams.maxlen, s.streams.dedupe_ttl_seconds)
        self.dispatcher = Dispatcher(
            outbox,
            publisher,
            self.build_handlers(pool),
            pipeline=positions_within_pool(s),
            streams=s.streams,
            metrics=self.metrics,
            log=self.log,
        )
        self.listener = Listener(
            s.listen_url,
            self.dispatcher.wake,
            log=self.log,
            metrics=self.metrics,
            probe_after=s.pipeline.probe_after,
            reconnect_max=s.pipeline.reconnect_max_seconds,
            connect_timeout=s.database.connect_timeout,
            on_new_position=self.dispatcher.new_position,
        )
        listener = self.listener  # the dispatcher polls a steady stream: no wake-ups meanwhile
        self.dispatcher.on_polling = lambda on: listener.pause() if on else listener.resume()
        async with anyio.create_task_group() as tg:
            self._scope = tg.cancel_scope
            if s.metrics.port:
                await tg.start(partial(serve_metrics, self.metrics, s.metrics.host, s.metrics.port))
            if self.handle_signals:
                tg.start_soon(self._watch_signals)
            await tg.start(self.listener.run)
            tg.start_soon(self._dispatch_then_stop, tg.cancel_scope)
            tg.start_soon(self._sample_lag, pool)
            tg.start_soon(self._heartbeat, client)
            if self.engine is not None and router is not None:
                await self._follow_user_streams(tg, self.engine, pool, router)
            if self.watcher is not None:
                tg.start_soon(self.watcher.run)
            if router is not None and isinstance(router.paper, PaperExchange):
                await tg.start(router.paper.run_feed)  # paper.feed = "binance": its streams
                tg.start_soon(router.paper.keep_symbols)  # loaded now, not at the first order
            if router is not None and router.accounts is not None:
                tg.start_soon(self._keep_accounts, router.accounts)
            self.log.info(
                "worker_started",
                streams=[s.streams.events, s.streams.notifications, s.streams.ai_monitoring],
                batch_size=s.pipeline.batch_size,
                position_concurrency=self.dispatcher.cfg.position_concurrency,
                user_concurrency=s.pipeline.user_concurrency,
            )
            task_status.started()

    async def _follow_user_streams(
        self,
        tg: anyio.abc.TaskGroup,
        engine: Engine,
        pool: AsyncConnectionPool[Any],
        router: ExchangeRouter,
    ) -> None:
        """Fills pushed over each live account's user data stream (``live_fills.py``): the
        operator's account from the start, users' accounts as their clients open."""
        if not self.settings.binance.user_stream:
            return
        streams = UserStreams(engine, pool, self.settings.binance, self.log)
        await tg.start(streams.run)
        self.user_streams = streams
        if isinstance(router.operator, BinanceClient):
            streams.open(None, router.operator)
        if router.accounts is not None:
            router.accounts.streams = streams

    async def _keep_accounts(self, accounts: AccountRegistry) -> None:
        """Seal new secrets, check new keys, tell users of refused keys, close idle clients
        (``AccountRegistry.maintain``), every ``accounts.check_interval``."""
        while True:
            try:
                async with translated_errors():
                    await accounts.maintain()
            except Exception as exc:  # an outage or a bad row: logged, the next pass retries
                self.log.warning("accounts_pass_failed", error=f"{type(exc).__name__}: {exc}")
            await anyio.sleep(self.settings.accounts.check_interval)

    async def _dispatch_then_stop(self, scope: anyio.CancelScope) -> None:
        assert self.dispatcher is not None
        await self.dispatcher.run()
        scope.cancel()  # the dispatcher only returns when asked to stop

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[App]:
        """Run the worker in the background for the duration of the block (the demo, tests);
        leaving the block stops it gracefully."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.run)
            try:
                yield self
            finally:
                self.stop()

    def stop(self) -> None:
        """Graceful stop: no new claims; the batch in hand finishes within the grace period."""
        if self.dispatcher is None:
            if self._scope is not None:
                self._scope.cancel()
            return
        self.log.info(
            "worker_stopping", grace_seconds=self.settings.pipeline.shutdown_grace_seconds
        )
        self.dispatcher.stop()
        if self._scope is not None:
            self._scope.deadline = (
                anyio.current_time() + self.settings.pipeline.shutdown_grace_seconds
            )

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.log.info("signal_received", signal=signal.Signals(signum).name)
                self.stop()

    async def _heartbeat(self, client: RedisClient) -> None:
        """``pw:worker:<name>`` in Redis, for ``status``: who runs, since when, last
        reconnect. It expires three intervals after the worker stops refreshing it."""
        key, started = f"{HEARTBEAT_PREFIX}{self.name}", time.time()
        interval = self.settings.pipeline.poll_interval
        while True:
            reconnect = self.listener.last_reconnect if self.listener else None
            fields = {
                "started_at": str(started),
                "seen_at": str(time.time()),
                "last_reconnect": "" if reconnect is None else str(reconnect),
                "processed": str(self.dispatcher.processed if self.dispatcher else 0),
            }
            with contextlib.suppress(StreamUnavailable):
                async with translated_redis_errors("heartbeat"):
                    await client.hset(key, mapping=fields)  # type: ignore[arg-type]
                    await client.expire(key, max(5, int(3 * interval)))
            await anyio.sleep(interval)

    async def _sample_lag(self, pool: AsyncConnectionPool[Any]) -> None:
        """Outbox lag for the metrics, every ``poll_interval``. A large backlog also gets the
        outbox analyzed (at most every 30 s): a burst can outrun autovacuum's statistics.
        (The claim does not depend on them for its worst trap, the waiting lookup:
        schema/0010; its plan is generic and cached, schema/0011.) Positions are counted by
        status on the same connection, at most every ``POSITIONS_SAMPLE_SECONDS``."""
        analyzed_at = counted_at = -1e9
        while True:
            try:
                async with translated_errors(), pool.connection() as conn:
                    cur = await conn.execute(q("outbox_lag"))
                    row = await cur.fetchone()
                    pending = int(row[1]) if row is not None else 0
                    if time.monotonic() - counted_at >= POSITIONS_SAMPLE_SECONDS:
                        cur = await conn.execute(q("positions_by_status"))
                        self.metrics.set_positions({s: int(n) for s, n in await cur.fetchall()})
                        counted_at = time.monotonic()
                    if pending >= ANALYZE_BACKLOG and time.monotonic() - analyzed_at > 30:
                        await conn.execute("ANALYZE position_events")
                        analyzed_at = time.monotonic()
                        self.log.info("outbox_analyzed", pending=pending)
            except (DatabaseUnavailable, Conflict):
                row = None
            if row is not None:
                self.metrics.outbox_lag.set(float(row[0]))
                self.metrics.outbox_pending.set(int(row[1]))
            await anyio.sleep(self.settings.pipeline.poll_interval)
