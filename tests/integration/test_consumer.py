"""examples/consumer.py, the sample downstream consumer, against a real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from examples.consumer import (
    Config,
    Entry,
    Report,
    consume_once,
    ensure_group,
    read_new,
    seen_key,
)
from tests.stream_reads import entries_of, xadd_fields
from tests.waits import wait_until
from worker.events import Event, stream_fields

STREAM = "positions:events"
DEAD = "positions:events:dead"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "consumer.py"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield c
    finally:
        c.close()


def publish(client: redis.Redis, *event_ids: int) -> list[str]:
    """Entries as the worker writes them (stream_fields of a real Event)."""
    ids = []
    for event_id in event_ids:
        event = Event(
            event_id=event_id,
            kind="position",
            position_id=f"00000000-0000-0000-0000-{event_id:012d}",
            user_id="00000000-0000-0000-0000-000000000001",
            symbol="BTCUSDT",
            occurred_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            old_status="submitting",
            new_status="open",
            data={"entry_price": "105.50000000", "side": "long"},
        )
        ids.append(str(client.xadd(STREAM, xadd_fields(stream_fields(event)))))
    return ids


class Recorder:
    """A handle() that records what it saw and fails for the event ids it is told to."""

    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        self.calls: list[Entry] = []
        self.failing = failing

    def __call__(self, entry: Entry) -> None:
        self.calls.append(entry)
        if entry.event_id in self.failing:
            raise RuntimeError(f"cannot handle event {entry.event_id}")

    def event_ids(self) -> list[str]:
        return [str(e.event_id) for e in self.calls]


def drain(client: redis.Redis, cfg: Config, handler: Recorder) -> list[Report]:
    """consume_once until a round finds nothing to do (no blocking: entries are there)."""
    reports: list[Report] = []
    while True:
        report = consume_once(client, cfg, handler)
        if not report.outcomes:
            return reports
        reports.append(report)


def pending(client: redis.Redis, group: str) -> int:
    return int(client.xpending(STREAM, group)["pending"])


def test_every_entry_is_handled_once_and_acknowledged(client: redis.Redis) -> None:
    ids = publish(client, *range(1, 31))
    cfg = Config(group="billing", consumer="b1", batch=8)
    assert ensure_group(client, STREAM, cfg.group, from_start=True) is True
    assert ensure_group(client, STREAM, cfg.group, from_start=True) is False  # idempotent
    handler = Recorder()
    reports = drain(client, cfg, handler)
    assert handler.event_ids() == [str(i) for i in range(1, 31)]
    assert [i for r in reports for i in r.ids("handled")] == ids
    assert pending(client, cfg.group) == 0
    first = handler.calls[0]
    assert (first.deliveries, first.fields["type"], first.fields["entry_price"]) == (
        1,
        "position.open",
        "105.50000000",
    )


def test_a_group_created_at_now_sees_only_new_entries(client: redis.Redis) -> None:
    publish(client, 1, 2)
    cfg = Config(group="late", consumer="l1")
    assert ensure_group(client, STREAM, cfg.group, from_start=False)
    handler = Recorder()
    assert drain(client, cfg, handler) == []
    publish(client, 3)
    report = consume_once(client, cfg, handler, block_ms=2000)  # a blocking read returns it
    assert handler.event_ids() == ["3"]
    assert list(report.outcomes.values()) == ["handled"]


def test_entries_of_a_consumer_that_died_are_claimed_by_another(client: redis.Redis) -> None:
    ids = publish(client, 1, 2, 3, 4, 5)
    ensure_group(client, STREAM, "billing", from_start=True)
    dead = Config(group="billing", consumer="crashed")
    assert [e.id for e in read_new(client, dead, None)] == ids  # read, never acknowledged

    alive = Config(group="billing", consumer="alive", claim_idle_ms=60_000)
    handler = Recorder()
    assert drain(client, alive, handler) == []  # a live consumer's entries are not taken
    assert pending(client, "billing") == 5

    quick = replace(alive, claim_idle_ms=20)
    report = wait_until(lambda: consume_once(client, quick, handler).claimed or None, timeout=5)
    assert report == ids
    assert handler.event_ids() == ["1", "2", "3", "4", "5"]
    assert {e.deliveries for e in handler.calls} == {2}
    assert pending(client, "billing") == 0
    consumers = {c["name"]: c["pending"] for c in client.xinfo_consumers(STREAM, "billing")}
    assert consumers == {"crashed": 0, "alive": 0}


def test_a_poison_entry_is_dead_lettered_after_the_delivery_limit(client: redis.Redis) -> None:
    ids = publish(client, 1, 2, 3)
    cfg = Config(group="billing", consumer="b1", claim_idle_ms=1, max_deliveries=3)
    ensure_group(client, STREAM, cfg.group, from_start=True)
    handler = Recorder(failing=frozenset({"2"}))
    first = consume_once(client, cfg, handler)
    assert first.outcomes == {ids[0]: "handled", ids[1]: "failed", ids[2]: "handled"}

    def dead_lettered() -> bool:
        consume_once(client, cfg, handler)  # claims the failed entry once it has idled 1 ms
        return bool(client.xlen(DEAD))

    wait_until(dead_lettered, timeout=5)
    assert Counter(handler.event_ids()) == {"1": 1, "2": 3, "3": 1}
    assert [c.deliveries for c in handler.calls if c.event_id == "2"] == [1, 2, 3]
    [(_, dead)] = entries_of(client.xrange(DEAD))
    assert dead["event_id"] == "2"
    assert dead["type"] == "position.open"  # the original fields, then why
    assert dead["dead_entry_id"] == ids[1]
    assert dead["dead_deliveries"] == "3"
    assert dead["dead_reason"] == "RuntimeError: cannot handle event 2"
    assert (dead["dead_group"], dead["dead_consumer"]) == ("billing", "b1")
    assert pending(client, cfg.group) == 0
    assert client.exists(seen_key(cfg, "2")) == 0  # a replay from the dead letters may run


def test_an_entry_its_consumers_keep_crashing_on_is_dead_lettered_unhandled(
    client: redis.Redis,
) -> None:
    [entry_id] = publish(client, 7)
    cfg = Config(group="billing", consumer="b1", claim_idle_ms=0, max_deliveries=3)
    ensure_group(client, STREAM, cfg.group, from_start=True)
    read_new(client, replace(cfg, consumer="crash-1"), None)
    for n in (2, 3):  # two more consumers took it over and died on it too
        client.xclaim(STREAM, cfg.group, f"crash-{n}", 0, [entry_id])
    handler = Recorder()
    report = consume_once(client, cfg, handler)
    assert report.outcomes == {entry_id: "dead"}
    assert handler.calls == []
    [(_, dead)] = entries_of(client.xrange(DEAD))
    assert dead["dead_reason"] == "delivered 4 times, never acknowledged"
    assert pending(client, cfg.group) == 0


def test_a_duplicate_event_id_is_handled_once_per_group(client: redis.Redis) -> None:
    ids = publish(client, 1, 2, 2, 3)  # event 2 published twice
    handler = Recorder()
    for group in ("billing", "analytics"):
        cfg = Config(group=group, consumer="c1")
        ensure_group(client, STREAM, group, from_start=True)
        [report] = drain(client, cfg, handler)
        assert report.outcomes == {
            ids[0]: "handled",
            ids[1]: "handled",
            ids[2]: "duplicate",
            ids[3]: "handled",
        }
        assert pending(client, group) == 0
        assert client.get(seen_key(cfg, "2")) == "done"
        assert 0 < int(client.ttl(seen_key(cfg, "2"))) <= cfg.dedupe_ttl_seconds
    assert handler.event_ids() == ["1", "2", "3"] * 2


def test_an_event_another_consumer_is_handling_is_left_pending(client: redis.Redis) -> None:
    [entry_id] = publish(client, 9)
    cfg = Config(group="billing", consumer="c2")
    ensure_group(client, STREAM, cfg.group, from_start=True)
    client.set(seen_key(cfg, "9"), "busy", px=60_000)  # c1 took it and is still at work
    handler = Recorder()
    assert consume_once(client, cfg, handler).outcomes == {entry_id: "busy"}
    assert handler.calls == []
    assert pending(client, cfg.group) == 1  # claimed again later, then "done" or free


def test_the_script_consumes_until_sigterm(client: redis.Redis, redis_url: str) -> None:
    ids = publish(client, 1, 2, 3)
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--group", "script", "--consumer", "s1", "--from-start",
         "--block-ms", "200"],
        env={**os.environ, "REDIS_URL": redis_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:

        def caught_up() -> bool:
            groups = {g["name"]: g for g in client.xinfo_groups(STREAM)}
            group = groups.get("script")
            return bool(group and group["last-delivered-id"] == ids[-1] and not group["pending"])

        wait_until(caught_up, timeout=10)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "created group script on positions:events" in err
    assert "event 3 position.open" in err
    assert "stopped" in err
    assert "Traceback" not in err
