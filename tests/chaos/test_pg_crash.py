"""PostgreSQL crashes and outages are waited out, never dead-lettered.

* A claim whose connection is lost while its handlers run parks nothing: its settlement
  fails with the connection, the claim rolls back and the events are claimed again.
* A handler meeting Redis trouble defers its event without counting attempts.
* (a) A crash (``pg_ctl stop -m immediate``, then a start: crash recovery) while one
  position is mid-entry and another mid-exit on the fake Binance, both exchange answers
  held until the server is back: both converge, one exchange order per intent, no event
  dead, no attempt counted (``max_attempts`` 1: any counted failure would park).
* (b) A crash in the middle of draining a backlog of 5,000 events: every event
  reaches the stream exactly once, in per-position order, none dead.
* (c) An outage of the engine's database during an entry, longer than the event's
  attempts last: waited out, then the position opens; nothing dead.

The embedded server runs with synchronous_commit off; a server crash would then lose the
commits of its last moments (an order intent the exchange already has, an event already
published). Production servers keep synchronous_commit on, so the crash scenarios turn it on
for their database (:func:`keep_every_commit`); the worker's outbox connections still turn it
off for their own marks, by design (a lost mark only means the event is handled again).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import psycopg
import pytest
import redis
import redis.exceptions
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from tests.chaos.support import delivery
from tests.execution_support import (
    ORDER,
    assert_matches_exchange,
    call,
    exec_settings,
    live_worker,
    new_position,
    orders,
    position,
    resting,
)
from tests.integration.test_execution_crash import live_env
from tests.pipeline_support import (
    EVENTS,
    assert_exactly_once_in_order,
    burst,
    db_event_ids,
    eventually,
    pending,
    settings_for,
    stream_entries,
    wait_for_stream,
    worker_env,
)
from tests.support import insert_position, seed_owner
from worker.app import App
from worker.events import Event
from worker.pipeline.handlers import Registry, any_event
from worker.testing.fake_binance import FakeBinance, Fault
from worker.testing.processes import WorkerProcess

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
D = Decimal
LIVE: dict[str, Any] = {
    "quantity": D("0.5"),
    "is_paper_trade": False,
    "stop_loss_price": D("90"),
    "take_profit_price": D("130"),
}
MAX_ATTEMPTS = "POSITION_WORKER__PIPELINE__MAX_ATTEMPTS"


def dbname(db_url: str) -> str:
    return urlsplit(db_url).path.lstrip("/")


def keep_every_commit(admin_url: str, db_url: str) -> None:
    """synchronous_commit on for new sessions of the test's database (see the module doc)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET synchronous_commit = on").format(
                sql.Identifier(dbname(db_url))
            )
        )


def dead_and_attempts(db_url: str) -> tuple[int, int]:
    """(events parked as dead, the most attempts any event has counted)."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE dead_at IS NOT NULL), coalesce(max(attempts), 0)"
            " FROM position_events"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def posted(fake: FakeBinance) -> int:
    return len(fake.requests_to("POST", ORDER))


# -- in-process: a claim that loses its connection, a handler that meets Redis trouble ------


def end_claims(admin_url: str, db_url: str) -> int:
    """End the sessions of the test's database that hold an open claim (idle in
    transaction while a handler runs), as a crash or a network cut would; how many."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND state = 'idle in transaction'",
            (dbname(db_url),),
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("error", ["of the event", "an outage"])
async def test_a_claim_that_loses_its_connection_while_handling_parks_nothing(
    db_url: str, redis_url: str, pg_admin_url: str, error: str
) -> None:
    """The handler's first call ends the claim's session, then fails: with an error of its
    own (which would count) or an outage. Settling either needs the claim's connection:
    it fails, the claim rolls back, and the event is claimed again after the backoff and
    handled. With max_attempts 1 a single counted failure would park it."""
    ended: list[int] = []

    def install(registry: Registry, pool: AsyncConnectionPool[Any]) -> None:
        async def cut_then_fail(event: Event) -> None:
            if ended:
                return
            ended.append(await anyio.to_thread.run_sync(end_claims, pg_admin_url, db_url))
            if error == "an outage":
                raise psycopg.OperationalError("server closed the connection unexpectedly")
            raise RuntimeError("downstream is broken")

        registry.add("cut", any_event, cut_then_fail)

    with psycopg.connect(db_url, autocommit=True) as conn:
        insert_position(conn, seed_owner(conn))
    settings = settings_for(db_url, redis_url, max_attempts=1)
    app = App(settings, extra_handlers=install, handle_signals=False)
    async with app.serving():
        await eventually(lambda: ended and pending(db_url) == 0, timeout=20)
        dispatcher = app.dispatcher
        assert dispatcher is not None
        await eventually(lambda: dispatcher.outages == {}, timeout=10)
    assert ended == [1], "the claim's session was ended while its handler ran"
    assert dead_and_attempts(db_url) == (0, 0)
    assert_exactly_once_in_order(db_url, redis_url)


