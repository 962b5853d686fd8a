"""Load, settings and stream readers for the pipeline tests."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import anyio
import psycopg
import redis

from tests.stream_reads import fields_of, xread_entries
from tests.support import Owner, seed_owner
from worker.settings import PipelineSettings, Settings, load_settings

EVENTS = "positions:events"

T = TypeVar("T")

# Walks through the lifecycle that the tests replay; each step is one committed change.
PATHS: tuple[tuple[str, ...], ...] = (
    ("submitting", "failed"),
    ("submitting", "open", "closing", "closed"),
    ("failed",),
    ("submitting", "open", "closing", "open", "closing", "closed"),
)


def settings_for(db_url: str, redis_url: str, **pipeline: Any) -> Settings:
    base = load_settings(environ={"DATABASE_URL": db_url, "REDIS_URL": redis_url})
    fast = {
        "lease_seconds": 3.0,
        "poll_interval": 0.5,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.2,
        "probe_after": 2.0,
        "reconnect_max_seconds": 0.5,
        "shutdown_grace_seconds": 5.0,
        **pipeline,
    }
    # The pipeline tests drive positions by hand: no engine acting on them.
    return replace(
        base,
        pipeline=replace(PipelineSettings(), **fast),
        execution=replace(base.execution, enabled=False),
    )


def worker_env(db_url: str, redis_url: str, **pipeline: Any) -> dict[str, str]:
    s = settings_for(db_url, redis_url, **pipeline).pipeline
    env = {
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "POSITION_WORKER__EXECUTION__ENABLED": "false",
    }
    for key in (
        "lease_seconds",
        "poll_interval",
        "retry_base_seconds",
        "retry_max_seconds",
        "probe_after",
        "reconnect_max_seconds",
        "shutdown_grace_seconds",
        "batch_size",
    ):
        env[f"POSITION_WORKER__PIPELINE__{key.upper()}"] = str(getattr(s, key))
    return env


def burst(db_url: str, changes: int, seed: int = 1) -> int:
    """Commit at least ``changes`` position events (inserts + transitions), one per commit.

    Returns how many were committed. The AI-monitoring handler may add more (open ->
    monitoring) while a worker runs: compare against position_events, the truth.
    """
    rng = random.Random(seed)
    done = 0
    with psycopg.connect(db_url, autocommit=True) as conn:
        owner = seed_owner(conn)
        while done < changes:
            done += _one_position(conn, owner, rng.choice(PATHS))
    return done


def backlog(db_url: str, changes: int, seed: int = 1) -> int:
    """Commit at least ``changes`` position events in ONE transaction: the worker meets them
    as a backlog (full claims), which makes it poll with its wake-ups paused."""
    rng = random.Random(seed)
    done = 0
    with psycopg.connect(db_url) as conn, conn.transaction():
        owner = seed_owner(conn)
        while done < changes:
            done += _one_position(conn, owner, rng.choice(PATHS))
    return done


def _one_position(conn: psycopg.Connection[Any], owner: Owner, path: tuple[str, ...]) -> int:
    pid = uuid.uuid4()
    conn.execute(
        "INSERT INTO positions (id, user_id, trader_id, signal_id, symbol, side, status,"
        " requested_quantity) VALUES (%s, %s, %s, %s, 'BTCUSDT', 'long', 'created', 1)",
        (pid, owner.user_id, owner.trader_id, owner.signal_id),
    )
    for status in path:
        # 'open' may have been moved to 'monitoring' by the worker meanwhile: any state that
        # can legally reach the target does.
        conn.execute(
            "UPDATE positions SET status = %s WHERE id = %s AND status <> %s",
            (status, pid, status),
        )
    return 1 + len(path)


def pending(db_url: str) -> int:
    """Events neither handled nor parked as dead."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM position_events WHERE processed_at IS NULL AND dead_at IS NULL"
        ).fetchone()
    return int(row[0]) if row else -1


def db_event_ids(db_url: str) -> list[int]:
    with psycopg.connect(db_url) as conn:
        return [int(r[0]) for r in conn.execute("SELECT id FROM position_events ORDER BY id")]


def stream_entries(redis_url: str, stream: str = EVENTS) -> list[dict[str, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return fields_of(client.xrange(stream))
    finally:
        client.close()


async def wait_for_stream(redis_url: str, count: int, timeout: float, stream: str = EVENTS) -> int:
    """Block (XREAD BLOCK, no polling sleep) until ``stream`` holds ``count`` entries."""
    client = redis.asyncio.Redis.from_url(redis_url)
    seen = 0
    last = "0-0"
    try:
        with anyio.fail_after(timeout):
            while seen < count:
                entries = xread_entries(await client.xread({stream: last}, count=1000, block=200))
                if entries:
                    seen += len(entries)
                    last = entries[-1][0]
    finally:
        await client.aclose()
    return seen


async def eventually(check: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T:
    """Re-evaluate ``check()`` until it returns a truthy value (never None, then), and return
    that value; or fail after ``timeout``."""
    with anyio.fail_after(timeout):
        while True:
            value = await anyio.to_thread.run_sync(check)
            if value:
                return value
            await anyio.sleep(interval)


def assert_exactly_once_in_order(db_url: str, redis_url: str) -> list[dict[str, str]]:
    """Every committed event exactly once in positions:events, per-position in id order."""
    entries = stream_entries(redis_url)
    ids = [int(e["event_id"]) for e in entries]
    expected = db_event_ids(db_url)
    duplicates = len(ids) - len(set(ids))
    missing = sorted(set(expected) - set(ids))
    assert duplicates == 0, f"{duplicates} duplicated events"
    assert not missing, f"{len(missing)} events missing, e.g. {missing[:5]}"
    assert sorted(ids) == expected
    last: dict[str, int] = {}
    for entry in entries:
        pid, eid = entry["position_id"], int(entry["event_id"])
        assert eid > last.get(pid, 0), f"position {pid}: event {eid} out of order"
        last[pid] = eid
    return entries
