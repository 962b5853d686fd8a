"""Typed stream replies for the tests.

redis-py types a stream entry as ``(id, fields)`` with ``bytes | str`` everywhere (which one
depends on ``decode_responses``) and ``None`` for what a trimmed or deleted entry lacks, and
an XREAD reply as a list of ``[stream, entries]`` pairs (RESP2) or a mapping (RESP3). These
helpers check that shape and decode it, so the tests work with ``str`` ids and fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from redis.typing import EncodableT, FieldT

Fields = dict[str, str]
Entry = tuple[str, Fields]  # (entry id, fields)

RawEntry = tuple[bytes | str | None, Mapping[bytes | str, bytes | str] | None]


def xadd_fields(fields: Mapping[str, str]) -> dict[FieldT, EncodableT]:
    """``fields`` as XADD's parameter type (a dict is invariant: ``dict[str, str]`` is not
    redis-py's ``dict[FieldT, EncodableT]``)."""
    return dict(fields.items())


def text(value: bytes | str | None) -> str:
    """A reply's value as ``str`` (decoded when the client does not decode replies)."""
    if isinstance(value, bytes):
        return value.decode()
    if value is None:
        raise AssertionError("a stream entry without its id or a field")
    return value


def entries_of(reply: Iterable[RawEntry] | None) -> list[Entry]:
    """The ``(id, fields)`` of XRANGE / XREVRANGE / XCLAIM entries, decoded."""
    decoded: list[Entry] = []
    for entry_id, fields in reply or ():
        if fields is None:
            raise AssertionError(f"stream entry {entry_id!r} has no fields (deleted?)")
        decoded.append((text(entry_id), {text(k): text(v) for k, v in fields.items()}))
    return decoded


def fields_of(reply: Iterable[RawEntry] | None) -> list[Fields]:
    """The fields of every entry, in stream order."""
    return [fields for _, fields in entries_of(reply)]


def xread_entries(reply: Sequence[Sequence[Any]] | Mapping[Any, Any] | None) -> list[Entry]:
    """Every entry of an XREAD reply (RESP2: ``[[stream, entries], ...]``, the tests'
    clients' protocol), all streams together, in reply order."""
    if isinstance(reply, Mapping):
        raise AssertionError("a RESP3 XREAD reply: the tests' clients speak RESP2")
    out: list[Entry] = []
    for _stream, entries in reply or ():
        out += entries_of(entries)
    return out