async def test_a_handler_meeting_redis_trouble_more_often_than_max_attempts_parks_nothing(
    db_url: str, redis_url: str
) -> None:
    failures = [redis.exceptions.ConnectionError("Connection refused")] * 4
    calls: list[int] = []

    def install(registry: Registry, pool: AsyncConnectionPool[Any]) -> None:
        async def notify(event: Event) -> None:
            calls.append(event.event_id)
            if failures:
                raise failures.pop()

        registry.add("notify", any_event, notify)

    with psycopg.connect(db_url, autocommit=True) as conn:
        insert_position(conn, seed_owner(conn))
    settings = settings_for(db_url, redis_url, max_attempts=2)
    app = App(settings, extra_handlers=install, handle_signals=False)
    async with app.serving():
        await eventually(lambda: not failures and pending(db_url) == 0, timeout=20)
        dispatcher = app.dispatcher
        assert dispatcher is not None
        await eventually(lambda: dispatcher.outages == {}, timeout=10)
        waiting = app.metrics.registry.get_sample_value(
            "position_worker_outage_deferrals_total", {"target": "redis"}
        )
    assert len(calls) == 5 and waiting == 4
    assert dead_and_attempts(db_url) == (0, 0)


# -- (a) a crash mid-entry and mid-exit --------------------------------------------------------


def _protected(db_url: str, pid: uuid.UUID, held: str) -> bool:
    """Open (monitoring), holding ``held``, with its stop-loss and take-profit resting."""
    p = position(db_url, pid)
    placed = sorted(
        (o["purpose"], o["status"], o["quantity"]) for o in resting(orders(db_url, pid))
    )
    return (
        p["status"] == "monitoring"
        and p["held_quantity"] == D(held)
        and placed == [("stop_loss", "submitted", D(held)), ("take_profit", "submitted", D(held))]
    )


def _closed(db_url: str, pid: uuid.UUID) -> bool:
    p = position(db_url, pid)
    return p["status"] == "closed" and p["held_quantity"] == 0 and not resting(orders(db_url, pid))


async def test_a_crash_mid_entry_and_mid_exit_converges_with_one_order_per_intent(
    db_url: str,
    redis_url: str,
    pg_admin_url: str,
    fake: FakeBinance,
    tmp_path: Path,
    crash_postgres: Callable[[], None],
) -> None:
    keep_every_commit(pg_admin_url, db_url)
    # leases long enough that the claims are still open when the server crashes
    env = {**live_env(db_url, redis_url, fake, lease_seconds=10.0), MAX_ATTEMPTS: "1"}
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        _, exiting = new_position(db_url, **LIVE)
        await eventually(lambda: _protected(db_url, exiting, "0.5"), timeout=20)
        fake.set_price("BTCUSDT", "120")
        fake.faults.push(Fault.hang())  # the exit's answer is held
        call(db_url, "SELECT request_position_exit(%s)", exiting)
        await eventually(lambda: posted(fake) == 2, timeout=20)
        fake.faults.push(Fault.hang())  # and the entry's
        _, entering = new_position(db_url, **LIVE)
        await eventually(lambda: posted(fake) == 3, timeout=20)
        crash_postgres()
        fake.release_hung()  # the answers are lost; the worker must find both orders
        try:
            await eventually(
                lambda: _protected(db_url, entering, "0.5") and _closed(db_url, exiting),
                timeout=30,
            )
        except TimeoutError:
            pytest.fail("did not converge:\n" + "".join(worker.lines[-30:]), pytrace=False)
        assert worker.process is not None and worker.process.poll() is None, "the worker died"
    finally:
        worker.kill()
    assert_matches_exchange(db_url, fake, entering)
    assert_matches_exchange(db_url, fake, exiting)
    assert position(db_url, exiting)["realized_pnl"] == D("9.89")  # 0.5 x (120 - 100) - fees
    assert dead_and_attempts(db_url) == (0, 0)
    assert worker.logged("outage_started") + worker.logged("dispatcher_backing_off") >= 1


# -- (b) a crash during the drain of a backlog --------------------------------------------------


