"""The idempotent publish on a real Redis: what a redelivered batch appends, and what not.

A worker killed between publishing a batch and committing its claim publishes the same
events again after its restart (or another worker does); none may be appended twice and
none that was not appended may be skipped (tests/integration/test_pipeline_processes.py
shows it end to end with SIGKILL; these pin the rule itself, entry by entry).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis

from tests.stream_reads import fields_of
from worker.errors import StreamUnavailable
from worker.pipeline.streams import BUCKET, CHUNK, Publication, StreamPublisher, dedupe_key

pytestmark = pytest.mark.anyio

STREAM = "test:events"
OTHER = "test:notifications"


def pub(event_id: int, position: str, stream: str = STREAM) -> Publication:
    fields = {"event_id": str(event_id), "position_id": position}
    return Publication(stream, event_id, position, fields)


def entries(redis_url: str, stream: str = STREAM) -> list[tuple[str, str]]:
    """(position_id, event_id) of every entry, in stream order."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [(f["position_id"], f["event_id"]) for f in fields_of(client.xrange(stream))]
    finally:
        client.close()


@pytest.fixture
async def publisher(redis_url: str) -> AsyncIterator[StreamPublisher]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield StreamPublisher(client, maxlen=10_000, dedupe_ttl_seconds=3600)
    finally:
        await client.aclose()


async def test_a_batch_published_again_appends_nothing(
    publisher: StreamPublisher, redis_url: str
) -> None:
    batch = [pub(1, "a"), pub(2, "b"), pub(3, "a"), pub(3, "a", OTHER)]
    assert await publisher.publish(batch) == [True, True, True, True]
    assert await publisher.publish(batch) == [False, False, False, False]
    assert entries(redis_url) == [("a", "1"), ("b", "2"), ("a", "3")]
    assert entries(redis_url, OTHER) == [("a", "3")]


@pytest.mark.parametrize("count", [3, CHUNK + 1], ids=["one call", "a pipeline of calls"])
async def test_a_script_redis_forgot_is_loaded_again(
    publisher: StreamPublisher, redis_url: str, count: int
) -> None:
    """A restarted Redis has no scripts: the publish loads it again and goes through."""
    assert all(await publisher.publish([pub(1, "a")]))
    await publisher.client.script_flush()
    batch = [pub(i, f"p{i}") for i in range(2, 2 + count)]
    assert all(await publisher.publish(batch))
    assert len(entries(redis_url)) == 1 + count


async def test_a_redelivery_appends_exactly_what_was_not_published(
    publisher: StreamPublisher, redis_url: str
) -> None:
    """The crashed worker got its first events out; the next claim holds them and more."""
    await publisher.publish([pub(1, "a"), pub(2, "b")])
    again = [pub(1, "a"), pub(2, "b"), pub(4, "a"), pub(5, "c"), pub(6, "b"), pub(7, "a")]
    assert await publisher.publish(again) == [False, False, True, True, True, True]
    assert entries(redis_url) == [
        ("a", "1"), ("b", "2"), ("a", "4"), ("c", "5"), ("b", "6"), ("a", "7")
    ]  # fmt: skip


async def test_batches_larger_than_one_script_call_keep_the_rule(
    publisher: StreamPublisher, redis_url: str
) -> None:
    """A position's events straddle the chunks of one pipelined publish."""
    count = 2 * CHUNK + 7
    batch = [pub(i, f"p{i % 3}") for i in range(1, count + 1)]
    assert all(await publisher.publish(batch[: CHUNK + 5]))
    flags = await publisher.publish(batch)
    assert flags == [False] * (CHUNK + 5) + [True] * (count - CHUNK - 5)
    assert [int(e) for _, e in entries(redis_url)] == list(range(1, count + 1))


async def test_a_position_whose_events_cross_a_dedupe_bucket(
    publisher: StreamPublisher, redis_url: str
) -> None:
    """Ids are looked up in their own bucket: the first event of a new bucket is new, and
    a redelivered one is found where it was recorded."""
    last, first = BUCKET - 1, BUCKET
    assert dedupe_key(STREAM, last) != dedupe_key(STREAM, first)
    assert await publisher.publish([pub(last, "a")]) == [True]
    assert await publisher.publish([pub(last, "a"), pub(first, "a")]) == [False, True]
    assert await publisher.publish([pub(last, "a"), pub(first, "a")]) == [False, False]
    assert entries(redis_url) == [("a", str(last)), ("a", str(first))]


async def test_the_dedupe_hashes_expire_after_the_ttl(
    publisher: StreamPublisher, redis_url: str
) -> None:
    await publisher.publish([pub(1, "a"), pub(BUCKET + 1, "a")])
    client = redis.Redis.from_url(redis_url)
    try:
        for key in (dedupe_key(STREAM, 1), dedupe_key(STREAM, BUCKET + 1)):
            assert 0 < int(client.ttl(key)) <= 3600
            assert client.hget(key, "a") is not None
    finally:
        client.close()


async def test_an_xadd_that_fails_mid_chunk_leaves_nothing_to_append_twice(
    publisher: StreamPublisher, redis_url: str
) -> None:
    """Redis does not roll a script back: entries appended before the failing one must be
    recorded, or the retried batch appends them again."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(OTHER, "not a stream")  # a misconfigured stream name, say
        batch = [pub(1, "a"), pub(2, "b"), pub(2, "b", OTHER), pub(3, "c")]
        for _ in range(3):  # the claim rolls back and the batch is retried
            with pytest.raises(StreamUnavailable):
                await publisher.publish(batch)
        assert entries(redis_url) == [("a", "1"), ("b", "2")]
        client.delete(OTHER)
        assert await publisher.publish(batch) == [False, False, True, True]
    finally:
        client.close()
    assert entries(redis_url) == [("a", "1"), ("b", "2"), ("c", "3")]
    assert entries(redis_url, OTHER) == [("b", "2")]
