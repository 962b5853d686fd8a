"""The event pipeline against real PostgreSQL and Redis, worker in-process."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg
import pytest
import redis.asyncio as aioredis
import structlog
from psycopg_pool import AsyncConnectionPool

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
)
from tests.stream_reads import entries_of
from tests.support import insert_position, seed_owner
from worker.app import App, ExtraHandlers
from worker.events import Event
from worker.lifecycle import position_transition_allowed
from worker.metrics import Metrics
from worker.pipeline.claim_schedule import LINGER_MIN_EVENTS
from worker.pipeline.handlers import Registry
from worker.pipeline.listener import WAKEUP_CHANNEL, Listener
from worker.settings import Settings

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def running(settings: Settings, extra: ExtraHandlers | None = None) -> AsyncIterator[App]:
    app = App(settings, extra_handlers=extra, handle_signals=False)
    async with app.serving():
        yield app


async def test_a_thousand_live_changes_reach_the_stream_once_in_order(
    db_url: str, redis_url: str
) -> None:
    async with running(settings_for(db_url, redis_url)):
        committed = await anyio.to_thread.run_sync(burst, db_url, 1000)
        assert committed >= 1000
        await eventually(lambda: pending(db_url) == 0, timeout=60)
    entries = assert_exactly_once_in_order(db_url, redis_url)
    assert len(entries) == len(db_event_ids(db_url)) >= 1000
    # every transition in the stream is one the lifecycle allows
    for e in entries:
        if e["kind"] == "position" and e["old_status"]:
            assert position_transition_allowed(e["old_status"], e["new_status"])


async def test_an_event_committed_below_the_claim_floor_is_still_published(
    db_url: str, redis_url: str
) -> None:
    """Ids are drawn at write time: a long transaction commits an id below events that were
    handled long ago. Claims start from a floor (worker/pipeline/claim_floor.py); the periodic
    full claim must still find it, and keep its position's order."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        owner = seed_owner(conn)
        straggler = insert_position(conn, owner)
    async with running(settings_for(db_url, redis_url)) as app:
        assert app.dispatcher is not None
        floor = app.dispatcher.schedule.floor
        with psycopg.connect(db_url) as slow:  # the long transaction
            slow.execute("UPDATE positions SET status = 'submitting' WHERE id = %s", (straggler,))
            row = slow.execute("SELECT max(id) FROM position_events").fetchone()
            held_id = int(row[0]) if row else 0
            with psycopg.connect(db_url, autocommit=True) as conn:

                def more_events_until_the_floor_passes() -> bool:
                    insert_position(conn, owner)
                    return floor.value > held_id

                # Sightings only become the floor after they settle: keep events coming.
                await eventually(more_events_until_the_floor_passes, timeout=20, interval=0.2)
            slow.commit()
        await eventually(
            lambda: str(held_id) in {e["event_id"] for e in stream_entries(redis_url)},
            timeout=10,
        )
        await eventually(lambda: pending(db_url) == 0, timeout=10)
    assert_exactly_once_in_order(db_url, redis_url)


