"""The benchmark's baseline: a deliberately naive listener.

LISTEN, then one XADD per notification, awaited one at a time. No outbox, no claim, no
dedupe: whatever is committed while it is down or reconnecting is lost for good. It is what
the durable design is measured against (``position-worker bench``), never something to
deploy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys

import psycopg
import redis.asyncio as aioredis


async def listen(db_url: str, redis_url: str, stream: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("LISTEN position_state_change")
        print("naive_listener_ready", flush=True)
        async for notify in conn.notifies():
            doc = json.loads(notify.payload)
            fields = {k: "" if v is None else str(v) for k, v in doc.items()}
            await client.xadd(stream, fields)  # type: ignore[arg-type]


def main() -> int:
    db_url, redis_url, stream = sys.argv[1:4]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(listen(db_url, redis_url, stream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
