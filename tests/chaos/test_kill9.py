"""kill -9 under continuous load: one worker killed 20 times at seeded random points, and
three workers of which one is killed and restarted over and over.

A random kill lands anywhere, most often between batches (under this load the worker is idle
most of the time), so every 5th kill of the first scenario is pinned mid-batch: the batch is
published and its handler waits for a row lock the test holds. After each kill, with no
worker running, the scenario records the events the dead worker had published but not marked
processed; it asserts there were some, that a later worker handled them again, and that the
idempotent publish kept each of them once in the stream. Leases are short (1.5 s) so that a
dead worker's claim is taken over quickly.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.chaos.support import Fleet, Load, delivery, outbox_counts, pending, with_app_name
from tests.pipeline_support import assert_exactly_once_in_order, stream_entries, worker_env
from tests.support import insert_position, seed_owner
from tests.waits import wait_until
from worker.testing.processes import WorkerProcess

pytestmark = pytest.mark.slow

KILLS = 20
# Every 5th kill is pinned mid-batch: the worker is killed while a handler of a published
# batch waits for a row lock the test holds (the random kill points rarely land there: the
# worker under this load is mostly idle between batches).
PIN_EVERY = 5
WORKER_APP = "pw-kill9"


def test_kill_9_twenty_times_under_load_then_a_final_worker_drains_exactly_once(
    db_url: str, redis_url: str, pg_admin_url: str, fleet: Fleet, report: Callable[..., str]
) -> None:
    rng = random.Random(20251104)
    env = {
        **worker_env(db_url, redis_url, lease_seconds=1.5, batch_size=100),
        "DATABASE_URL": with_app_name(db_url, WORKER_APP),  # its connections, to find them
    }
    load = Load(db_url, rate=400, seed=1).start()
    # Event ids that a killed worker had published and not yet marked processed (its kill
    # landed mid-batch, between the XADD and the commit of the processed mark), with the
    # number of the kill.
    mid_batch: dict[int, int] = {}
    kills_mid_batch = pinned = 0
    held: psycopg.Connection[Any] | None = None
    try:
        for kill in range(KILLS):
            if kill % PIN_EVERY == PIN_EVERY - 1:
                held, opened = _pinned_open_position(db_url)
            proc = fleet.start(env)
            if held is None:
                time.sleep(rng.uniform(0.05, 0.8))  # seeded: the same kill points every run
            else:  # the kill lands once the batch is published and its handler blocked
                wait_until(partial(_stalled, pg_admin_url, db_url, redis_url, opened), 15)
                pinned += 1
            proc.kill()
            assert proc.process is not None and proc.process.returncode == -signal.SIGKILL
            pinned_kill = held is not None
            if held is not None:  # a backend waiting for a lock notices its client gone
                held.close()  # only once it has the lock
                held = None
            # No worker runs until the next start: once the dead one's backends are gone
            # (its claim rolled back, or its last commit done), what it left is frozen.
            wait_until(lambda: _backends(pg_admin_url, db_url) == 0, timeout=15)
            left = _published_unprocessed(db_url, redis_url)
            mid_batch.update(dict.fromkeys(left, kill))
            kills_mid_batch += bool(left)
            assert not pinned_kill or opened in left, "the pinned kill was not mid-batch"
    finally:
        if held is not None:
            held.close()
    committed = load.stop()
    started = time.monotonic()
    final = fleet.start(env)
    wait_until(lambda: pending(db_url) == 0, timeout=60)
    recover_s = time.monotonic() - started
    d = delivery(db_url, redis_url)
    _, dead = outbox_counts(db_url)
    handled = [_handled(p) for p in fleet.started]
    # Events whose audit line a killed worker wrote and a later one wrote again: kills that
    # landed between the handlers and the processed mark (the publish was skipped then).
    rehandled = sum(n > 1 for n in sum(handled, Counter()).values())
    in_stream = Counter(int(e["event_id"]) for e in stream_entries(redis_url))
    report(
        f"kill9x{KILLS}",
        events=d.events,
        lost=d.lost,
        duplicated=d.duplicated,
        dead=dead,
        kills_mid_batch=f"{kills_mid_batch}({pinned} pinned)",
        published_unmarked=len(mid_batch),
        rehandled=rehandled,
        recover_s=f"{recover_s:.1f}",
    )
    assert (d.lost, d.duplicated, d.foreign, dead) == (0, 0, 0, 0)
    assert d.events >= committed > 0
    assert_exactly_once_in_order(db_url, redis_url)
    assert fleet.alive(final)
    # Kills did land mid-batch (else this scenario proves nothing about a restart): the
    # pinned ones at least ...
    assert pinned == KILLS // PIN_EVERY and kills_mid_batch >= pinned
    # ... and a worker started after each such kill claimed those events again and handled
    # them (its audit lines), and published them again, which the dedupe marks skipped:
    # each is in the stream once.
    assert {in_stream[i] for i in mid_batch} == {1}
    assert all(any(i in h for h in handled[k + 1 :]) for i, k in mid_batch.items())


def _backends(admin_url: str, db_url: str) -> int:
    """Connections of the workers to this test's database (by application_name)."""
    with psycopg.connect(admin_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (urlsplit(db_url).path.lstrip("/"), WORKER_APP),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _pinned_open_position(db_url: str) -> tuple[psycopg.Connection[Any], int]:
    """A position moved to ``open``, then its row locked by the returned connection's open
    transaction: a worker handling the ``open`` event blocks in its AI-monitoring handler
    (which moves the position to ``monitoring``), after publishing the batch and before
    committing its processed mark. Made while no worker runs. Returns the connection and
    the ``open`` event's id."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        owner = seed_owner(conn)
        pid = insert_position(conn, owner)
        for status in ("submitting", "open"):
            conn.execute("UPDATE positions SET status = %s WHERE id = %s", (status, pid))
        row = conn.execute(
            "SELECT id FROM position_events WHERE position_id = %s AND new_status = 'open'",
            (pid,),
        ).fetchone()
    assert row is not None
    held = psycopg.connect(db_url)
    held.execute("SELECT 1 FROM positions WHERE id = %s FOR UPDATE", (pid,))
    return held, int(row[0])


def _stalled(admin_url: str, db_url: str, redis_url: str, event_id: int) -> bool:
    """A worker's connection waits for a lock, and ``event_id`` is published, not marked."""
    with psycopg.connect(admin_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND application_name = %s AND wait_event_type = 'Lock'",
            (urlsplit(db_url).path.lstrip("/"), WORKER_APP),
        ).fetchone()
    assert row is not None
    return int(row[0]) >= 1 and event_id in _published_unprocessed(db_url, redis_url)


def _published_unprocessed(db_url: str, redis_url: str) -> set[int]:
    """Event ids in positions:events whose processed mark is not committed."""
    published = [int(e["event_id"]) for e in stream_entries(redis_url)]
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT id FROM position_events WHERE processed_at IS NULL AND id = ANY(%s)",
            (published,),
        ).fetchall()
    return {int(r[0]) for r in rows}