async def _latency_of_one_more_event(db_url: str, redis_url: str, owner: Any) -> float:
    """Commit one event now; seconds from its commit to its stream entry (Redis's clock,
    the same machine's)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        seen = await client.xlen(EVENTS)
        with psycopg.connect(db_url, autocommit=True) as conn:
            insert_position(conn, owner)
            committed = time.time()
        await wait_for_stream(redis_url, seen + 1, timeout=10)
        [(entry_id, _)] = entries_of(await client.xrevrange(EVENTS, count=1))
        entry_ms = int(entry_id.split("-")[0])
        return entry_ms / 1000 - committed
    finally:
        await client.aclose()


async def test_claims_linger_under_a_steady_stream_but_not_at_a_trickle(
    db_url: str, redis_url: str
) -> None:
    """After a claim that found several events the next claim waits out linger_seconds
    (fewer, larger claims at saturation); after a claim of one event it does not."""
    linger = 0.5
    settings = settings_for(db_url, redis_url, linger_seconds=linger, poll_interval=5.0)
    with psycopg.connect(db_url, autocommit=True) as conn:
        owner = seed_owner(conn)
    async with running(settings):
        # a trickle: one event per claim, each published at once
        for _ in range(3):
            assert await _latency_of_one_more_event(db_url, redis_url, owner) < linger / 2
        # several events in one commit: one claim finds them all ...
        seen = len(stream_entries(redis_url))
        with psycopg.connect(db_url) as conn:
            for _ in range(LINGER_MIN_EVENTS + 2):
                insert_position(conn, owner)
        await wait_for_stream(redis_url, seen + LINGER_MIN_EVENTS + 2, timeout=10)
        # ... so the next event waits for the linger to end
        assert await _latency_of_one_more_event(db_url, redis_url, owner) > linger / 2
        # and a claim of one event ends the lingering
        assert await _latency_of_one_more_event(db_url, redis_url, owner) < linger / 2
    assert_exactly_once_in_order(db_url, redis_url)


@asynccontextmanager
async def _polling_while(app: App, work: Callable[[threading.Event], None]) -> AsyncIterator[None]:
    """Run ``work`` in a thread (until the event it is given is set) until the dispatcher
    polls with the listener UNLISTENed; the block runs then; then stop ``work`` and wait for
    the wake-ups to be back."""
    assert app.listener is not None and app.dispatcher is not None
    listener, dispatcher = app.listener, app.dispatcher
    stop = threading.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, work, stop)
        try:
            await eventually(lambda: dispatcher.polling and not listener.listening, 15)
            yield
        finally:
            stop.set()
    await eventually(lambda: listener.listening and not dispatcher.polling, 15)


async def test_a_steady_stream_pauses_the_wakeups_until_it_stops(
    db_url: str, redis_url: str
) -> None:
    """Under a steady stream of commits the dispatcher polls on its own and the listener
    UNLISTENs; once the stream stops, wake-ups are back (the next event is published at
    once, not at the next periodic poll 30 s later) and nothing was lost or reordered."""
    linger = 0.2
    settings = settings_for(db_url, redis_url, linger_seconds=linger, poll_interval=30.0)
    with psycopg.connect(db_url, autocommit=True) as conn:
        owner = seed_owner(conn)

    def commit_until_stopped(stop: threading.Event) -> None:  # as fast as one connection
        with psycopg.connect(db_url, autocommit=True) as conn:
            while not stop.is_set():
                insert_position(conn, owner)

    async with running(settings) as app:
        assert app.listener is not None

        def paused() -> float | None:
            return app.metrics.registry.get_sample_value("position_worker_wakeups_paused")

        async with _polling_while(app, commit_until_stopped):
            assert paused() == 1
        assert paused() == 0 and app.listener.pauses >= 1
        # delivered by a wake-up: nothing else claims before the periodic poll, 30 s away
        assert await _latency_of_one_more_event(db_url, redis_url, owner) < 5
        await wait_for_stream(redis_url, len(db_event_ids(db_url)), timeout=15)
    assert_exactly_once_in_order(db_url, redis_url)


async def test_wake_ups_for_events_other_workers_took_also_make_it_poll(
    db_url: str, redis_url: str
) -> None:
    """Workers sharing a stream each find a share of it per claim, often nothing, while
    every one of them hears every notification. Wake-ups coming fast enough count as a
    steady stream even when the claims find nothing (here nothing at all: the
    notifications carry no events), so this worker too pauses its wake-ups and polls."""
    linger = 0.2
    settings = settings_for(db_url, redis_url, linger_seconds=linger, poll_interval=30.0)

    def notify_until_stopped(stop: threading.Event) -> None:  # ten wake-ups per commit
        with psycopg.connect(db_url, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute(
                    "SELECT pg_notify(%s, n::text) FROM generate_series(1, 10) n",
                    (WAKEUP_CHANNEL,),
                )

    async with running(settings) as app, _polling_while(app, notify_until_stopped):
        pass
    assert stream_entries(redis_url) == []


async def test_a_paused_listener_unlistens_and_resumes_with_a_wake_up(db_url: str) -> None:
    """Paused, the listener UNLISTENs (at its next notification); resumed, it LISTENs
    again and then wakes the dispatcher once, for what was committed meanwhile."""
    wakes = 0

    def on_wake() -> None:
        nonlocal wakes
        wakes += 1

    listener = Listener(
        db_url,
        on_wake,
        log=structlog.get_logger(),
        metrics=Metrics(),
        probe_after=0.2,
        reconnect_max=0.5,
    )

    def notify() -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f"NOTIFY {WAKEUP_CHANNEL}")

    async with anyio.create_task_group() as tg:
        await tg.start(listener.run)
        assert listener.listening and wakes == 1  # LISTEN, then a drain
        listener.pause()
        notify()
        await eventually(lambda: not listener.listening, 5)
        assert listener.pauses == 1 and wakes == 2  # the notification that ended it
        listener.resume()
        listener.pause()  # paused again before the listener ran: it stays paused
        for _ in range(20):  # let the listener task look at it
            await anyio.lowlevel.checkpoint()
        assert not listener.listening and wakes == 2
        listener.resume()
        await eventually(lambda: listener.listening, 5)
        assert wakes == 3 and listener.pauses == 1
        notify()
        await eventually(lambda: listener.notifications == 2 and wakes == 4, 5)
        tg.cancel_scope.cancel()


class _KeepingListener(Listener):
    """A listener that keeps every connection it opens, for the test to look at."""

    def __init__(self, db_url: str) -> None:
        super().__init__(
            db_url,
            lambda: None,
            log=structlog.get_logger(),
            metrics=Metrics(),
            probe_after=60,  # no probe while the test holds the connection
            reconnect_max=0.5,
        )
        self.opened: list[psycopg.AsyncConnection[Any]] = []

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await super()._connect()
        self.opened.append(conn)
        return conn


async def test_a_stopped_listener_closes_its_connection_even_if_leaving_it_waits(
    db_url: str,
) -> None:
    """Stopped while paused, the listener closes its connection, also when something on
    the way out waits for the connection (here its lock, held by the test): a cancelled
    task is cancelled again at every wait, and a close behind one would never run."""
    listener = _KeepingListener(db_url)
    async with anyio.create_task_group() as tg:
        await tg.start(listener.run)
        listener.pause()
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f"NOTIFY {WAKEUP_CHANNEL}")
        await eventually(lambda: listener.pauses == 1, 5)  # sitting out, the lock free
        (listen_conn,) = listener.opened
        await listen_conn.lock.acquire()
        tg.cancel_scope.cancel()
    listen_conn.lock.release()
    assert listen_conn.closed


async def test_changes_committed_while_no_worker_runs_are_published_at_start(
    db_url: str, redis_url: str
) -> None:
    committed = burst(db_url, 300)
    assert stream_entries(redis_url) == []
    async with running(settings_for(db_url, redis_url, batch_size=64)) as app:
        await wait_for_stream(redis_url, committed, timeout=30)
        await eventually(lambda: pending(db_url) == 0, timeout=30)
        assert app.dispatcher is not None
        # a backlog: every full batch's commit went with the next claim (one round trip)
        assert app.dispatcher.chained >= committed // 64 - 2
    assert_exactly_once_in_order(db_url, redis_url)


async def test_stream_entry_carries_the_event_fields_as_strings(
    db_url: str, redis_url: str
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        owner = seed_owner(conn)
        pid = insert_position(conn, owner)
        conn.execute("UPDATE positions SET status = 'submitting' WHERE id = %s", (pid,))
        conn.execute(
            "UPDATE positions SET status = 'open', entry_price = 105.5, entry_quantity = 0.5,"
            " entry_value = 52.75 WHERE id = %s",
            (pid,),
        )
    async with running(settings_for(db_url, redis_url)):
        await wait_for_stream(redis_url, 4, timeout=10)  # + open -> monitoring
        await wait_for_stream(redis_url, 1, timeout=10, stream="positions:notifications")
    opened = next(e for e in stream_entries(redis_url) if e["new_status"] == "open")
    assert opened["type"] == "position.open"
    assert opened["old_status"] == "submitting"
    assert opened["position_id"] == str(pid)
    assert opened["user_id"] == str(owner.user_id)
    assert opened["symbol"] == "BTCUSDT"
    assert opened["entry_price"] == "105.50000000"
    assert opened["entry_value"] == "52.75000000"
    assert opened["occurred_at"].startswith("20")
    ai = stream_entries(redis_url, "positions:ai-monitoring")
    assert [(a["type"], a["position_id"]) for a in ai] == [("monitoring.start", str(pid))]
    note = stream_entries(redis_url, "positions:notifications")[0]
    assert (note["severity"], note["title"]) == ("info", "Position opened")
    with psycopg.connect(db_url) as conn:
        status = conn.execute("SELECT status FROM positions WHERE id = %s", (pid,)).fetchone()
    assert status == ("monitoring",)


def always_fail_for(position_ids: set[str]) -> ExtraHandlers:
    def install(registry: Registry, pool: AsyncConnectionPool[Any]) -> None:
        async def broken(event: Event) -> None:
            raise RuntimeError("downstream is broken")

        registry.add("broken", lambda e: e.position_id in position_ids, broken)

    return install


async def test_a_failing_handler_parks_its_event_and_the_rest_keep_flowing(
    db_url: str, redis_url: str
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        owner = seed_owner(conn)
        bad = insert_position(conn, owner)
        good = [insert_position(conn, owner) for _ in range(5)]
        conn.execute("UPDATE positions SET status = 'submitting' WHERE id = %s", (bad,))
    settings = settings_for(db_url, redis_url, max_attempts=3)
    async with running(settings, always_fail_for({str(bad)})):

        def bad_is_dead() -> bool:
            with psycopg.connect(db_url) as conn:
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE dead_at IS NOT NULL),"
                    " min(attempts), max(last_error) FROM position_events WHERE position_id = %s",
                    (bad,),
                ).fetchone()
            return bool(row and row[0] == 2)

        await eventually(bad_is_dead, timeout=30)
        await eventually(lambda: pending(db_url) == 0, timeout=10)
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT position_id, attempts, last_error, dead_at IS NOT NULL,"
            " processed_at IS NOT NULL FROM position_events ORDER BY id"
        ).fetchall()
    for position_id, attempts, last_error, dead, processed in rows:
        if position_id == bad:
            assert (attempts, dead, processed) == (3, True, False)
            assert "broken: RuntimeError: downstream is broken" in last_error
        else:
            assert (attempts, dead, processed) == (0, False, True)
    # published once even though its handler ran three times
    ids = [int(e["event_id"]) for e in stream_entries(redis_url)]
    assert len(ids) == len(set(ids)) == len(rows)
    assert {str(g) for g in good} <= {e["position_id"] for e in stream_entries(redis_url)}


async def test_replay_requeues_dead_events_and_they_are_handled(
    db_url: str, redis_url: str
) -> None:
    from worker.ops.replay import replay_events

    with psycopg.connect(db_url, autocommit=True) as conn:
        bad = insert_position(conn, seed_owner(conn))
    failing = {str(bad)}
    settings = settings_for(db_url, redis_url, max_attempts=2)
    async with running(settings, always_fail_for(failing)):
        await eventually(lambda: not pending(db_url) and _dead(db_url) == 1, timeout=20)
        failing.clear()  # downstream repaired
        assert await replay_events(settings, None) == db_event_ids(db_url)
        await eventually(lambda: pending(db_url) == 0 and _dead(db_url) == 0, timeout=20)
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT processed_at IS NOT NULL FROM position_events").fetchone()
    assert row == (True,)
    assert len(stream_entries(redis_url)) == 1


def _dead(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM position_events WHERE dead_at IS NOT NULL"
        ).fetchone()
    assert row is not None  # count(*) always has a row
    return int(row[0])


async def test_a_publish_that_keeps_failing_backs_off_longer_each_time(
    db_url: str, redis_url: str
) -> None:
    """Redis refuses every publish (the events stream is a string key): each claim
    succeeds and rolls back, and the backoff still grows, attempt after attempt, instead of
    restarting at its first step after every successful claim. Once Redis accepts the
    entries again the event is published once."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with running(settings_for(db_url, redis_url)) as app:
            assert app.dispatcher is not None
            dispatcher = app.dispatcher
            await client.set(EVENTS, "not a stream")
            with psycopg.connect(db_url, autocommit=True) as conn:
                insert_position(conn, seed_owner(conn))
            # delays 0.05-0.1, 0.1-0.2, 0.2-0.4, 0.25-0.5 s (reconnect_max_seconds 0.5)
            await eventually(lambda: dispatcher.failures_in_a_row >= 4, timeout=15)
            assert pending(db_url) == 1  # rolled back every time, never lost
            await client.delete(EVENTS)
            await wait_for_stream(redis_url, 1, timeout=10)
            await eventually(lambda: dispatcher.failures_in_a_row == 0, timeout=10)
    finally:
        await client.aclose()
    assert_exactly_once_in_order(db_url, redis_url)


