"""Lists sent as array literals (worker/db/arrays.py) read back as what was sent, on a real
PostgreSQL, element for element, and as psycopg's own list dumper sends them."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.types.json import Json, Jsonb

from worker.app import make_pool
from worker.db.arrays import ArrayLiteralDumper, adapters
from worker.settings import load_settings

HOSTILE = [
    "",
    "NULL",
    "null",
    " padded ",
    "a,b",
    "{nested}",
    '"quoted"',
    "back\\slash",
    '\\"',
    "tab\there",
    "line\nbreak",
    "日本語 ✓",
    "'single'",
    "}",
    "{",
]


@pytest.fixture(scope="module")
def conn(pg_admin_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_admin_url, autocommit=True, context=adapters()) as c:
        yield c


@pytest.fixture(scope="module")
def plain(pg_admin_url: str) -> Iterator[psycopg.Connection[Any]]:
    """psycopg's own list dumper: the reference."""
    with psycopg.connect(pg_admin_url, autocommit=True) as c:
        yield c


def one(conn: psycopg.Connection[Any], sql: str, value: Any) -> Any:
    row = conn.execute(sql.encode(), {"v": value}).fetchone()
    assert row is not None
    return row[0]


def test_hostile_text_reads_back_as_sent(conn: psycopg.Connection[Any]) -> None:
    values = [*HOSTILE, None, *HOSTILE]
    assert one(conn, "SELECT %(v)s::text[]", values) == values


# any text PostgreSQL can hold: no NUL (it refuses it), no lone surrogate (no UTF-8 form)
_TEXT = st.text(st.characters(codec="utf-8", blacklist_characters="\x00"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), _TEXT)))
def test_any_text_reads_back_as_sent(conn: psycopg.Connection[Any], values: list[Any]) -> None:
    assert one(conn, "SELECT %(v)s::text[]", values) == values


_DECIMALS = st.decimals(min_value=-(10**20), max_value=10**20, allow_nan=False, places=8)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), _DECIMALS, _DECIMALS.map(lambda d: d.normalize()))))
def test_decimals_read_back_exactly(conn: psycopg.Connection[Any], values: list[Any]) -> None:
    got = one(conn, "SELECT %(v)s::numeric[]", values)
    assert got == values
    # and with their scale: 1.10 stays 1.10, 1E-8 has eight places (a step size's digits)
    for g, v in zip(got, values, strict=True):
        if v is not None and v.as_tuple().exponent <= 0:
            assert g.as_tuple().exponent == v.as_tuple().exponent, (g, v)


@pytest.mark.parametrize(
    ("cast", "values"),
    [
        (
            "numeric[]",
            [
                Decimal("0.00000001"),
                Decimal("1E-8"),
                Decimal("1E+3"),
                Decimal("-0"),
                Decimal("97123.45000000"),
                Decimal("123456789012345678901234567890.123456789012345678"),
                None,
            ],
        ),
        ("bigint[]", [0, -1, 2**62, None]),
        ("boolean[]", [True, False, None]),
        ("uuid[]", [uuid.UUID(int=0), uuid.uuid4(), None]),
        ("uuid[]", [str(uuid.uuid4()), None]),
        (
            "timestamptz[]",
            [
                dt.datetime(2026, 12, 7, 17, 0, 0, 123456, tzinfo=dt.UTC),
                dt.datetime(2026, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30))),
                None,
            ],
        ),
        ("date[]", [dt.date(2026, 2, 28), None]),
        (
            "jsonb[]",
            [
                Jsonb({"symbol": "BTCUSDT", "price": "97123.45", "note": 'a "quote" \\ ✓'}),
                Jsonb([1, "{", None]),
                Jsonb(None),
                None,
            ],
        ),
        ("json[]", [Json({"a": "b,c"}), None]),
        ("text[]", []),
        ("numeric[]", [None, None]),
    ],
)
def test_every_element_type_reads_back_as_psycopg_sends_it(
    conn: psycopg.Connection[Any], plain: psycopg.Connection[Any], cast: str, values: list[Any]
) -> None:
    sql = f"SELECT %(v)s::{cast}"
    assert one(conn, sql, values) == one(plain, sql, values)


def test_an_uncast_array_takes_the_type_of_what_it_is_compared_with(
    conn: psycopg.Connection[Any],
) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    with conn.transaction(force_rollback=True):
        conn.execute("CREATE TEMP TABLE t (id uuid PRIMARY KEY)")
        conn.execute("INSERT INTO t SELECT unnest(%(v)s::uuid[])", {"v": ids})
        rows = conn.execute(
            "SELECT id FROM t WHERE id = ANY(%(v)s) ORDER BY id", {"v": [str(ids[0]), str(ids[2])]}
        ).fetchall()
    assert [r[0] for r in rows] == sorted([ids[0], ids[2]])


@pytest.mark.parametrize(
    ("values", "named"),
    [([Decimal("1"), 1.5], "float"), ([[1, 2]], "list"), ([object()], "object")],
)
def test_what_has_no_exact_text_is_refused_before_sending(
    conn: psycopg.Connection[Any], values: list[Any], named: str
) -> None:
    with pytest.raises(TypeError, match=f"type {named} cannot be sent"):
        conn.execute("SELECT %(v)s::numeric[]", {"v": values})
    assert one(conn, "SELECT %(v)s::numeric[]", [Decimal("2")]) == [Decimal("2")]  # still usable


def test_text_with_a_nul_byte_is_refused_as_psycopg_refuses_it(
    conn: psycopg.Connection[Any],
) -> None:
    with pytest.raises(psycopg.DataError, match="cannot contain NUL"):
        conn.execute("SELECT %(v)s::text[]", {"v": ["fine", 'cut"}\x00', "rest"]})


def test_text_with_a_lone_surrogate_is_refused_as_psycopg_refuses_it(
    conn: psycopg.Connection[Any], plain: psycopg.Connection[Any]
) -> None:
    for c in (conn, plain):
        with pytest.raises(UnicodeEncodeError, match="surrogates not allowed"):
            c.execute("SELECT %(v)s::text[]", {"v": ["fine", "\ud800"]})


@pytest.mark.anyio
async def test_the_workers_connections_send_lists_as_array_literals(db_url: str) -> None:
    settings_ = load_settings(environ={"DATABASE_URL": db_url})
    async with make_pool(settings_) as pool, pool.connection() as aconn:
        assert aconn.adapters.get_dumper(list, psycopg.adapt.PyFormat.AUTO) is ArrayLiteralDumper
        cur = await aconn.execute("SELECT %(v)s::text[]", {"v": HOSTILE})
        assert await cur.fetchone() == (HOSTILE,)
