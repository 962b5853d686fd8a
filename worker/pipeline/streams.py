"""Idempotent publishing to Redis Streams.

Entries are written by a Lua script that, for each entry, XADDs (``*`` id, ``MAXLEN ~``
trim) only when the event is newer than the last one published for the same position to the
same stream, and records that event id in the same atomic step. One script call carries up
to ``CHUNK`` entries (one command per chunk, not per entry; all chunks in one round trip).

The last published event id of a position is a field of a hash per stream and *bucket* of
event ids (``pw:published:<stream>:<event_id // BUCKET>``), read with one HMGET and written
with one HSET per bucket and chunk: inside a Lua script every ``redis.call`` costs more than
the command itself, and two calls per entry (GET, SET) were a third of Redis's time in a
backlog drain. A redelivered event has the same id, so it is always looked up in the bucket
it was recorded in, and the check stays exact: within a bucket, a position's field only
grows, in publish order. A bucket's hash expires ``dedupe_ttl_seconds`` after its last write.
Markers written by older workers (``pw:published:<stream>:<position_id>``, one string key per
position) are still read for positions the hash does not know, until they expire: stopping
the old workers and starting new ones publishes nothing twice. (Old and new workers must not
run at the same time.) An XADD that fails (a key of the wrong type) ends the script after
recording what it did append, so the retry of the batch appends nothing twice.

Events of one position are published in increasing id order (the claim guarantees it), so a
worker that died between XADD and recording the event in PostgreSQL publishes nothing twice
after a restart, and nothing that was not published is ever skipped. Redis Cluster is not
supported (the keys of one call may live in different slots).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Final, NamedTuple

import orjson
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from worker.errors import StreamUnavailable

# ARGV: maxlen, ttl, and one JSON array of entries [stream, hash key, position, event id,
# [k, v, ...]]. Returns one string of '1' (appended) and '0' (already published) per entry:
# a single bulk reply is much cheaper for the client to parse than an array of integers.
# One JSON argument per chunk instead of ~30 arguments per entry: packing arguments was the
# largest CPU cost of the worker (the bench and a profile showed it).
PUBLISH_SCRIPT: Final = """
local maxlen, ttl = ARGV[1], ARGV[2]
local entries = cjson.decode(ARGV[3])
-- group the positions by dedupe hash: one HMGET per hash
local keys, positions, slots = {}, {}, {}
for i, entry in ipairs(entries) do
  local key = entry[2]
  local list = positions[key]
  if not list then
    list = {}
    positions[key] = list
    slots[key] = {}
    keys[#keys + 1] = key
  end
  list[#list + 1] = entry[3]
  slots[key][#list] = i
end
local last, legacy, legacy_at = {}, {}, {}
for _, key in ipairs(keys) do
  local found = redis.call('HMGET', key, unpack(positions[key]))
  for j, i in ipairs(slots[key]) do
    if found[j] then
      last[i] = found[j]
    else
      legacy[#legacy + 1] = 'pw:published:' .. entries[i][1] .. ':' .. entries[i][3]
      legacy_at[#legacy_at + 1] = i
    end
  end
end
-- markers of workers older than the hashes (one string key per stream and position) are
-- read until they expire, so an upgrade publishes nothing twice
if #legacy > 0 then
  local found = redis.call('MGET', unpack(legacy))
  for j, i in ipairs(legacy_at) do
    if found[j] then
      last[i] = found[j]
    end
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


class Publication(NamedTuple):
    """One entry for one stream, on behalf of one event of one position. (A named tuple:
    built once or twice per event, it costs a third of a frozen dataclass.)"""

    stream: str
    event_id: int
    position_id: str
    fields: dict[str, str]


def dedupe_key(stream: str, event_id: int) -> str:
    """The hash that holds, per position, the last event id published to ``stream`` among
    the event ids of ``event_id``'s bucket."""
    return f"pw:published:{stream}:{event_id // BUCKET}"


class StreamPublisher:
    def __init__(self, client: aioredis.Redis, maxlen: int, dedupe_ttl_seconds: int) -> None:
        self.client, self.maxlen, self.ttl = client, maxlen, dedupe_ttl_seconds
        self._sha: str | None = None

    async def publish(self, publications: Sequence[Publication]) -> list[bool]:
        """Publish in order, in one round trip; True for each entry actually appended."""
        if not publications:
            return []
        try:
            return await self._publish(publications)
        except redis_errors.NoScriptError:  # Redis restarted and forgot the script
            self._sha = None
            return await self._publish(publications)
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            self._sha = None
            raise StreamUnavailable(f"Redis unavailable: {exc}") from exc
        except redis_errors.ResponseError as exc:
            raise StreamUnavailable(f"Redis refused the publish: {exc}") from exc

    async def _publish(self, publications: Sequence[Publication]) -> list[bool]:
        if self._sha is None:
            self._sha = str(await self.client.script_load(PUBLISH_SCRIPT))
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