async def test_malformed_notifications_and_unknown_events_do_not_stop_the_worker(
    db_url: str, redis_url: str
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        owner = seed_owner(conn)
        pid = insert_position(conn, owner)
    async with running(settings_for(db_url, redis_url)) as app:
        await wait_for_stream(redis_url, 1, timeout=10)
        with psycopg.connect(db_url, autocommit=True) as conn:
            for payload in ("not json", "[1, 2]", json.dumps({"position_id": "x"}), ""):
                conn.execute("SELECT pg_notify('position_state_change', %s)", (payload,))
            # an event this worker cannot read (its data is not an object)
            conn.execute(
                "INSERT INTO position_events (kind, position_id, user_id, symbol, actor_role,"
                " data) VALUES ('order', %s, %s, 'BTCUSDT', 'test', '[1, 2]')",
                (pid, owner.user_id),
            )
            conn.execute("UPDATE positions SET status = 'failed' WHERE id = %s", (pid,))
        await wait_for_stream(redis_url, 2, timeout=10)
        await eventually(lambda: pending(db_url) == 0, timeout=10)
        assert app.listener is not None and app.listener.connected
    assert _dead(db_url) == 1
    assert [e["new_status"] for e in stream_entries(redis_url)] == ["created", "failed"]


async def test_listener_connection_terminated_is_recovered(db_url: str, redis_url: str) -> None:
    async with running(settings_for(db_url, redis_url)) as app:
        first = burst(db_url, 50)
        await wait_for_stream(redis_url, first, timeout=20)
        with psycopg.connect(db_url, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND query ILIKE 'LISTEN%%'"
            ).fetchone()
        assert killed == (1,)
        assert app.listener is not None
        await eventually(lambda: app.metrics.reconnects.labels("listener")._value.get() >= 1, 10)
        second = burst(db_url, 50, seed=2)
        await wait_for_stream(redis_url, first + second, timeout=20)
        await eventually(lambda: pending(db_url) == 0, timeout=20)
    assert_exactly_once_in_order(db_url, redis_url)
