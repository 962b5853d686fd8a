#!/usr/bin/env python3
"""A downstream consumer of ``positions:events``: the pattern to copy.

Run it (Redis from ``$REDIS_URL``, or ``--redis-url``)::

    python examples/consumer.py --group billing --consumer billing-1
    python examples/consumer.py --group billing --from-start   # a new group reads history too

Replace :func:`handle` with what your service does with an event; the rest is the safe way to
read a Redis stream with a consumer group. Only redis-py is needed.

How it works
------------
1. **One consumer group per service.** ``XGROUP CREATE <stream> <group> $ MKSTREAM`` once
   (``0`` instead of ``$`` with ``--from-start``: the whole stream, not only new entries).
   Processes of one service share a group under different ``--consumer`` names and split the
   entries between them; every group gets every entry.
2. **Read, handle, acknowledge.** ``XREADGROUP ... BLOCK`` waits for new entries (no busy
   polling). An entry is ``XACK``-ed only after :func:`handle` returned; until then it stays in
   the group's pending entries list (PEL). Delivery is *at least once*.
3. **Take over from consumers that died.** ``XAUTOCLAIM`` moves entries that have been
   pending longer than ``--claim-idle-ms`` to this consumer, which handles them again: their
   consumer crashed, or :func:`handle` raised (a failed entry is retried this way, after the
   same delay). ``--claim-idle-ms`` must be longer than :func:`handle` ever takes, or a slow
   consumer's entries are taken from it while it still works on them.
4. **Dead letters.** Each delivery (a read or a claim) counts. An entry whose handling fails
   on its ``--max-deliveries``-th delivery, or that is delivered more often than that (its
   consumers crash on it), is copied to ``<stream>:dead`` with the reason, and acknowledged:
   one poison entry cannot hold up the group forever. ``position-worker status`` shows the
   dead-letter stream's length; ``position-worker tail positions:events:dead`` shows them.
5. **Dedupe by ``event_id``.** Every entry carries the event's id. The worker publishes an
   event once, but you may still see one twice: an entry redelivered after a consumer died,
   or (rarely) the same event in two entries. A Redis key per event and group,
   ``<stream>:<group>:seen:<event_id>``, has three states: absent, ``busy`` (taken with
   ``SET NX`` before :func:`handle`, expiring after ``--claim-idle-ms``, so a crashed
   consumer's claim lapses) and ``done`` (written in the same ``MULTI`` as the ``XACK``,
   kept for ``--dedupe-ttl`` seconds). An event that is ``done`` is acknowledged without
   being handled again; one that is ``busy`` is left pending for later.

   *Why Redis keys and not an in-memory LRU?* A redelivered entry usually goes to *another*
   consumer (that is what XAUTOCLAIM does), whose memory never saw it; Redis keys are shared
   by the group's consumers and survive restarts, and the TTL bounds their memory (about
   100 bytes per event). *What no dedupe can do*: make :func:`handle` and the ``XACK`` one
   atomic step. A consumer that dies after :func:`handle` and before the ``MULTI`` handles the
   event again after the claim. Where a second effect would hurt, make :func:`handle`
   idempotent too: e.g. insert ``event_id`` into a table with a unique key in the same
   database transaction as the effect.

Ordering: entries are in publish order, and the events of one position are published in
``event_id`` order; with several consumers (or after a retry) that order is not kept across
consumers. Compare ``event_id`` per ``position_id`` if you need it. Redis Cluster is not
supported (the ``MULTI`` spans the stream and the dedupe key).

Stopping: SIGTERM or Ctrl-C stops after the entries in hand (at most ``--block-ms`` later).
An entry in hand when the process is killed stays pending and is claimed by the next
consumer after ``--claim-idle-ms``. Redis errors that outlast redis-py's retries end the
process: run it under a supervisor (systemd ``Restart=always``, a Kubernetes Deployment).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal

import redis
from redis import exceptions as redis_errors
from redis.typing import EncodableT, FieldT

log = logging.getLogger("consumer")

Outcome = Literal["handled", "duplicate", "busy", "failed", "dead"]
DEAD_LETTER_MAXLEN: Final = 100_000  # approximate trim of the dead-letter stream


@dataclass(frozen=True, slots=True)
class Config:
    stream: str = "positions:events"
    group: str = "example"
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    block_ms: int = 5_000  # longest wait of one XREADGROUP
    claim_idle_ms: int = 60_000  # pending this long: its consumer is taken for dead
    max_deliveries: int = 5  # then the entry goes to the dead-letter stream
    dedupe_ttl_seconds: int = 24 * 3600  # how long a handled event_id is remembered
    batch: int = 100  # entries per read or claim
    dead_stream: str = ""  # default: "<stream>:dead"

    @property
    def dead_letter(self) -> str:
        return self.dead_stream or f"{self.stream}:dead"


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as delivered to this consumer."""

    id: str  # the stream entry id, e.g. "1718000000000-0"
    fields: dict[str, str]  # flat strings: see the README's table of fields
    deliveries: int = 1  # 1 on the first read, +1 on every claim

    @property
    def event_id(self) -> str | None:
        return self.fields.get("event_id")


