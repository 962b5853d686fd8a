"""Connections cut under the worker: pg_terminate_backend of its listener and of its pool
connections while load runs (on any server); then, in a test of its own that needs a way to
restart the servers (and says so by skipping without one), a PostgreSQL restart, then a
Redis restart.

The worker's connections carry an ``application_name`` (``pw-chaos-listener`` for the LISTEN
connection, ``pw-chaos-pool`` for both pools), so the scenario terminates exactly those and
never the load generator's.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable

import pytest

from tests.chaos.support import (
    Fleet,
    Load,
    delivery,
    max_event_id,
    outbox_counts,
    pending,
    terminate_backends,
    with_app_name,
)
from tests.pipeline_support import (
    assert_exactly_once_in_order,
    backlog,
    burst,
    stream_entries,
    worker_env,
)
from tests.waits import wait_until

pytestmark = pytest.mark.slow

LISTENER, POOL = "pw-chaos-listener", "pw-chaos-pool"
TARGETS = {"listener": (LISTENER,), "pool": (POOL,), "both": (LISTENER, POOL)}


def _recovery(db_url: str, seed: int) -> float:
    """Seconds until one change committed now has been published (the worker is back)."""
    started = time.monotonic()
    burst(db_url, 1, seed=seed)
    wait_until(lambda: pending(db_url) == 0, timeout=60)
    return time.monotonic() - started


def _worker_env(db_url: str, redis_url: str) -> dict[str, str]:
    return {
        **worker_env(db_url, redis_url, lease_seconds=1.5, batch_size=100),
        "DATABASE_URL": with_app_name(db_url, POOL),
        "POSITION_WORKER__DATABASE__LISTEN_URL": with_app_name(db_url, LISTENER),
        "POSITION_WORKER__LOG__LEVEL": "debug",  # wakeups_paused / wakeups_resumed
    }


def test_terminated_connections_under_load_lose_and_duplicate_nothing(
    db_url: str,
    redis_url: str,
    pg_admin_url: str,
    fleet: Fleet,
    report: Callable[..., str],
) -> None:
    """pg_terminate_backend while the load runs: 15 times, and more until the listener and
    the pool were each cut at least 5 times (a cut can find no listener backend: it is still
    reconnecting from the previous cut, or, paused while the worker polls, it has not yet
    noticed that cut: it probes every probe_after seconds). Runs on any server."""
    proc = fleet.start(_worker_env(db_url, redis_url))
    rng = random.Random(2)
    terminated: Counter[str] = Counter()
    load = Load(db_url, rate=400, seed=2).start()
    i = 0
    while i < 15 or (min(terminated[LISTENER], terminated[POOL]) < 5 and i < 60):
        time.sleep(rng.uniform(0.1, 0.5))  # seeded random point
        target = ("listener", "pool", "both")[i % 3]
        terminated += terminate_backends(pg_admin_url, db_url, TARGETS[target])
        i += 1
    # a backlog (full claims) makes the worker poll with its wake-ups paused: one more cut
    # of the listener lands in that state (the load's bursts of 20 may or may not have)
    committed = backlog(db_url, 1_000, seed=3)
    wait_until(lambda: proc.logged("wakeups_paused") >= 1, timeout=30)
    terminated += terminate_backends(pg_admin_url, db_url, TARGETS["listener"])
    committed += load.stop()
    wait_until(lambda: pending(db_url) == 0, timeout=60)
    recover_s = _recovery(db_url, seed=20)
    # every cut of the listener makes it reconnect by itself (a paused one once it probes)
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: proc.logged("listener_reconnecting") >= terminated[LISTENER], timeout=30)
    cut = delivery(db_url, redis_url)
    _, dead = outbox_counts(db_url)
    report(
        "terminate",
        events=cut.events,
        lost=cut.lost,
        duplicated=cut.duplicated,
        terminated=sum(terminated.values()),
        recover_s=f"{recover_s:.1f}",
        paused=proc.logged("wakeups_paused"),
    )
    assert (cut.lost, cut.duplicated, cut.foreign, dead) == (0, 0, 0, 0)
    assert cut.events >= committed > 0
    assert cut.published == cut.events
    assert terminated[LISTENER] >= 5 and terminated[POOL] >= 5, terminated
    assert fleet.alive(proc), "the worker died:\n" + "".join(proc.lines[-20:])
    assert proc.logged("listener_reconnecting") >= terminated[LISTENER]
    assert_exactly_once_in_order(db_url, redis_url)


def test_postgres_then_redis_restart_under_the_worker(
    db_url: str,
    redis_url: str,
    fleet: Fleet,
    report: Callable[..., str],
    restart_postgres: Callable[[], None],
    restart_redis: Callable[[], None],
) -> None:
    """A PostgreSQL restart, then a Redis restart, under a running worker. Needs a way to
    restart the servers: the embedded ones, or $TEST_PG_RESTART_CMD and
    $TEST_REDIS_RESTART_CMD for external ones (else the fixtures skip this test, visibly)."""
    proc = fleet.start(_worker_env(db_url, redis_url))
    burst(db_url, 200, seed=25)
    wait_until(lambda: pending(db_url) == 0, timeout=60)

    # 1. PostgreSQL restart: every connection of the worker is cut at once.
    restart_postgres()
    recover_pg = _recovery(db_url, seed=21)
    burst(db_url, 200, seed=22)
    wait_until(lambda: pending(db_url) == 0, timeout=60)
    after_pg = delivery(db_url, redis_url)
    if (after_pg.lost, after_pg.duplicated) == (0, 0):
        assert_exactly_once_in_order(db_url, redis_url)  # and in per-position order

    # 2. Redis restart. It keeps nothing on disk, so what consumers see is:
    #    - every stream is gone at once: entries not yet read are lost from Redis (they stay
    #      in PostgreSQL, in position_events, the audit trail: backfill from there by id);
    #    - consumer groups are gone: XREADGROUP fails with NOGROUP until the consumer
    #      re-creates its group (XGROUP CREATE ... MKSTREAM, from id 0 to read all new entries);
    #    - the worker's dedupe marks are gone too: an event claimed but not yet marked
    #      processed at the restart is published again, so a consumer may see an event id it
    #      had already seen before the restart (consumers dedupe by event_id);
    #    - stream ids start over from the current time, so they still grow.
    #    Every event committed after the restart is published exactly once.
    restart_redis()
    assert stream_entries(redis_url) == []
    first_after = max_event_id(db_url) + 1
    recover_redis = _recovery(db_url, seed=23)
    burst(db_url, 200, seed=24)
    wait_until(lambda: pending(db_url) == 0, timeout=60)
    after_redis = delivery(db_url, redis_url, after_id=first_after - 1)
    _, dead = outbox_counts(db_url)

    lost = after_pg.lost + after_redis.lost
    duplicated = after_pg.duplicated + after_redis.duplicated
    report(
        "restarts",
        events=after_pg.events + after_redis.events,
        lost=lost,
        duplicated=duplicated,
        recover_pg_s=f"{recover_pg:.1f}",
        recover_redis_s=f"{recover_redis:.1f}",
    )
    assert (lost, duplicated, dead) == (0, 0, 0)
    assert after_pg.events >= 400
    assert after_redis.events >= 200
    assert after_redis.published == after_redis.events
    assert fleet.alive(proc), "the worker died:\n" + "".join(proc.lines[-20:])
    # the PostgreSQL restart cut the LISTEN connection: the listener reconnected by itself
    assert proc.logged("listener_reconnecting") >= 1
