"""The worker on a real Redis Cluster: three primaries (``embedded_redis_cluster``,
tests/conftest.py), ``redis.cluster = true``.

Each publish script call touches the keys of one slot: a stream and its dedupe hashes share
the stream's slot (a hash tag), and a batch for several streams is one call per slot. The
streams here are picked to live on three different nodes, so every batch with a
notification or a monitoring request spans nodes. What test_streams.py and test_pipeline.py
pin on a single Redis holds here too: every committed event reaches its streams exactly
once, in order per position, also when a batch is published again after a crash.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
import redis
import redis.asyncio as aioredis
import structlog
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from redis.crc import key_slot

from tests.pipeline_support import (
    burst,
    db_event_ids,
    eventually,
    pending,
    settings_for,
    worker_env,
)
from tests.stream_reads import fields_of
from tests.support import insert_position, seed_owner
from tests.waits import wait_until
from worker.app import App, ExtraHandlers, make_redis
from worker.db.outbox import Outbox
from worker.events import Event, ai_monitoring_request_for, event_from_row, notification_for
from worker.metrics import Metrics
from worker.ops.check import run_checks
from worker.ops.status import collect_status
from worker.pipeline.dispatcher import Dispatcher
from worker.pipeline.handlers import Registry
from worker.pipeline.streams import BUCKET, CHUNK, Publication, StreamPublisher, dedupe_key
from worker.settings import Settings, load_settings
from worker.testing.processes import WorkerProcess
from worker.testing.servers import EmbeddedRedisCluster

pytestmark = pytest.mark.anyio

# One stream per node of the three (slots 95, 13656 and 6953 of 0-5460, 5461-10922 and
# 10923-16383); test_the_streams_live_on_three_nodes checks it on the cluster itself.
EVENTS, NOTIFICATIONS, AI = "cluster:events", "cluster:notifications", "cluster:ai-monitoring"
STREAMS = (EVENTS, NOTIFICATIONS, AI)


# Keys and slots (no server) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "stream",
    [
        "positions:events",
        "positions:notifications",
        "positions:ai-monitoring",
        *STREAMS,
        "{positions}:events",  # a hash tag of its own: it decides, not wrapped again
        "a}b{c}",
        "x",
    ],
)
@pytest.mark.parametrize("event_id", [1, BUCKET - 1, BUCKET, 7 * BUCKET + 3])
def test_a_dedupe_hash_hashes_to_its_streams_slot(stream: str, event_id: int) -> None:
    key = dedupe_key(stream, event_id)
    assert key_slot(key.encode()) == key_slot(stream.encode())
    assert key.startswith(f"pw:published:{stream}:")  # `pw:published:<stream>:*` finds it
    assert key.endswith(f":{event_id // BUCKET}")


def test_streams_without_a_hash_tag_spread_over_slots() -> None:
    """The wrapped name is the hash tag: streams keep their own slots (not all one slot)."""
    slots = {key_slot(dedupe_key(stream, 1).encode()) for stream in STREAMS}
    assert slots == {key_slot(stream.encode()) for stream in STREAMS}
    assert len(slots) == 3


# Helpers -------------------------------------------------------------------------------------


@pytest.fixture
def cluster_url(embedded_redis_cluster: EmbeddedRedisCluster) -> Iterator[str]:
    """The cluster's URL, every node's data flushed at the start of the test."""
    client = redis.RedisCluster.from_url(embedded_redis_cluster.url)
    try:
        client.flushall()  # on every primary
        yield embedded_redis_cluster.url
    finally:
        client.close()


def cluster_settings(db_url: str, url: str, **pipeline: Any) -> Settings:
    base = settings_for(db_url, url, **pipeline)
    streams = replace(base.streams, events=EVENTS, notifications=NOTIFICATIONS, ai_monitoring=AI)
    return replace(base, redis=replace(base.redis, cluster=True), streams=streams)


def cluster_env(db_url: str, url: str, **pipeline: Any) -> dict[str, str]:
    """``position-worker run``'s environment for the cluster (what an operator sets)."""
    return {
        **worker_env(db_url, url, **pipeline),
        "POSITION_WORKER__REDIS__CLUSTER": "true",
        "POSITION_WORKER__STREAMS__EVENTS": EVENTS,
        "POSITION_WORKER__STREAMS__NOTIFICATIONS": NOTIFICATIONS,
        "POSITION_WORKER__STREAMS__AI_MONITORING": AI,
    }


