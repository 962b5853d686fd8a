"""The benchmark's reference for the backlog drain: the bare durable design.

What the event-pipeline issue's throwaway prototype was: the outbox row written by the
trigger, claimed in batches with ``FOR UPDATE SKIP LOCKED``, one pipelined XADD per event,
the batch marked processed and committed. One claim at a time, synchronous drivers. No
per-position order check, no idempotent publish, no handlers, no audit line, no metrics:
the worker's drain measured against it (``position-worker bench``) says what those cost.
It drains what is pending, prints how many events it published, and exits. Never
something to deploy: a crash between XADD and COMMIT publishes the batch twice.
"""

from __future__ import annotations

import sys
import time

import orjson
import psycopg
import redis

BATCH = 500
MAXLEN = 1_000_000

# From the last batch's highest id on: exact for a backlog committed before the drain
# starts (the worker's claim floor is the version that is safe for live commits too).
CLAIM = f"""
SELECT id, kind, position_id::text, user_id::text, symbol, old_status, new_status,
       occurred_at::text, actor_role, data::text
FROM position_events
WHERE processed_at IS NULL AND dead_at IS NULL AND id > %s
ORDER BY id
LIMIT {BATCH}
FOR UPDATE SKIP LOCKED
"""
MARK = "UPDATE position_events SET processed_at = clock_timestamp() WHERE id = ANY(%s)"
NAMES = (
    "event_id", "kind", "position_id", "user_id", "symbol", "old_status", "new_status",
    "occurred_at", "actor_role",
)  # fmt: skip


def drain(db_url: str, redis_url: str, stream: str) -> tuple[int, float]:
    """Publish every pending event; (how many, seconds from the first claim to the end)."""
    client = redis.Redis.from_url(redis_url)
    published, after = 0, 0
    with psycopg.connect(db_url) as conn:
        started = time.monotonic()
        while True:
            with conn.transaction():
                rows = conn.execute(CLAIM, (after,)).fetchall()
                if not rows:
                    return published, time.monotonic() - started
                pipe = client.pipeline(transaction=False)
                for row in rows:
                    values = zip(NAMES, row[:9], strict=True)
                    fields = {name: "" if v is None else str(v) for name, v in values}
                    fields.update((k, str(v)) for k, v in orjson.loads(row[9] or "{}").items())
                    pipe.xadd(stream, fields, maxlen=MAXLEN, approximate=True)  # type: ignore[arg-type]
                pipe.execute()
                conn.execute(MARK, ([row[0] for row in rows],))
            published, after = published + len(rows), rows[-1][0]


def main() -> int:
    db_url, redis_url, stream = sys.argv[1:4]
    published, seconds = drain(db_url, redis_url, stream)
    print(f"prototype_drained {published} {seconds:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
