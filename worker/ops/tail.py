"""``position-worker tail``: follow a stream and print its entries as they arrive.

On a terminal each entry is one readable, coloured line; anywhere else (or with ``--json``)
it is one JSON object per line: ``{"stream": ..., "id": ..., "fields": {...}}``.

Reading is a blocking XREAD with a timeout, so a quiet stream costs nothing. "From now" is
resolved once, at start, to the stream's last id, and every later read continues from the
last id printed: nothing added between two reads is skipped, and after a Redis outage the
tail resumes where it stopped (as long as the entries were not trimmed meanwhile).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TextIO

import redis
from redis import exceptions as redis_errors

from worker.errors import StreamUnavailable, WorkerError
from worker.redact import mask_secrets
from worker.settings import Settings, StreamSettings

BLOCK_MS: Final = 1000  # one XREAD waits at most this long, then the loop reads again
BATCH: Final = 500  # entries per XREAD
MAX_SEQ: Final = 2**64 - 1  # the largest sequence part of a stream id

SEVERITY_COLOURS: Final = {"info": "32", "warning": "33", "error": "31", "critical": "1;31"}
STATUS_COLOURS: Final = {
    **dict.fromkeys(("open", "monitoring", "filled", "closed", "recorded"), "32"),
    **dict.fromkeys(("created", "submitting", "submitted", "partially_filled"), "33"),
    **dict.fromkeys(("closing", "exit", "scale_in"), "35"),
    **dict.fromkeys(("failed", "cancelled", "rejected"), "31"),
}
# Shown in the head of a readable line, so not repeated among the key=value pairs.
HEAD_FIELDS: Final = frozenset(
    {"event_id", "type", "kind", "symbol", "old_status", "new_status", "severity", "title",
     "message"}
)  # fmt: skip


class TailError(WorkerError):
    """A stream name or entry id the tail cannot use."""


@dataclass(frozen=True, slots=True)
class Entry:
    stream: str
    id: str
    fields: dict[str, str]


def resolve_stream(name: str | None, streams: StreamSettings) -> str:
    """``events`` (the default), ``notifications``, ``ai-monitoring``, or a full stream key."""
    short = {
        "events": streams.events,
        "notifications": streams.notifications,
        "ai-monitoring": streams.ai_monitoring,
        "ai_monitoring": streams.ai_monitoring,
    }
    if not name:
        return streams.events
    return short.get(name, name)


def id_before(entry_id: str) -> str:
    """The largest id smaller than ``entry_id``: XREAD after it starts *at* ``entry_id``."""
    ms_text, _, seq_text = entry_id.partition("-")
    try:
        ms, seq = int(ms_text), int(seq_text or 0)
    except ValueError:
        ms = seq = -1
    if ms < 0 or not 0 <= seq <= MAX_SEQ:
        raise TailError(f"--from: {entry_id!r} is not a stream id (like 1718000000000-0)")
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{MAX_SEQ}" if ms > 0 else "0-0"


def start_after(
    client: redis.Redis, stream: str, from_id: str | None = None, from_start: bool = False
) -> str:
    """The id to read after: the beginning, just before ``from_id``, or the last entry now."""
    if from_start:
        return "0-0"
    if from_id is not None:
        return id_before(from_id)
    last: Any = client.xrevrange(stream, count=1)
    return str(last[0][0]) if last else "0-0"


def follow(
    client: redis.Redis,
    stream: str,
    after: str,
    *,
    count: int | None = None,
    block_ms: int = BLOCK_MS,
    on_outage: Callable[[Exception, float], None] | None = None,
) -> Iterator[Entry]:
    """Entries of ``stream`` after ``after``, as they arrive; ``count`` of them, or forever.

    Redis going away is waited out (capped backoff, ``on_outage`` told each time); the read
    then continues from the last entry yielded.
    """
    remaining, failures = count, 0
    while remaining is None or remaining > 0:
        try:
            reply: Any = client.xread(
                {stream: after}, count=min(remaining or BATCH, BATCH), block=block_ms
            )
            failures = 0
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            failures += 1
            delay = min(5.0, 0.1 * 2**failures)
            if on_outage is not None:
                on_outage(exc, delay)
            time.sleep(delay)
            continue
        for entry_id, fields in _entries(reply):
            after = entry_id
            yield Entry(stream, entry_id, fields)
            if remaining is not None:
                remaining -= 1


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """XREAD's reply for one stream, RESP2 (a list of pairs) or RESP3 (a dict)."""
    if not reply:
        return []
    per_stream = list(reply.values()) if isinstance(reply, dict) else [e for _, e in reply]
    return [(str(i), dict(f)) for entries in per_stream for i, f in entries]


