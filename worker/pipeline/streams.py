"""Idempotent publishing to Redis Streams.

Entries are written by a Lua script that, for each entry, XADDs (``*`` id, ``MAXLEN ~``
trim) only when the event is newer than the last one published for the same position to the
same stream, and records that event id in the same atomic step. One script call carries up
to ``CHUNK`` entries (one command per chunk, not per entry; all chunks in one round trip).

The last published event id of a position is a field of a hash per stream and *bucket* of
event ids (``pw:published:<stream>:{<stream>}:<event_id // BUCKET>``, see
:func:`dedupe_key`), read with one HMGET and written with one HSET per bucket and chunk:
inside a Lua script every ``redis.call`` costs more than the command itself, and two calls
per entry (GET, SET) were a third of Redis's time in a backlog drain. A redelivered event
has the same id, so it is always looked up in the bucket it was recorded in, and the check
stays exact: within a bucket, a position's field only grows, in publish order. A bucket's
hash expires ``dedupe_ttl_seconds`` after its last write. An XADD that fails (a key of the
wrong type) ends the script after recording what it did append, so the retry of the batch
appends nothing twice.

Redis Cluster: a script may only touch keys of one slot, all declared in KEYS. A stream's
dedupe hashes carry the stream's hash tag, so they share its slot; with a cluster client
(:class:`redis.asyncio.RedisCluster`) a batch is published with one script call per slot
(and chunk), the keys declared, all calls in one pipelined round trip that redis-py splits
by node. A standalone client keeps one call per chunk whatever the streams, keys not
declared (a single server holds every slot).

Events of one position are published in increasing id order (the claim guarantees it), so a
worker that died between XADD and recording the event in PostgreSQL publishes nothing twice
after a restart, and nothing that was not published is ever skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from itertools import chain
from typing import Final, NamedTuple, TypeAlias

import orjson
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.crc import key_slot

from worker.driver_errors import translated_redis_errors
from worker.errors import StreamUnavailable
from worker.settings import has_hash_tag

# ARGV: maxlen, ttl, and one JSON array of entries [stream, hash key, position, event id,
# [k, v, ...]]. Returns one string of '1' (appended) and '0' (already published) per entry:
# a single bulk reply is much cheaper for the client to parse than an array of integers.
# One JSON argument per chunk instead of ~30 arguments per entry: packing arguments was the
# largest CPU cost of the worker (the bench and a profile showed it). KEYS (cluster mode
# only) lists the streams and hashes the entries name; the script reads them from ARGV.
PUBLISH_SCRIPT: Final = """
local maxlen, ttl = ARGV[1], ARGV[2]
local entries = cjson.decode(ARGV[3])
-- group the positions by dedupe hash: one HMGET per hash
local keys, positions, at = {}, {}, {}
for i, entry in ipairs(entries) do
  local key = entry[2]
  local list = positions[key]
  if not list then
    list = {}
    positions[key] = list
    at[key] = {}
    keys[#keys + 1] = key
  end
  list[#list + 1] = entry[3]
  at[key][#list] = i
end
local last = {}
for _, key in ipairs(keys) do
  local found = redis.call('HMGET', key, unpack(positions[key]))
  for j, i in ipairs(at[key]) do
    last[i] = found[j]
  end
end
local out, writes, failed = {}, {}, nil
for i, entry in ipairs(entries) do
  local seen = last[i]
  if seen and tonumber(seen) >= tonumber(entry[4]) then
    out[i] = '0'
  else
    local added = redis.pcall('XADD', entry[1], 'MAXLEN', '~', maxlen, '*', unpack(entry[5]))
    if type(added) == 'table' and added.err then
      failed = added
      break
    end
    local w = writes[entry[2]]
    if not w then
      w = {}
      writes[entry[2]] = w
    end
    w[#w + 1] = entry[3]
    w[#w + 1] = entry[4]
    out[i] = '1'
  end
end
-- record what was appended, also when an XADD failed (a script is not rolled back: an
-- appended entry left unrecorded would be appended again when the batch is retried)
for _, key in ipairs(keys) do
  local w = writes[key]
  if w then
    redis.call('HSET', key, unpack(w))
    redis.call('EXPIRE', key, ttl)
  end
end
if failed then
  return failed
end
return table.concat(out)
"""
CHUNK: Final = 100
BUCKET: Final = 1_000_000  # event ids per dedupe hash

RedisClient: TypeAlias = aioredis.Redis | aioredis.RedisCluster


class Publication(NamedTuple):
    """One entry for one stream, on behalf of one event of one position. (A named tuple:
    built once or twice per event, it costs a third of a frozen dataclass.)"""

    stream: str
    event_id: int
    position_id: str
    fields: dict[str, str]


def dedupe_key(stream: str, event_id: int) -> str:
    """The hash that holds, per position, the last event id published to ``stream`` among
    the event ids of ``event_id``'s bucket.

    It hashes to the stream's Redis Cluster slot: ``pw:published:<stream>:{<stream>}:<n>``,
    the braces being the hash tag (only the text between a key's first ``{`` and the next
    ``}`` is hashed), so the key hashes as the stream name itself does. A stream name that
    has a hash tag of its own is not wrapped again: ``pw:published:<stream>:<n>`` carries
    that tag first. (The plain ``<stream>`` after the prefix lets ``pw:published:<stream>:*``
    find a stream's hashes. A stream name with braces but no hash tag has no such key: the
    settings refuse it in cluster mode; standalone, any key does.)
    """
    return _dedupe_prefix(stream) + str(event_id // BUCKET)


@functools.cache
def _dedupe_prefix(stream: str) -> str:
    if has_hash_tag(stream):
        return f"pw:published:{stream}:"
    return f"pw:published:{stream}:{{{stream}}}:"


@functools.cache
def stream_slot(stream: str) -> int:
    """The Redis Cluster slot of ``stream`` and of its dedupe hashes."""
    return key_slot(stream.encode())


class StreamPublisher:
    def __init__(self, client: RedisClient, maxlen: int, dedupe_ttl_seconds: int) -> None:
        self.client, self.maxlen, self.ttl = client, maxlen, dedupe_ttl_seconds
        self.cluster = isinstance(client, aioredis.RedisCluster)
        self._sha: str | None = None

    async def publish(self, publications: Sequence[Publication]) -> list[bool]:
        """Publish in order, in one round trip (one per node in cluster mode); True for each
        entry actually appended."""
        if not publications:
            return []
        try:
            async with translated_redis_errors("publish"):
                try:
                    return await self._publish(publications)
                except redis_errors.NoScriptError:  # Redis restarted and forgot the script
                    self._sha = None
                    return await self._publish(publications)
        except StreamUnavailable:
            self._sha = None  # loaded again by the next publish, wherever it goes
            raise

    async def _publish(self, publications: Sequence[Publication]) -> list[bool]:
        if self._sha is None:
            self._sha = str(await self.client.script_load(PUBLISH_SCRIPT))
        if self.cluster:
            return await self._publish_per_slot(publications)
        chunks = [
            _payload(publications[start : start + CHUNK])
            for start in range(0, len(publications), CHUNK)
        ]
        if len(chunks) == 1:  # a pipeline of one command costs a third more than the command
            results = [await self.client.evalsha(self._sha, 0, self.maxlen, self.ttl, chunks[0])]
        else:
            pipe = self.client.pipeline(transaction=False)
            for chunk in chunks:
                pipe.evalsha(self._sha, 0, self.maxlen, self.ttl, chunk)
            results = await pipe.execute(raise_on_error=True)
        return [flag in (49, "1") for chunk in results for flag in chunk]  # b"1" or "1"

    async def _publish_per_slot(self, publications: Sequence[Publication]) -> list[bool]:
        """One script call per slot and chunk, its keys declared (redis-py routes it to the
        slot's node by them); each slot's entries keep their order."""
        assert self._sha is not None
        by_slot: dict[int, list[int]] = {}
        for i, pub in enumerate(publications):
            by_slot.setdefault(stream_slot(pub.stream), []).append(i)
        calls = [
            indices[start : start + CHUNK]
            for indices in by_slot.values()
            for start in range(0, len(indices), CHUNK)
        ]
        groups = [[publications[i] for i in indices] for indices in calls]
        payloads = [(_payload(group), _keys(group)) for group in groups]
        if len(payloads) == 1:
            payload, keys = payloads[0]
            results = [
                await self.client.evalsha(
                    self._sha, len(keys), *keys, self.maxlen, self.ttl, payload
                )
            ]
        else:
            pipe = self.client.pipeline(transaction=False)
            for payload, keys in payloads:
                pipe.evalsha(self._sha, len(keys), *keys, self.maxlen, self.ttl, payload)
            results = await pipe.execute(raise_on_error=True)
        flags = [False] * len(publications)
        for indices, result in zip(calls, results, strict=True):
            for i, flag in zip(indices, result, strict=True):
                flags[i] = flag in (49, "1")  # b"1" or "1"
        return flags


def _payload(publications: Sequence[Publication]) -> bytes:
    """One script call's entries, as the JSON argument the script decodes."""
    return orjson.dumps(
        [
            [
                pub.stream,
                dedupe_key(pub.stream, pub.event_id),
                pub.position_id,
                str(pub.event_id),  # a Lua number would be written as %.14g
                [*chain.from_iterable(pub.fields.items())],
            ]
            for pub in publications
        ]
    )


def _keys(publications: Sequence[Publication]) -> list[str]:
    """The keys a script call on these entries touches (its KEYS in cluster mode): each
    stream and dedupe hash once, in order of appearance."""
    names = ((pub.stream, dedupe_key(pub.stream, pub.event_id)) for pub in publications)
    return [*dict.fromkeys(chain.from_iterable(names))]