def _handled(proc: WorkerProcess) -> Counter[int]:
    """Event ids of this worker's audit-log lines (one line per handled event)."""
    seen: Counter[int] = Counter()
    for line in proc.lines:
        if '"event_id"' in line and (
            '"position_created"' in line or '"position_transitioned"' in line
        ):
            seen[int(json.loads(line)["event_id"])] += 1
    return seen


def test_three_workers_one_killed_and_restarted_repeatedly(
    db_url: str, redis_url: str, fleet: Fleet, report: Callable[..., str]
) -> None:
    rng = random.Random(3)
    env = worker_env(db_url, redis_url, lease_seconds=3.0, batch_size=50)
    steady = [fleet.start(env), fleet.start(env)]
    victim = fleet.start(env)
    load = Load(db_url, rate=500, seed=3).start()
    kills = 0
    for _ in range(5):
        time.sleep(rng.uniform(0.2, 1.0))  # seeded random point of the kill
        victim.kill()
        kills += 1
        victim = fleet.start(env)
    committed = load.stop()
    started = time.monotonic()
    wait_until(lambda: pending(db_url) == 0, timeout=60)
    recover_s = time.monotonic() - started
    for proc in [*steady, victim]:
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    d = delivery(db_url, redis_url)
    _, dead = outbox_counts(db_url)
    # Two workers that were never killed never handle the same event twice (SKIP LOCKED +
    # leases); the victim's events may be handled again after its death (at-least-once
    # handlers), but never published twice.
    a, b = (_handled(p) for p in steady)
    twice = sum(n > 1 for n in (a + b).values())
    report(
        "3-workers-1-killed",
        events=d.events,
        lost=d.lost,
        duplicated=d.duplicated,
        kills=kills,
        handled_twice=twice,
        recover_s=f"{recover_s:.1f}",
    )
    assert (d.lost, d.duplicated, d.foreign, dead) == (0, 0, 0, 0)
    assert d.events >= committed > 0
    assert twice == 0
    assert a and b, "the steady workers did not share the work"
    assert_exactly_once_in_order(db_url, redis_url)