def as_json(entry: Entry) -> str:
    return json.dumps(
        {"stream": entry.stream, "id": entry.id, "fields": entry.fields}, ensure_ascii=False
    )


def as_text(entry: Entry, colour: bool) -> str:
    """``14:02:11.042 events #42 position.open BTCUSDT submitting -> open  key=value ...``"""

    def paint(text: str, code: str | None) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text

    f = {k: _printable(v) for k, v in entry.fields.items()}
    head = [paint(_clock(entry.id), "2"), paint(entry.stream.rsplit(":", 1)[-1], "36")]
    if f.get("event_id"):
        head.append(f"#{f['event_id']}")
    head.append(paint(f.get("type", "?"), "1"))
    if f.get("symbol"):
        head.append(f["symbol"])
    if f.get("new_status"):
        new = paint(f["new_status"], STATUS_COLOURS.get(f["new_status"]))
        head.append(f"{f['old_status']} -> {new}" if f.get("old_status") else new)
    if f.get("severity"):
        head.append(paint(f["severity"], SEVERITY_COLOURS.get(f["severity"])))
    if f.get("title"):
        head.append(f"{f['title']}: {f.get('message', '')}".rstrip(": "))
    rest = " ".join(f"{k}={_quoted(v)}" for k, v in f.items() if k not in HEAD_FIELDS and v)
    return " ".join(head) + (f"  {paint(rest, '2')}" if rest else "")


def _clock(entry_id: str) -> str:
    """The local time at which the entry was added (its id's milliseconds)."""
    try:
        stamp = datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000)
    except (ValueError, OverflowError, OSError):
        return entry_id
    return stamp.strftime("%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"


def _printable(value: str) -> str:
    """Control characters escaped: a field can neither break the line nor drive the terminal."""
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


def _quoted(value: str) -> str:
    if " " not in value and '"' not in value:
        return value
    return '"' + value.replace('"', '\\"') + '"'


def run_tail(
    settings: Settings,
    stream_name: str | None,
    *,
    from_id: str | None = None,
    from_start: bool = False,
    count: int | None = None,
    force_json: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """The command: print entries until ``count`` of them (or Ctrl-C)."""
    if count is not None and count < 1:
        raise TailError("--count must be at least 1")
    stream = resolve_stream(stream_name, settings.streams)
    human = out.isatty() and not force_json
    colour = human and not os.environ.get("NO_COLOR")
    client = redis.Redis.from_url(
        settings.redis.url,
        decode_responses=True,
        encoding_errors="replace",
        socket_connect_timeout=5,
        socket_timeout=BLOCK_MS / 1000 + 10,
    )
    try:
        after = _connect(client, stream, from_id, from_start)
        if human:
            since = "the start" if from_start else from_id or "now"
            print(f"following {stream} from {since} (Ctrl-C to stop)", file=sys.stderr)
        for entry in follow(client, stream, after, count=count, on_outage=_say_outage):
            print(as_text(entry, colour) if human else as_json(entry), file=out, flush=True)
    except BrokenPipeError:  # `position-worker tail | head`: the reader has gone, so have we
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    finally:
        client.close()
    return 0


def _connect(client: redis.Redis, stream: str, from_id: str | None, from_start: bool) -> str:
    try:
        client.ping()
        return start_after(client, stream, from_id, from_start)
    except redis_errors.RedisError as exc:
        raise StreamUnavailable(f"Redis unavailable: {mask_secrets(str(exc))}") from exc


def _say_outage(exc: Exception, delay: float) -> None:
    print(
        f"tail: Redis unavailable ({mask_secrets(str(exc))}), retrying in {delay:.1f} s",
        file=sys.stderr,
        flush=True,
    )