def entries(url: str, stream: str) -> list[dict[str, str]]:
    client = redis.RedisCluster.from_url(url, decode_responses=True)
    try:
        return fields_of(client.xrange(stream))
    finally:
        client.close()


def length(url: str, stream: str) -> int:
    client = redis.RedisCluster.from_url(url)
    try:
        return int(client.xlen(stream))
    finally:
        client.close()


def keys_by_node(cluster: EmbeddedRedisCluster) -> dict[int, set[str]]:
    """Each node's own keys (a plain connection to a node scans only that node)."""
    found: dict[int, set[str]] = {}
    for port in cluster.ports:
        client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        try:
            found[port] = set(client.scan_iter(count=1000))
        finally:
            client.close()
    return found


def db_events(db_url: str) -> list[Event]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT * FROM position_events ORDER BY id")
        return [event_from_row(row) for row in rows]


def dispatcher_for(settings: Settings, publisher: StreamPublisher) -> Dispatcher:
    """A dispatcher that is never run: for its publications (what it sends per event)."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(settings.database.url, open=False)
    return Dispatcher(
        Outbox(pool, settings.pipeline.lease_seconds),
        publisher,
        Registry(),
        pipeline=settings.pipeline,
        streams=settings.streams,
        metrics=Metrics(),
        log=structlog.get_logger(),
    )


def assert_each_stream_exactly_once(db_url: str, url: str) -> None:
    """Every committed event in each stream it belongs to, once, per position in id order
    (the events stream: every event; the others: the events the dispatcher maps to them)."""
    events = db_events(db_url)
    expected = {
        EVENTS: [e.event_id for e in events],
        NOTIFICATIONS: [e.event_id for e in events if notification_for(e) is not None],
        AI: [e.event_id for e in events if ai_monitoring_request_for(e) is not None],
    }
    assert expected[EVENTS] == db_event_ids(db_url)
    assert expected[NOTIFICATIONS] and expected[AI], "the load must reach every stream"
    for stream, ids in expected.items():
        got = entries(url, stream)
        counts = Counter(int(e["event_id"]) for e in got)
        duplicated = sorted(i for i, n in counts.items() if n > 1)
        assert not duplicated, f"{stream}: {len(duplicated)} duplicated, e.g. {duplicated[:5]}"
        assert sorted(counts) == sorted(ids), f"{stream}: missing or foreign events"
        last: dict[str, int] = {}
        for entry in got:
            pid, eid = entry["position_id"], int(entry["event_id"])
            assert eid > last.get(pid, 0), f"{stream}: position {pid} out of order at {eid}"
            last[pid] = eid


@asynccontextmanager
async def running(settings: Settings, extra: ExtraHandlers | None = None) -> AsyncIterator[App]:
    app = App(settings, extra_handlers=extra, handle_signals=False)
    async with app.serving():
        yield app


# The cluster ---------------------------------------------------------------------------------


def test_the_streams_live_on_three_nodes(
    embedded_redis_cluster: EmbeddedRedisCluster, cluster_url: str
) -> None:
    client = redis.RedisCluster.from_url(cluster_url)
    try:
        slots = {int(client.cluster_keyslot(stream)) for stream in STREAMS}  # CLUSTER KEYSLOT
        nodes = {client.nodes_manager.get_node_from_slot(slot).port for slot in slots}
    finally:
        client.close()
    assert nodes == set(embedded_redis_cluster.ports)
    assert slots == {key_slot(stream.encode()) for stream in STREAMS}


# The publisher -------------------------------------------------------------------------------


def pub(event_id: int, position: str, stream: str = EVENTS) -> Publication:
    return Publication(
        stream, event_id, position, {"event_id": str(event_id), "position_id": position}
    )


@pytest.fixture
async def publisher(cluster_url: str) -> AsyncIterator[StreamPublisher]:
    client = aioredis.RedisCluster.from_url(cluster_url)
    try:
        yield StreamPublisher(client, maxlen=10_000, dedupe_ttl_seconds=3600)
    finally:
        await client.aclose()


def ids(url: str, stream: str) -> list[tuple[str, str]]:
    return [(e["position_id"], e["event_id"]) for e in entries(url, stream)]


async def test_a_batch_over_three_nodes_published_again_appends_nothing(
    publisher: StreamPublisher, cluster_url: str
) -> None:
    assert publisher.cluster
    batch = [pub(1, "a"), pub(1, "a", NOTIFICATIONS), pub(2, "b"), pub(2, "b", AI), pub(3, "a")]
    assert await publisher.publish(batch) == [True] * 5
    assert await publisher.publish(batch) == [False] * 5  # the crashed worker's batch again
    assert ids(cluster_url, EVENTS) == [("a", "1"), ("b", "2"), ("a", "3")]
    assert ids(cluster_url, NOTIFICATIONS) == [("a", "1")]
    assert ids(cluster_url, AI) == [("b", "2")]


async def test_a_redelivery_larger_than_a_script_call_appends_exactly_what_was_not_published(
    publisher: StreamPublisher, cluster_url: str
) -> None:
    """Several calls per slot (chunks) and per node, in one pipelined publish; the flags
    come back in the batch's order."""
    count = 2 * CHUNK + 7
    batch = [pub(i, f"p{i % 5}", STREAMS[i % 3] if i % 4 else EVENTS) for i in range(1, count + 1)]
    done = CHUNK + 13
    assert all(await publisher.publish(batch[:done]))
    assert await publisher.publish(batch) == [False] * done + [True] * (count - done)
    for stream in STREAMS:
        expected = [(p.position_id, str(p.event_id)) for p in batch if p.stream == stream]
        assert ids(cluster_url, stream) == expected