async def test_a_crash_while_draining_a_backlog_publishes_every_event_exactly_once(
    db_url: str,
    redis_url: str,
    pg_admin_url: str,
    tmp_path: Path,
    crash_postgres: Callable[[], None],
    report: Callable[..., str],
) -> None:
    keep_every_commit(pg_admin_url, db_url)
    committed = burst(db_url, 5000, seed=16)
    env = worker_env(db_url, redis_url, lease_seconds=2.0, batch_size=100)
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        await wait_for_stream(redis_url, 1, timeout=30)  # the drain has begun
        # Hold Redis writes (the publish script included) so the crash lands mid-drain
        # however fast this server drains: the batch in hand stays claimed, its entries
        # not yet appended, while PostgreSQL goes down.
        client = redis.Redis.from_url(redis_url)
        try:
            client.client_pause(60_000, all=False)  # CLIENT PAUSE 60000 WRITE
            try:
                crash_postgres()
                published_at_crash = int(client.xlen(EVENTS))
            finally:
                client.client_unpause()
        finally:
            client.close()
        crashed = time.monotonic()
        await eventually(lambda: pending(db_url) == 0, timeout=60)
        recover_s = time.monotonic() - crashed
        assert worker.process is not None and worker.process.poll() is None, "the worker died"
    finally:
        worker.kill()
    events = db_event_ids(db_url)
    d = delivery(db_url, redis_url)
    report(
        "pg-crash-mid-drain",
        events=d.events,
        published_at_crash=published_at_crash,
        lost=d.lost,
        duplicated=d.duplicated,
        dead=dead_and_attempts(db_url)[0],
        recover_s=f"{recover_s:.1f}",
    )
    assert len(events) >= committed >= 5000
    assert published_at_crash < len(events), "the crash came after the drain, not during it"
    entries = assert_exactly_once_in_order(db_url, redis_url)
    assert len(entries) == len(events) == len(stream_entries(redis_url))
    assert dead_and_attempts(db_url)[0] == 0


# -- (c) an outage longer than the event's attempts ----------------------------------------------


def cut_off_database(admin_url: str, db_url: str) -> int:
    """The test's database refuses new connections and every session of it ends except the
    open claim (idle in transaction while its handler waits on the exchange); how many
    ended. ALLOW_CONNECTIONS false holds for superusers too."""
    name = dbname(db_url)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name))
        )
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'idle in transaction'),"
            " count(pg_terminate_backend(pid)) FILTER (WHERE state <> 'idle in transaction')"
            " FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
    assert row is not None and row[0] == 1, f"one open claim expected, found {row}"
    return int(row[1])


def reopen_database(admin_url: str, db_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                sql.Identifier(dbname(db_url))
            )
        )


async def test_a_database_outage_longer_than_the_attempts_is_waited_out(
    db_url: str, redis_url: str, pg_admin_url: str, fake: FakeBinance
) -> None:
    """An entry is on its way to the exchange when the database goes away for the engine:
    its sessions end and new ones are refused. Only the dispatcher's claim survives (the
    claim's own pool reconnects independently of the engine's: after a real outage it often
    comes back first: the engine's errors then must not be counted against the event).
    The outage lasts until the entry handler has failed on it three times.

    Equivalent to a 30 s outage: what parks an event is the number of its handler calls
    that fail and are counted reaching ``max_attempts``, not the time the outage lasts. With
    the defaults (max_attempts 5, retries after 1, 2, 4, 8 s, a poll every 2 s), an outage
    whose errors come at once (connections cut or refused) fails five calls of the engine
    in under 30 s; here max_attempts is 2 (retries 0.05 s, connect_timeout 1 s) and the
    outage lasts for three failing calls, more than max_attempts. Before outages were told
    apart, the second call parked the entry as dead; now no attempt is counted and the
    position opens once the database is back."""
    base = exec_settings(db_url, redis_url)
    settings = replace(
        base,
        database=replace(base.database, connect_timeout=1.0),
        pipeline=replace(base.pipeline, lease_seconds=10.0, concurrency=1, max_attempts=2),
    )
    async with live_worker(settings, fake, timeout_s=10.0) as app:
        dispatcher = app.dispatcher
        assert dispatcher is not None
        fake.faults.push(Fault.hang())
        _, pid = new_position(db_url, quantity=D("0.5"), is_paper_trade=False)
        await eventually(lambda: posted(fake) == 1, timeout=20)
        try:
            assert await anyio.to_thread.run_sync(cut_off_database, pg_admin_url, db_url) >= 1
            fake.release_hung()  # the answer is lost; the engine's next statement fails

            def calls_failed() -> int:
                outage = dispatcher.outages.get("database")
                return outage.failed_calls if outage is not None else 0

            await eventually(lambda: calls_failed() >= 3, timeout=30)
        finally:
            await anyio.to_thread.run_sync(reopen_database, pg_admin_url, db_url)
        await eventually(lambda: position(db_url, pid)["status"] == "monitoring", timeout=30)
        await eventually(lambda: dispatcher.outages == {}, timeout=10)
        assert (
            app.metrics.registry.get_sample_value("position_worker_outage", {"target": "database"})
            == 0
        )
    assert dead_and_attempts(db_url) == (0, 0)
    assert position(db_url, pid)["held_quantity"] == D("0.5")
    assert_matches_exchange(db_url, fake, pid)