Handler = Callable[[Entry], None]


def handle(entry: Entry) -> None:
    """Replace me. Raise to have the entry retried (and dead-lettered after too many tries).

    Every value is a string; amounts are decimal strings (parse them with ``Decimal``, never
    ``float``), ``occurred_at`` is ISO 8601 and ``old_status`` is empty for ``*.created``.
    """
    f = entry.fields
    if f.get("type") == "position.closed":
        pnl = Decimal(f.get("realized_pnl") or "0")
        log.info("position %s closed on %s: PnL %s", f["position_id"], f["symbol"], pnl)
    else:
        log.info("event %s %s %s", entry.event_id, f.get("type"), f.get("position_id"))


@dataclass(slots=True)
class Report:
    """What one :func:`consume_once` did, entry by entry."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)  # entry id -> outcome
    claimed: list[str] = field(default_factory=list)  # entry ids taken over from others
    next_claim_from: str = "0-0"  # where the next XAUTOCLAIM scan continues

    def ids(self, outcome: Outcome) -> list[str]:
        return [entry_id for entry_id, seen in self.outcomes.items() if seen == outcome]


def ensure_group(client: redis.Redis, stream: str, group: str, from_start: bool = False) -> bool:
    """Create the group (and the stream) unless it exists; True when it was created."""
    try:
        client.xgroup_create(stream, group, id="0" if from_start else "$", mkstream=True)
    except redis_errors.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    return True


def read_new(client: redis.Redis, cfg: Config, block_ms: int | None) -> list[Entry]:
    """Entries never delivered to this group (``>``), waiting up to ``block_ms`` for some."""
    reply: Any = client.xreadgroup(
        cfg.group, cfg.consumer, {cfg.stream: ">"}, count=cfg.batch, block=block_ms
    )
    return [Entry(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries]


def claim_stale(client: redis.Redis, cfg: Config, start: str = "0-0") -> tuple[str, list[Entry]]:
    """Take over entries pending longer than ``claim_idle_ms``; returns (next start, entries).

    XAUTOCLAIM scans the PEL from ``start``; pass the returned start back in to continue the
    scan ("0-0" when it has gone round). Entries trimmed from the stream meanwhile come back
    empty and are dropped from the PEL by Redis 7 itself.
    """
    reply: Any = client.xautoclaim(
        cfg.stream, cfg.group, cfg.consumer, cfg.claim_idle_ms, start_id=start, count=cfg.batch
    )
    next_start, claimed = str(reply[0]), [(i, f) for i, f in reply[1] if i and f is not None]
    if not claimed:
        return next_start, []
    pipe = client.pipeline(transaction=False)  # delivery counts: one round trip
    for entry_id, _ in claimed:
        pipe.xpending_range(cfg.stream, cfg.group, min=entry_id, max=entry_id, count=1)
    counts = [rows[0]["times_delivered"] if rows else 1 for rows in pipe.execute()]
    return next_start, [Entry(i, f, int(n)) for (i, f), n in zip(claimed, counts, strict=True)]


def seen_key(cfg: Config, event_id: str) -> str:
    return f"{cfg.stream}:{cfg.group}:seen:{event_id}"


def process(client: redis.Redis, cfg: Config, entry: Entry, handler: Handler) -> Outcome:
    """Handle one entry at most once per ``event_id``, and acknowledge it unless it failed.

    Like every function here, it expects a client made with ``decode_responses=True``.
    """
    key = seen_key(cfg, entry.event_id) if entry.event_id else None
    if key and not client.set(key, "busy", nx=True, px=max(1, cfg.claim_idle_ms)):
        if client.get(key) == "done":
            client.xack(cfg.stream, cfg.group, entry.id)
            return "duplicate"
        return "busy"  # another consumer is on this event: look again after the claim delay
    if entry.deliveries > cfg.max_deliveries:
        dead_letter(client, cfg, entry, f"delivered {entry.deliveries} times, never acknowledged")
        return "dead"
    try:
        handler(entry)
    except Exception as exc:
        return _failed(client, cfg, entry, key, exc)
    with client.pipeline(transaction=True) as tx:  # MULTI ... EXEC: both or neither
        if key:
            tx.set(key, "done", ex=cfg.dedupe_ttl_seconds)
        tx.xack(cfg.stream, cfg.group, entry.id)
        tx.execute()
    return "handled"


def _failed(
    client: redis.Redis, cfg: Config, entry: Entry, key: str | None, exc: Exception
) -> Outcome:
    reason = f"{type(exc).__name__}: {exc}"
    if entry.deliveries >= cfg.max_deliveries:
        dead_letter(client, cfg, entry, reason)
        return "dead"
    if key:
        client.delete(key)  # let the retry take it
    log.warning(
        "entry %s (event %s) failed on delivery %d of %d, retried after %d ms: %s",
        entry.id, entry.event_id, entry.deliveries, cfg.max_deliveries, cfg.claim_idle_ms,
        reason,
    )  # fmt: skip
    return "failed"


def dead_letter(client: redis.Redis, cfg: Config, entry: Entry, reason: str) -> None:
    """Copy the entry to the dead-letter stream with why, and acknowledge it, atomically."""
    why = {
        "dead_entry_id": entry.id,
        "dead_stream": cfg.stream,
        "dead_group": cfg.group,
        "dead_consumer": cfg.consumer,
        "dead_deliveries": str(entry.deliveries),
        "dead_reason": reason[:1000],
    }
    # the original fields, then why (typed as redis-py wants a stream entry's fields)
    fields: dict[FieldT, EncodableT] = dict([*entry.fields.items(), *why.items()])
    with client.pipeline(transaction=True) as tx:
        tx.xadd(cfg.dead_letter, fields, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
        tx.xack(cfg.stream, cfg.group, entry.id)
        if entry.event_id:
            tx.delete(seen_key(cfg, entry.event_id))
        tx.execute()
    log.error("entry %s (event %s) dead-lettered: %s", entry.id, entry.event_id, reason)


def consume_once(
    client: redis.Redis,
    cfg: Config,
    handler: Handler = handle,
    claim_from: str = "0-0",
    block_ms: int | None = None,
) -> Report:
    """Claim stale entries, else wait for new ones (up to ``block_ms``), and process them."""
    report = Report()
    report.next_claim_from, entries = claim_stale(client, cfg, claim_from)
    report.claimed = [e.id for e in entries]
    if not entries:
        entries = read_new(client, cfg, block_ms)
    for entry in entries:
        report.outcomes[entry.id] = process(client, cfg, entry, handler)
    return report


def run(
    client: redis.Redis, cfg: Config, handler: Handler, should_stop: Callable[[], bool]
) -> None:
    """Consume until ``should_stop()``; it is checked between batches."""
    claim_from = "0-0"
    while not should_stop():
        report = consume_once(client, cfg, handler, claim_from, block_ms=cfg.block_ms)
        claim_from = report.next_claim_from
        if report.claimed:
            log.info("claimed %d entries from consumers that died", len(report.claimed))


def parse_args(argv: Sequence[str] | None) -> tuple[str, Config, bool]:
    d = Config()
    p = argparse.ArgumentParser(
        description="Consume positions:events with a consumer group: XREADGROUP, XACK, "
        "XAUTOCLAIM, a dead-letter stream, dedupe by event_id (the module docstring explains).",
        epilog="example: REDIS_URL=redis://cache:6379/0 python examples/consumer.py "
        "--group billing --consumer billing-1",
    )
    p.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="default: $REDIS_URL, else redis://127.0.0.1:6379/0",
    )
    p.add_argument("--stream", default=d.stream, help=f"default: {d.stream}")
    p.add_argument("--group", default=d.group, help=f"one per service; default: {d.group}")
    p.add_argument(
        "--consumer", default=d.consumer, help="unique within the group; default: host-pid"
    )
    p.add_argument("--from-start", action="store_true", help="a new group reads the history")
    p.add_argument("--block-ms", type=int, default=d.block_ms, help=f"default: {d.block_ms}")
    p.add_argument(
        "--claim-idle-ms",
        type=int,
        default=d.claim_idle_ms,
        help=f"claim entries pending this long; default: {d.claim_idle_ms}",
    )
    p.add_argument(
        "--max-deliveries",
        type=int,
        default=d.max_deliveries,
        help=f"then dead-letter; default: {d.max_deliveries}",
    )
    p.add_argument(
        "--dedupe-ttl",
        type=int,
        default=d.dedupe_ttl_seconds,
        help=f"seconds a handled event_id is remembered; default: {d.dedupe_ttl_seconds}",
    )
    p.add_argument("--dead-stream", default="", help="default: <stream>:dead")
    a = p.parse_args(argv)
    cfg = Config(
        stream=a.stream,
        group=a.group,
        consumer=a.consumer,
        block_ms=a.block_ms,
        claim_idle_ms=a.claim_idle_ms,
        max_deliveries=a.max_deliveries,
        dedupe_ttl_seconds=a.dedupe_ttl,
        dead_stream=a.dead_stream,
    )
    return a.redis_url, cfg, a.from_start


def main(argv: Sequence[str] | None = None) -> int:
    url, cfg, from_start = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stopping: list[int] = []

    def stop(signum: int, frame: object) -> None:
        if stopping:  # asked twice: stop now (what is in hand stays pending)
            raise KeyboardInterrupt
        log.info("stopping after the entries in hand")
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    # The socket timeout must outlast the longest blocking read.
    client = redis.Redis.from_url(
        url, decode_responses=True, socket_timeout=cfg.block_ms / 1000 + 10
    )
    try:
        if ensure_group(client, cfg.stream, cfg.group, from_start):
            log.info("created group %s on %s", cfg.group, cfg.stream)
        log.info("consumer %s of group %s reading %s", cfg.consumer, cfg.group, cfg.stream)
        run(client, cfg, handle, lambda: bool(stopping))
    except redis_errors.ConnectionError as exc:
        log.error("Redis unavailable: %s", exc)  # the supervisor restarts us
        return 1
    finally:
        client.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