async def test_a_script_the_cluster_forgot_is_loaded_again(
    publisher: StreamPublisher, cluster_url: str
) -> None:
    assert all(await publisher.publish([pub(1, "a")]))
    await publisher.client.script_flush()  # on every primary
    assert await publisher.publish([pub(1, "a"), pub(2, "a", AI), pub(3, "b", NOTIFICATIONS)]) == [
        False,
        True,
        True,
    ]


async def test_a_position_whose_events_cross_a_dedupe_bucket(
    publisher: StreamPublisher, cluster_url: str
) -> None:
    last, first = BUCKET - 1, BUCKET
    assert await publisher.publish([pub(last, "a"), pub(last, "a", AI)]) == [True, True]
    again = [pub(last, "a"), pub(first, "a"), pub(last, "a", AI), pub(first, "a", AI)]
    assert await publisher.publish(again) == [False, True, False, True]
    assert await publisher.publish(again) == [False] * 4
    assert ids(cluster_url, EVENTS) == ids(cluster_url, AI) == [("a", str(last)), ("a", str(first))]


# The worker ----------------------------------------------------------------------------------


async def test_committed_events_reach_the_three_streams_exactly_once(
    db_url: str, cluster_url: str, embedded_redis_cluster: EmbeddedRedisCluster
) -> None:
    settings = cluster_settings(db_url, cluster_url)
    async with running(settings) as app:
        committed = await anyio.to_thread.run_sync(burst, db_url, 1000)
        assert committed >= 1000
        await eventually(lambda: pending(db_url) == 0, timeout=60)
        beat = redis.RedisCluster.from_url(cluster_url, decode_responses=True)
        try:  # the heartbeat `status` reads, written through the cluster client
            assert beat.hgetall(f"pw:worker:{app.name}")["started_at"]
        finally:
            beat.close()
        # `position-worker status` reads every stream and heartbeat through the cluster
        report = await anyio.to_thread.run_sync(collect_status, settings)
        assert "error" not in report["streams"]
        lengths = {stream: report["streams"][stream]["length"] for stream in STREAMS}
        assert lengths == {stream: length(cluster_url, stream) for stream in STREAMS}
        assert lengths[EVENTS] >= committed
        assert app.name in {w["name"] for w in report["workers"]}
    assert_each_stream_exactly_once(db_url, cluster_url)
    assert length(cluster_url, EVENTS) >= committed

    # each stream's keys on its own node, in its slot; the streams on three nodes
    on_node = keys_by_node(embedded_redis_cluster)
    nodes = set()
    for stream in STREAMS:
        hashes = {dedupe_key(stream, int(e["event_id"])) for e in entries(cluster_url, stream)}
        (node,) = [port for port, keys in on_node.items() if stream in keys]
        assert hashes <= on_node[node], f"{stream}: a dedupe hash on another node"
        nodes.add(node)
        client = redis.Redis(host="127.0.0.1", port=node)
        try:
            slots = {int(client.cluster("KEYSLOT", k)) for k in {stream, *hashes}}
        finally:
            client.close()
        assert slots == {key_slot(stream.encode())}
    assert len(nodes) == 3


