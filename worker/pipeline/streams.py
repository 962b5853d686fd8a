"""Idempotent publishing to Redis Streams.

Entries are written by a Lua script that, for each entry, XADDs (``*`` id, ``MAXLEN ~``
trim) only when the event is newer than the last one published for the same position to the
same stream, and records that event id in the same atomic step. One script call carries up
to ``CHUNK`` entries (one round trip and one command per chunk, not per entry).

Events of one position are published in increasing id order (the claim guarantees it), so a
worker that died between XADD and recording the event in PostgreSQL publishes nothing twice
after a restart, and nothing that was not published is ever skipped. Redis Cluster is not
supported (the keys of one call may live in different slots).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import orjson
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from worker.errors import StreamUnavailable

# ARGV: maxlen, ttl, and one JSON array of entries [stream, dedupe key, event id, [k, v, ...]].
# Returns one string of '1' (appended) and '0' (already published) per entry: a single bulk
# reply is much cheaper for the client to parse than an array of integers.
# One JSON argument per chunk instead of ~30 arguments per entry: packing arguments was the
# largest CPU cost of the worker (the bench and a profile showed it).
PUBLISH_SCRIPT: Final = """
local maxlen, ttl = ARGV[1], ARGV[2]
local out = {}
for _, entry in ipairs(cjson.decode(ARGV[3])) do
  local stream, key, event_id = entry[1], entry[2], entry[3]
  local last = redis.call('GET', key)
  if last and tonumber(last) >= tonumber(event_id) then
    out[#out + 1] = '0'
  else
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(entry[4]))
    redis.call('SET', key, event_id, 'EX', ttl)
    out[#out + 1] = '1'
  end
end
return table.concat(out)
"""
CHUNK: Final = 100


@dataclass(frozen=True, slots=True)
class Publication:
    """One entry for one stream, on behalf of one event of one position."""

    stream: str
    event_id: int
    position_id: str
    fields: dict[str, str]


def dedupe_key(stream: str, position_id: str) -> str:
    return f"pw:published:{stream}:{position_id}"


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
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(publications), CHUNK):
            entries = [
                [
                    pub.stream,
                    dedupe_key(pub.stream, pub.position_id),
                    str(pub.event_id),
                    [item for pair in pub.fields.items() for item in pair],
                ]
                for pub in publications[start : start + CHUNK]
            ]
            pipe.evalsha(self._sha, 0, self.maxlen, self.ttl, orjson.dumps(entries))
        results = await pipe.execute(raise_on_error=True)
        return [flag in (49, "1") for chunk in results for flag in chunk]  # b"1" or "1"
