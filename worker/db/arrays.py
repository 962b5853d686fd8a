"""Python lists as PostgreSQL array literals, written in one pass.

The execution engine writes many positions' rows at once as column arrays
(``unnest(%(price)s::numeric[], ...)``, worker/db/execution.sql). psycopg's own list
dumper finds a dumper for the elements, calls it for each one and quotes each token with a
regular expression: about 6 us an element, 30 ms for one statement of ten columns and 500
rows, and a sixth of a worker's CPU in a burst of entries and exits (py-spy; see
docs/benchmarks.md). :class:`ArrayLiteralDumper` writes the same literal with one
``str.replace`` pair per element and one ``str.join``.

The literal follows PostgreSQL's array input syntax ("Array Value Input", section 8.15.2
of the manual): every element but NULL is double-quoted, with backslashes and double
quotes escaped by a backslash, so that no element is read as NULL, as a nested array or
with its blanks trimmed, whatever it holds. It is sent as ``unknown``, as a literal in the
SQL text would be, so every query says what the array holds: a cast (``%(ids)s::uuid[]``)
or a comparison with a typed column (``id = ANY(%(ids)s)``), which PostgreSQL resolves as
an array of that column's type.

Elements are written as text PostgreSQL reads back as the same value (``str()`` of a
number, a UUID or a time, as psycopg sends one alone; ``t``/``f``; a JSON wrapper through
its ``dumps``). Anything else (a nested list, a
float, an object) is refused with a :class:`TypeError` naming its type, and text holding
a NUL byte with psycopg's :class:`~psycopg.DataError`, before the query is sent: no float is
ever turned into a price or a quantity here.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any, Final

import psycopg
from psycopg.adapt import AdaptersMap, Buffer, Dumper
from psycopg.types.json import Json, Jsonb

# str() of these is text that PostgreSQL's input functions read as the same value
_AS_TEXT: Final = (Decimal, int, uuid.UUID, dt.datetime, dt.date, dt.time, dt.timedelta)


def _element(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):  # before int: a bool is an int
        return "t" if value else "f"
    elif isinstance(value, _AS_TEXT):
        text = str(value)
    elif isinstance(value, (Json, Jsonb)):
        data = (value.dumps or json.dumps)(value.obj)
        text = data if isinstance(data, str) else bytes(data).decode()
    else:
        raise TypeError(f"an array element of type {type(value).__name__} cannot be sent")
    if "\x00" in text:  # PostgreSQL would cut the literal there (and call it malformed)
        raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def array_literal(values: list[Any]) -> str:
    """``values`` in PostgreSQL's array input syntax (one dimension)."""
    return "{" + ",".join(map(_element, values)) + "}"


class ArrayLiteralDumper(Dumper):
    """Dumps a Python list as an ``unknown`` array literal (see the module's notes)."""

    oid = 0  # unknown: the query's cast or comparison gives the array's type

    def __init__(self, cls: type, context: Any = None) -> None:
        super().__init__(cls, context)
        self._encoding = self.connection.info.encoding if self.connection else "utf-8"

    def dump(self, obj: list[Any]) -> Buffer | None:
        return array_literal(obj).encode(self._encoding)


def adapters() -> AdaptersMap:
    """psycopg's adapters with lists dumped by :class:`ArrayLiteralDumper`: pass as a
    connection's ``context``."""
    mapping = AdaptersMap(psycopg.adapters)
    mapping.register_dumper(list, ArrayLiteralDumper)
    return mapping