async def test_events_a_crashed_worker_published_are_not_published_again(
    db_url: str, cluster_url: str
) -> None:
    """The crash between XADD and marking the batch processed, step by step: the events are
    committed, a first worker publishes a part of them (as the dispatcher would: the same
    publications) and never marks them; the next worker claims them all again."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        owner = seed_owner(conn)
        for _ in range(40):
            pid = insert_position(conn, owner)
            for status in ("submitting", "open", "closing", "closed"):
                conn.execute("UPDATE positions SET status = %s WHERE id = %s", (status, pid))
    settings = cluster_settings(db_url, cluster_url)
    client = make_redis(settings)
    try:
        publisher = StreamPublisher(client, settings.streams.maxlen, 3600)
        dispatcher = dispatcher_for(settings, publisher)
        crashed = [p for event in db_events(db_url)[:130] for p in dispatcher.publications(event)]
        assert {p.stream for p in crashed} == set(STREAMS)
        assert all(await publisher.publish(crashed))
    finally:
        await client.aclose()
    assert pending(db_url) == len(db_event_ids(db_url))  # nothing was marked
    before = {stream: length(cluster_url, stream) for stream in STREAMS}
    async with running(settings):
        await eventually(lambda: pending(db_url) == 0, timeout=30)
    assert_each_stream_exactly_once(db_url, cluster_url)
    assert all(length(cluster_url, s) > before[s] for s in (EVENTS, NOTIFICATIONS))


def fail_once(failed: set[int]) -> ExtraHandlers:
    """A handler that fails the first attempt of every position event: each is published
    again with its retry."""

    def install(registry: Registry, pool: AsyncConnectionPool[Any]) -> None:
        async def flaky(event: Event) -> None:
            if event.event_id not in failed:
                failed.add(event.event_id)
                raise RuntimeError("downstream hiccup")

        registry.add("flaky", lambda e: e.kind == "position", flaky)

    return install


async def test_events_retried_after_a_failed_handler_are_published_once(
    db_url: str, cluster_url: str
) -> None:
    failed: set[int] = set()
    settings = cluster_settings(db_url, cluster_url, max_attempts=3)
    async with running(settings, fail_once(failed)):
        await anyio.to_thread.run_sync(burst, db_url, 200)
        await eventually(lambda: pending(db_url) == 0, timeout=60)
    assert len(failed) >= 200  # every one of them was published at least twice
    assert_each_stream_exactly_once(db_url, cluster_url)


async def test_sigkill_mid_burst_then_restart_publishes_every_event_once(
    db_url: str, cluster_url: str, tmp_path: Path
) -> None:
    env = cluster_env(db_url, cluster_url, lease_seconds=2.0, batch_size=100)
    done: list[int] = []
    load = threading.Thread(target=lambda: done.append(burst(db_url, 3000, 7)), daemon=True)
    first = WorkerProcess(env, tmp_path / "first.log").start()
    second: WorkerProcess | None = None
    try:
        load.start()
        wait_until(lambda: length(cluster_url, EVENTS) >= 800, timeout=60)
        first.kill()  # SIGKILL, somewhere between claim, XADD and mark_processed
        assert first.process is not None and first.process.returncode == -signal.SIGKILL
        load.join(120)
        assert done and done[0] >= 3000
        second = WorkerProcess(env, tmp_path / "second.log").start()
        wait_until(lambda: pending(db_url) == 0, timeout=90)
    finally:
        first.kill()
        if second is not None:
            second.kill()
    assert_each_stream_exactly_once(db_url, cluster_url)


async def test_the_health_check_passes_against_the_cluster(db_url: str, cluster_url: str) -> None:
    results = await run_checks(cluster_settings(db_url, cluster_url))
    assert [(r.name, r.ok) for r in results] == [
        ("database", True),
        ("redis", True),
        ("listen_notify", True),
    ], results


async def test_the_environment_selects_the_cluster_client(
    db_url: str, cluster_url: str, embedded_redis_cluster: EmbeddedRedisCluster
) -> None:
    settings = load_settings(environ=cluster_env(db_url, cluster_url))
    assert settings.redis.cluster
    client = make_redis(settings)
    try:
        assert isinstance(client, aioredis.RedisCluster)
        assert await client.ping()
        # the URL names one node; the client found the other two
        assert {node.port for node in client.get_primaries()} == set(embedded_redis_cluster.ports)
    finally:
        await client.aclose()
