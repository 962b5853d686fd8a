"""Claims held by row locks: what another claimer may take, and when, on a real PostgreSQL.

The dispatcher relies on these rules for exactly-once, per-position-order delivery across
workers (tests/integration/test_pipeline_processes.py and tests/chaos show it end to end).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.pipeline_support import eventually
from tests.support import insert_position, seed_owner
from worker.db.outbox import Batch, Outbox
from worker.errors import DatabaseUnavailable
from worker.events import occurred_iso_from_text
from worker.ops.bench_execution import commit_positions, make_users

pytestmark = pytest.mark.anyio


def two_positions_with_events(db_url: str) -> tuple[uuid.UUID, uuid.UUID]:
    """Position A: created, submitting, open (events a1 < a2 < a3); B: created (b1)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        owner = seed_owner(conn)
        a = insert_position(conn, owner)
        b = insert_position(conn, owner)
        for status in ("submitting", "open"):
            conn.execute("UPDATE positions SET status = %s WHERE id = %s", (status, a))
    return a, b


def event_ids(db_url: str, position: uuid.UUID) -> list[int]:
    with psycopg.connect(db_url) as conn:
        query = "SELECT id FROM position_events WHERE position_id = %s ORDER BY id"
        return [int(r[0]) for r in conn.execute(query, (position,))]


def processed(db_url: str) -> set[int]:
    with psycopg.connect(db_url) as conn:
        query = "SELECT id FROM position_events WHERE processed_at IS NOT NULL"
        return {int(r[0]) for r in conn.execute(query)}


def ids(batch: Batch) -> list[int]:
    return [int(r["id"]) for r in batch.rows]


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with AsyncConnectionPool(
        db_url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
    ) as p:
        yield p


