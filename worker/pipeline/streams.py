"""Idempotent publishing to Redis Streams.

Every entry is written by one Lua script that XADDs (``*`` id, ``MAXLEN ~`` trim) only when
the event is newer than the last one published for the same position to the same stream,
and records that event id in the same atomic step. Events of one position are published in
increasing id order (the claim guarantees it), so a worker that died between XADD and
recording the event in PostgreSQL publishes nothing twice after a restart, and a script call
can never skip an event that was not published. Redis Cluster is not supported (the two keys
of one call may live in different slots).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from worker.errors import StreamUnavailable

PUBLISH_SCRIPT: Final = """
local last = redis.call('GET', KEYS[2])
if last and tonumber(last) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 4))
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
return 1
"""


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
        for pub in publications:
            args: list[Any] = [pub.event_id, self.maxlen, self.ttl]
            for key, value in pub.fields.items():
                args += [key, value]
            pipe.evalsha(self._sha, 2, pub.stream, dedupe_key(pub.stream, pub.position_id), *args)
        results = await pipe.execute(raise_on_error=True)
        return [bool(r) for r in results]
