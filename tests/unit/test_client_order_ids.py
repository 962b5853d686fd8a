"""Client order ids (worker.execution.client_ids): made from the order row's own uuid, so unique
by construction; ``is_worker_order`` accepts exactly the id the worker gives a row."""

from __future__ import annotations

import re
import uuid
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.execution.client_ids import Purpose, client_order_id, is_worker_order, oco_list_id

BINANCE_CLIENT_ID = re.compile(r"^[a-zA-Z0-9-_]{1,36}$")  # Binance's documented pattern
PURPOSES: tuple[str, ...] = get_args(Purpose)

ROW = uuid.UUID("0123abcd-ef01-4abc-8def-0123456789ab")
uuids = st.uuids()
purposes = st.sampled_from(PURPOSES)


@given(uuids, purposes)
def test_ids_are_what_binance_accepts(order_id: uuid.UUID, purpose: str) -> None:
    cid = client_order_id(order_id, purpose)
    assert BINANCE_CLIENT_ID.match(cid)
    assert len(cid) == 36
    assert cid.startswith("pw-") and cid.endswith(order_id.hex)
    assert BINANCE_CLIENT_ID.match(oco_list_id(order_id))
    assert len(oco_list_id(order_id)) == 36


def test_the_same_row_always_gets_the_same_id() -> None:
    order_id = uuid.uuid4()
    assert client_order_id(order_id, "entry") == client_order_id(str(order_id), "entry")
    assert client_order_id(order_id, "entry") == f"pw-e{order_id.hex}"


def test_every_new_row_gets_another_id() -> None:
    """The engine draws a uuid4 per row: ids never depend on the position, nor on how many
    orders it has."""
    ids = {client_order_id(uuid.uuid4(), p) for p in PURPOSES for _ in range(500)}
    assert len(ids) == 500 * len(PURPOSES)


@given(uuids, uuids, purposes, purposes)
def test_different_rows_or_purposes_never_share_an_id(
    a: uuid.UUID, b: uuid.UUID, pa: str, pb: str
) -> None:
    assert (client_order_id(a, pa) == client_order_id(b, pb)) == (a == b and pa == pb)
    assert (oco_list_id(a) == oco_list_id(b)) == (a == b)
    assert oco_list_id(a) != client_order_id(b, pb)


@given(uuids, purposes)
def test_the_worker_recognises_its_own_rows(order_id: uuid.UUID, purpose: str) -> None:
    assert is_worker_order(order_id, purpose, client_order_id(order_id, purpose))
    assert is_worker_order(str(order_id), purpose, client_order_id(order_id, purpose))


@given(uuids, purposes, st.one_of(st.none(), st.text(max_size=40)))
def test_any_other_client_id_is_foreign(order_id: uuid.UUID, purpose: str, cid: str | None) -> None:
    expected = client_order_id(order_id, purpose)
    assert is_worker_order(order_id, purpose, cid) == (cid == expected)


@given(uuids, uuids, purposes, purposes)
def test_an_id_made_for_another_row_or_purpose_is_foreign(
    row: uuid.UUID, other: uuid.UUID, purpose: str, other_purpose: str
) -> None:
    """A forged row copying a real order's id (or shaped like the worker's) is not ours."""
    cid = client_order_id(other, other_purpose)
    assert is_worker_order(row, purpose, cid) == (row == other and purpose == other_purpose)


@pytest.mark.parametrize(
    ("order_id", "purpose", "cid"),
    [
        ("not-a-uuid", "entry", "pw-enot-a-uuid"),
        (ROW, "bogus", f"pw-b{ROW.hex}"),
        (ROW, "entry", f"pw-e{ROW.hex.upper()}"),
        (ROW, "entry", f"pw-e{ROW}"[:36]),
        (ROW, "entry", oco_list_id(ROW)),
        (ROW, "entry", ""),
        (ROW, "entry", None),
    ],
)
def test_malformed_rows_are_foreign(order_id: object, purpose: str, cid: str | None) -> None:
    assert not is_worker_order(str(order_id), purpose, cid)


def test_an_id_made_from_the_position_is_foreign() -> None:
    """Users choose position ids: an id made from one (``pw-<24 hex>-e1``) is not the
    worker's."""
    order_id, position_id = uuid.uuid4(), uuid.uuid4()
    assert not is_worker_order(order_id, "entry", f"pw-{position_id.hex[:24]}-e1")