async def test_a_claim_takes_a_positions_events_in_order_and_settles_them_on_commit(
    db_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    a, b = two_positions_with_events(db_url)
    outbox = Outbox(pool, lease_seconds=30)
    async with outbox.claim(10) as batch:
        assert ids(batch) == sorted(event_ids(db_url, a) + event_ids(db_url, b))
        assert (batch.claimed, batch.held_back, batch.retry_soon) == (4, 0, False)
        for event_id in ids(batch):
            await batch.handled(event_id)
        assert processed(db_url) == set()  # not before the claim commits
    assert processed(db_url) == set(ids(batch))


async def test_a_chained_claim_commits_the_batch_before_it_in_the_same_round_trip(
    db_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    a, b = two_positions_with_events(db_url)
    outbox = Outbox(pool, lease_seconds=30)
    async with outbox.chain() as chain:
        first = await chain.claim(2)
        a1, b1 = ids(first)
        assert (a1, b1) == (event_ids(db_url, a)[0], event_ids(db_url, b)[0])
        await first.handled(a1)  # b1 is left pending
        second = await chain.claim(10)
        assert processed(db_url) == {a1}  # committed before the next claim ran
        # b1 is claimed again, with what follows a1, in order
        assert ids(second) == sorted([b1, *event_ids(db_url, a)[1:]])
        with pytest.raises(RuntimeError, match="already settled"):
            await first.commit()  # it went with the claim: a second COMMIT would end ours
        await second.handled(b1)
    assert processed(db_url) == {a1, b1}  # the open batch committed at the end


async def test_a_second_claimer_skips_locked_events_and_leaves_their_successors_alone(
    db_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    """Whoever holds a position's first pending event holds the right to its next ones: a
    second claimer neither handles nor locks them (schema/0017)."""
    a, b = two_positions_with_events(db_url)
    a1, a2, a3 = event_ids(db_url, a)
    outbox = Outbox(pool, lease_seconds=30)
    async with outbox.claim(1) as first:  # holds a1 only
        assert ids(first) == [a1]
        async with outbox.claim(10) as second:
            # a2, a3 would overtake a1: not claimed; b's event is free to go
            assert ids(second) == event_ids(db_url, b)
            assert (second.claimed, second.held_back, second.busy) == (1, 0, False)
            with psycopg.connect(db_url) as other:  # not locked: anyone may lock them
                locked = "SELECT id FROM position_events WHERE id = ANY(%s) FOR UPDATE NOWAIT"
                assert {r[0] for r in other.execute(locked, ([a2, a3],))} == {a2, a3}
            await second.handled(event_ids(db_url, b)[0])
        await first.handled(a1)
    async with outbox.claim(10) as third:
        assert ids(third) == [a2, a3]
        assert third.held_back == 0


async def test_a_claim_that_may_take_nothing_of_what_is_pending_says_so(
    db_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    """Every pending event another claim's (or following one): the claim comes back empty
    and ``busy`` (the worker waits for a claim to end instead of claiming again at every
    notification). Nothing pending: empty, not busy. ``heads``: the first events of
    positions among those claimed."""
    a, b = two_positions_with_events(db_url)
    outbox = Outbox(pool, lease_seconds=30)
    async with outbox.claim(2) as first:  # a1 and b1: a2, a3 follow a1
        assert ids(first) == sorted([event_ids(db_url, a)[0], *event_ids(db_url, b)])
        assert first.heads == 2
        async with outbox.claim(10) as second:
            assert (ids(second), second.claimed, second.busy) == ([], 0, True)
            assert second.min_pending == event_ids(db_url, a)[0]
            assert not second.retry_soon
        for event_id in ids(first):
            await first.handled(event_id)
    async with outbox.claim(10) as third:  # a2 first of its position now, a3 after it
        assert (ids(third), third.heads) == (event_ids(db_url, a)[1:], 1)
        for event_id in ids(third):
            await third.handled(event_id)
    async with outbox.claim(10) as idle:
        assert (ids(idle), idle.busy, idle.min_pending) == ([], False, None)


async def test_a_rolled_back_claim_gives_its_events_back_untouched(
    db_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    two_positions_with_events(db_url)
    outbox = Outbox(pool, lease_seconds=30)
    with pytest.raises(RuntimeError):
        async with outbox.claim(10) as batch:
            for event_id in ids(batch):
                await batch.handled(event_id)
            await batch.flush()
            raise RuntimeError("Redis went away")
    assert processed(db_url) == set()
    async with outbox.claim(10) as again:
        assert again.claimed == 4


async def test_an_event_waiting_out_a_retry_delay_holds_back_its_position_only(
    db_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    a, b = two_positions_with_events(db_url)
    a1 = event_ids(db_url, a)[0]
    outbox = Outbox(pool, lease_seconds=30)
    async with outbox.claim(10) as batch:
        result = await batch.mark_failed(a1, "boom", delay=60, max_attempts=5)
        assert (result.attempts, result.dead) == (1, False)
    async with outbox.claim(10) as batch:
        # a's later events are not even locked: behind a retry delay, they would fill
        # every batch and hold back everything newer
        assert ids(batch) == event_ids(db_url, b)
        assert (batch.claimed, batch.held_back, batch.retry_soon) == (1, 0, False)


async def test_a_retry_delay_counts_from_the_failure_not_from_the_claim(
    db_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    """The claim's transaction stays open for the whole batch: now() is its start."""
    a, _ = two_positions_with_events(db_url)
    a1 = event_ids(db_url, a)[0]
    outbox = Outbox(pool, lease_seconds=30)
    async with outbox.claim(10) as batch:
        await batch.conn.execute("SELECT pg_sleep(0.5)")  # a long batch, server side
        await batch.mark_failed(a1, "boom", delay=0.3, max_attempts=5)
    async with outbox.claim(10) as batch:
        assert a1 not in ids(batch)


async def test_a_dead_event_does_not_hold_back_its_successors(
    db_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    a, _ = two_positions_with_events(db_url)
    a1, a2, a3 = event_ids(db_url, a)
    outbox = Outbox(pool, lease_seconds=30)
    async with outbox.claim(1) as batch:
        await batch.mark_dead(a1, "unreadable")
    async with outbox.claim(10) as batch:
        assert [i for i in ids(batch) if i in (a1, a2, a3)] == [a2, a3]


async def test_a_claimer_whose_connection_dies_releases_its_events_at_once(
    db_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    two_positions_with_events(db_url)
    outbox = Outbox(pool, lease_seconds=30)
    doomed = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    async with doomed.transaction():
        cur = await doomed.execute(
            "SELECT id FROM position_events ORDER BY id FOR NO KEY UPDATE SKIP LOCKED"
        )
        assert len(await cur.fetchall()) == 4
        async with outbox.claim(10) as batch:
            assert batch.claimed == 0
        pid = doomed.info.backend_pid
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await eventually(lambda: backend_gone(db_url, pid), timeout=10)
        async with outbox.claim(10) as batch:
            assert batch.claimed == 4
            assert batch.held_back == 0
        with pytest.raises(psycopg.OperationalError):
            await doomed.execute("SELECT 1")


def backend_gone(db_url: str, pid: int) -> bool:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        return row.fetchone() == (0,)


def claimable_by_another(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        query = "SELECT id FROM position_events FOR NO KEY UPDATE SKIP LOCKED"
        return len(conn.execute(query).fetchall())


async def test_a_hung_claim_is_ended_by_postgresql_after_the_lease(db_url: str) -> None:
    """lease_seconds becomes idle_in_transaction_session_timeout on the outbox connections."""
    two_positions_with_events(db_url)
    hung_pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db_url,
        min_size=1,
        max_size=1,
        kwargs={"autocommit": True, "options": "-c idle_in_transaction_session_timeout=1000"},
        open=False,
    )
    async with hung_pool:
        with pytest.raises(DatabaseUnavailable):
            async with Outbox(hung_pool, lease_seconds=1).claim(10) as batch:
                assert batch.claimed == 4
                started = time.monotonic()
                assert claimable_by_another(db_url) == 0
                # a handler that never returns, as far as PostgreSQL can tell
                assert await eventually(lambda: claimable_by_another(db_url), timeout=10) == 4
                assert time.monotonic() - started > 0.9
                await batch.mark_dead(int(batch.rows[0]["id"]), "too late")
    assert processed(db_url) == set()


async def test_available_at_is_set_only_on_events_waiting_out_a_retry_delay(
    db_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    """The claim's waiting lookup relies on it (schema/0010): handled and dead events have
    no available_at, whichever way they got there."""
    a, b = two_positions_with_events(db_url)
    a1, a2, a3 = event_ids(db_url, a)
    (b1,) = event_ids(db_url, b)
    outbox = Outbox(pool, lease_seconds=30)
    async with outbox.claim(10) as batch:
        await batch.mark_failed(a1, "boom", delay=0, max_attempts=1)  # dead at once
        await batch.mark_dead(a2, "unreadable")
        await batch.defer(a3, 0.01, "exchange busy")
        await batch.mark_failed(b1, "boom", delay=60, max_attempts=5)
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT id, dead_at IS NOT NULL, available_at IS NOT NULL FROM position_events"
        ).fetchall()
    assert {r[0]: (r[1], r[2]) for r in rows} == {
        a1: (True, False),
        a2: (True, False),
        a3: (False, True),
        b1: (False, True),
    }
    await eventually(lambda: claimable_now(db_url, a3), timeout=10)
    async with outbox.claim(10) as batch:
        assert ids(batch) == [a3]
        await batch.handled(a3)
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT available_at FROM position_events WHERE id = %s", (a3,))
        assert row.fetchone() == (None,)


def claimable_now(db_url: str, event_id: int) -> bool:
    with psycopg.connect(db_url) as conn:
        query = "SELECT available_at <= now() FROM position_events WHERE id = %s"
        row = conn.execute(query, (event_id,)).fetchone()
        return bool(row and row[0])


def _claim_plan(db_url: str, function: str, start: str) -> list[dict[str, Any]]:
    """The plan nodes of the installed claim function's statement that begins with
    ``start`` (read out of the function, as the worker runs it), on a fresh backlog before
    ANALYZE, every access path but indexes made expensive."""
    two_positions_with_events(db_url)
    with psycopg.connect(db_url) as conn:
        query_source = "SELECT prosrc FROM pg_proc WHERE proname = %s"
        row = conn.execute(query_source, (function,)).fetchone()
        assert row is not None, f"no {function} function"
        source = str(row[0])
        if start == "RETURN QUERY":  # its one statement, comments with semicolons in it
            query = source.split(start, 1)[1].rsplit(";", 1)[0]
        else:
            query = source[source.index(start) :].split(";", 1)[0]
            query = re.sub(r"INTO ids(, heads)?(, takers)?", "", query)
        query = query.replace("p_floor", "0").replace("p_limit", "10")
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = off")
        plan = conn.execute(f"EXPLAIN (FORMAT JSON) {query}".encode()).fetchone()
    assert plan is not None
    return plan_nodes(plan[0][0]["Plan"])


def test_the_waiting_lookup_cannot_be_planned_as_a_scan_of_the_pending_events(
    db_url: str,
) -> None:
    """The planner may read outbox_claim's waiting set through the pending index (a filter
    over every pending event, on every claim): that index must not answer it."""
    nodes = _claim_plan(db_url, "outbox_claim", "RETURN QUERY")
    (waiting,) = [n for n in nodes if n.get("Subplan Name") == "CTE waiting"]
    indexes = {n.get("Index Name") for n in plan_nodes(waiting)} - {None}
    assert indexes == {"idx_position_events_waiting"}


def test_the_fair_claims_predecessor_check_is_one_index_probe_per_event(db_url: str) -> None:
    """outbox_claim_fair takes an event only if its predecessor is handled or dead
    (schema/0017): that check must read the predecessor through the position's index (one
    probe), never the pending events (every pending event, for every one it looks at)."""
    nodes = _claim_plan(db_url, "outbox_claim_fair", "SELECT coalesce(array_agg")
    (outer,) = [n for n in nodes if n.get("Node Type") == "LockRows"]
    (scan,) = outer["Plans"]
    assert scan.get("Index Name") == "idx_position_events_pending"
    subplans = [n for n in plan_nodes(scan) if n.get("Parent Relationship") == "SubPlan"]
    assert subplans, "the predecessor check is no longer a subplan of the scan"
    inner = {n.get("Index Name") for s in subplans for n in plan_nodes(s)} - {None}
    assert inner == {"idx_position_events_position"}


def _claim_step_plan(db_url: str, start: str) -> list[dict[str, Any]]:
    """The plan nodes of outbox_claim_fair's ``ids := ids || ARRAY(...)`` step that begins
    with ``start``, with a claim of one head (its variables made literals)."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'outbox_claim_fair'")
        source = str(row.fetchone()[0])  # type: ignore[index]
    step = source[source.index(start) :].split(";", 1)[0]
    query = step.removeprefix("ids := ids || ARRAY(").strip().removesuffix(")")
    literals = {
        "unnest(ids, heads)": "unnest('{1}'::bigint[], ARRAY[gen_random_uuid()])",
        "cardinality(ids)": "1",
        "unnest(ids)": "unnest('{1}'::bigint[])",
        "unnest(takers)": "unnest(ARRAY[gen_random_uuid()])",
        "ANY(ids)": "ANY('{1}'::bigint[])",
        "p_limit": "10",
        "p_others": "100",
    }
    for name, literal in literals.items():
        query = query.replace(name, literal)
    two_positions_with_events(db_url)
    with psycopg.connect(db_url) as conn:
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = off")
        plan = conn.execute(f"EXPLAIN (FORMAT JSON) {query}".encode()).fetchone()
    assert plan is not None
    return plan_nodes(plan[0][0]["Plan"])


def test_a_claims_followers_are_read_by_position_from_each_head(db_url: str) -> None:
    """The later events of the positions whose heads a claim holds: one probe of the
    position's index per head (schema/0018), never a test of every pending event against
    the claimed ids (``id = ANY(ids)`` as a filter: pending x claimed comparisons, 40-60 ms
    a claim in a burst of 1,000 positions)."""
    nodes = _claim_step_plan(db_url, "ids := ids || ARRAY(\n      SELECT f.id")
    filters = [str(n.get("Filter", "")) + str(n.get("Join Filter", "")) for n in nodes]
    assert not [f for f in filters if "ANY" in f], filters
    scans = [n for n in nodes if n.get("Relation Name") == "position_events"]
    followers = [n for n in scans if n.get("Alias") == "n"]
    assert [n.get("Index Name") for n in followers] == ["idx_position_events_position"]
    assert "position_id" in followers[0]["Index Cond"]


def test_another_users_oldest_events_are_read_from_where_that_user_starts(db_url: str) -> None:
    """A backlog's other users' heads: each user's from idx_position_events_pending_user at
    that user's entries (schema/0018), not from the pending index in id order, which skips
    every other user's events, once per user (100 users x 6,000 events: 300 ms a claim)."""
    nodes = _claim_step_plan(db_url, "ids := ids || ARRAY(\n      WITH RECURSIVE users")
    scans = [n for n in nodes if n.get("Relation Name") == "position_events"]
    by_user = re.compile(r"user_id = \w+\.user_id")
    per_user = [n for n in scans if by_user.search(str(n.get("Index Cond", "")))]
    assert [n.get("Index Name") for n in per_user] == ["idx_position_events_pending_user"]
    assert not [n for n in scans if by_user.search(str(n.get("Filter", "")))]


def _auto_explained(conn: psycopg.Connection[Any]) -> list[str]:
    """The plans of every statement this session runs from now on, nested ones too, as
    auto_explain (a module shipped with PostgreSQL) prints them to the client."""
    plans: list[str] = []
    conn.add_notice_handler(lambda notice: plans.append(str(notice.message_primary)))
    for setting in (
        "LOAD 'auto_explain'",
        "SET auto_explain.log_min_duration = 0",
        "SET auto_explain.log_nested_statements = on",
        "SET auto_explain.log_level = notice",
        "SET client_min_messages = notice",
    ):
        conn.execute(setting)
    conn.commit()  # the settings last the session, not the claim's transaction
    return plans


def test_a_claim_planned_on_a_quiet_outbox_reads_a_burst_by_probes(db_url: str) -> None:
    """A worker's claim plans are made once, on the outbox it starts on (PL/pgSQL's generic
    plans, schema/0011), and kept through a burst until the outbox is analyzed. Planned on
    four events and run on 454 (300 new positions, half of them moved on), no step of the
    claim may test every event of the table, or every pending one, against what it looks
    for: an array of ids (on a burst of 1,000 positions, 50-110 ms a claim), or a head's
    position read off the pending index from the head on (up to 800 ms a claim with three
    workers). Each looks up by an index that starts with its key (schema/0019). The plans
    are the server's own, as run, printed by auto_explain (a module shipped with
    PostgreSQL; its notices come to this session)."""
    with psycopg.connect(db_url, autocommit=True) as setup:
        users = make_users(setup, 300)
        commit_positions(setup, users.one(0, 2))
        commit_positions(setup, users.one(1, 2))
    with psycopg.connect(db_url) as conn:
        # the plans: a full claim (its other users' step), one with room (the followers')
        for claim in ("outbox_claim_fair(0, 2, 1)", "outbox_claim_fair(0, 10, 1)"):
            conn.execute(f"SELECT * FROM {claim}").fetchall()
            conn.rollback()
        with psycopg.connect(db_url, autocommit=True) as burst:
            ids = commit_positions(burst, users)
            burst.execute(
                "UPDATE positions SET status = 'submitting' WHERE id = ANY(%s)", (ids[::2],)
            )
        plans = _auto_explained(conn)
        full = conn.execute("SELECT * FROM outbox_claim_fair(0, 100, 20)").fetchall()
        conn.rollback()
        room = conn.execute("SELECT * FROM outbox_claim_fair(0, 1000, 20)").fetchall()
        conn.rollback()
    assert len(full) == 120  # a full claim, and twenty other users' heads
    assert len(room) == 304 + 150  # every head, and the followers of 150 of them
    steps = "\n".join(p for p in plans if "position_events" in p)
    assert "WITH RECURSIVE users" in steps and "unnest(ids, heads)" in steps, plans
    filters = re.findall(r"^\s+Filter: .*", steps, flags=re.M)  # a scan's, not a join's
    assert not [f for f in filters if re.search(r"= ANY \(\$|position_id = ", f)], filters
    probes = re.findall(
        r"Index (?:Only )?Scan (?:Backward )?using (\S+) on position_events \w+.*\n"
        r"\s+Index Cond: \(\(?(\w+) = ",
        steps,
    )
    leading = {
        "id": {"position_events_pkey", "idx_position_events_pending"},
        "position_id": {"idx_position_events_position"},
        "user_id": {"idx_position_events_pending_user"},
    }
    assert {key for _, key in probes} >= {"id", "position_id", "user_id"}, probes
    assert not [(index, key) for index, key in probes if index not in leading[key]], probes


def test_a_backlogs_users_are_found_by_their_index_when_statistics_say_none_wait(
    db_url: str,
) -> None:
    """A full claim finds the other users with pending events by a skip scan of
    idx_position_events_pending_user (schema/0016), one probe per user. Statistics taken
    while every event was handled say that none is pending: the planner then took the
    pending index by id for the skip scan and sorted what it read by user, every pending
    event at each step, on every claim (16-33 ms a claim over a backlog of 100,000 events,
    two thirds of the drain). Only the user index may answer it (schema/0020)."""
    with psycopg.connect(db_url, autocommit=True) as setup:
        users = make_users(setup, 3)
        commit_positions(setup, users.one(0, 20))
        setup.execute("UPDATE position_events SET processed_at = now()")
        setup.execute("ANALYZE position_events")  # nothing pending, it says
        commit_positions(setup, users.one(0, 50))  # a backlog, not analyzed
        commit_positions(setup, users.one(1, 2))
    with psycopg.connect(db_url) as conn:
        # a table this small is read whole whatever the plan: indexes only, as on a big one
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = off")
        plans = _auto_explained(conn)
        rows = conn.execute("SELECT id, user_id FROM outbox_claim_fair(0, 10, 5)").fetchall()
        conn.rollback()
    assert len(rows) == 11  # ten of the first user's, and the other user's oldest
    (step,) = [p for p in plans if "WITH RECURSIVE users" in p and "Query Text" in p]
    scans = re.findall(r"Scan (?:Backward )?using (\S+) on position_events (\w+)", step)
    assert ("idx_position_events_pending_user", "e") in scans, step
    assert not [s for s in scans if s[0] == "idx_position_events_pending"], step


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in plan_nodes(child))]


@pytest.mark.parametrize(
    "micros", [0, 1, 10, 500_000, 632_580, 999_999, 120_000, 100_001]
)  # fmt: skip
def test_event_times_read_as_text_match_isoformat(db_url: str, micros: int) -> None:
    """The claim reads occurred_at as PostgreSQL's UTC text (trailing zeros dropped); the
    stream must carry exactly what datetime.isoformat() gives."""
    when = datetime(2026, 12, 1, 11, 14, 9, micros, tzinfo=UTC)
    with psycopg.connect(db_url) as conn:
        conn.execute("SET TimeZone = 'Asia/Kolkata'")  # the session zone must not matter
        row = conn.execute("SELECT (%s::timestamptz AT TIME ZONE 'UTC')::text", (when,)).fetchone()
        assert row is not None
        text = str(row[0])
    assert occurred_iso_from_text(text) == when.isoformat()
    assert datetime.fromisoformat(occurred_iso_from_text(text)) == when


async def test_an_error_text_with_a_nul_character_is_stored(
    db_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    """A handler's exception text is anything; PostgreSQL text cannot hold NUL, and a
    settlement that fails rolls back the whole batch, on every retry."""
    a, b = two_positions_with_events(db_url)
    a1 = event_ids(db_url, a)[0]
    (b1,) = event_ids(db_url, b)
    outbox = Outbox(pool, lease_seconds=30)
    async with outbox.claim(10) as batch:
        await batch.mark_failed(a1, "exchange said \x00 nothing", delay=60, max_attempts=5)
        await batch.mark_dead(b1, "unreadable \x00")
    with psycopg.connect(db_url) as conn:
        rows: dict[int, str] = dict(
            conn.execute(
                "SELECT id, last_error FROM position_events WHERE id IN (%s, %s)", (a1, b1)
            ).fetchall()
        )
    assert rows == {a1: "exchange said \\0 nothing", b1: "unreadable \\0"}
