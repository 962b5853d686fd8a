"""The benchmark's drain reference (worker/ops/prototype.py) publishes exactly the backlog."""

from __future__ import annotations

import psycopg
import redis

from tests.pipeline_support import burst, db_event_ids
from tests.stream_reads import fields_of
from worker.ops.prototype import drain


def test_the_prototype_drains_every_pending_event_once(db_url: str, redis_url: str) -> None:
    committed = burst(db_url, 1_200)  # more than two of its batches
    published, seconds = drain(db_url, redis_url, "bench:prototype")
    assert published == committed == len(db_event_ids(db_url)) and seconds > 0
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        ids = [int(f["event_id"]) for f in fields_of(client.xrange("bench:prototype"))]
    finally:
        client.close()
    assert ids == sorted(db_event_ids(db_url))  # each once, in id order
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM position_events WHERE processed_at IS NULL")
        assert row.fetchone() == (0,)
    assert drain(db_url, redis_url, "bench:prototype")[0] == 0  # nothing left to publish
