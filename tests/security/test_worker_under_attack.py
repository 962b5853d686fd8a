"""A real worker trading on the fake Binance while an end user forges every row and call
they can reach: the exchange receives exactly the orders the platform meant to send, and the
victim's own requests still complete. On both database shapes (on the Supabase shape the
worker connects as the non-superuser owner, as it would there)."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import anyio
import psycopg
import pytest

from tests.execution_support import (
    exec_settings,
    live_worker,
    orders,
    position,
    wait_held,
    wait_status,
)
from tests.support import Owner, act_as, insert_position, seed_owner
from worker.execution.client_ids import is_worker_order
from worker.testing.fake_binance import FakeBinance

pytestmark = pytest.mark.anyio
D = Decimal


def _as_user(db_url: str, owner: Owner, sql: str, *args: Any, role: str = "authenticated") -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        act_as(conn, owner.user_id, role=role)
        try:
            cur = conn.execute(sql, args)
            row = cur.fetchone() if cur.description else None
            return "ok" if row is None or row[0] in (None, "") else f"ok {row[0]}"
        except psycopg.Error as exc:
            return str(exc.sqlstate)


async def _user_call(db_url: str, owner: Owner, sql: str, *args: Any) -> str:
    # off the event loop: the in-process worker may hold the position's row lock
    return await anyio.to_thread.run_sync(lambda: _as_user(db_url, owner, sql, *args))


def _forge_everything(
    db_url: str, attacker: Owner, own: uuid.UUID, victim: uuid.UUID
) -> dict[str, str]:
    """Everything the attacker tries, with the outcome of each."""
    order_row = (
        "INSERT INTO orders (position_id, user_id, client_order_id, symbol, side, type, "
        "quantity, status, purpose) VALUES (%s, %s, %s, 'BTCUSDT', 'buy', 'market', 30, "
        "'created', %s)"
    )
    return {
        "order on own position": _as_user(
            db_url, attacker, order_row, own, attacker.user_id, "pw-e" + uuid.uuid4().hex, "entry"
        ),
        "order on victim's position": _as_user(
            db_url, attacker, order_row, victim, attacker.user_id, "forged-1", "exit"
        ),
        "flip to live and hold 2": _as_user(
            db_url, attacker,
            "UPDATE positions SET is_paper_trade = false, held_quantity = 2 WHERE id = %s", own,
        ),
        "move own status": _as_user(
            db_url, attacker, "UPDATE positions SET status = 'closing' WHERE id = %s", own
        ),
        "exit victim": _as_user(db_url, attacker, "SELECT request_position_exit(%s)", victim),
        "scale victim": _as_user(
            db_url, attacker, "SELECT request_position_scale_in(%s, 1)", victim
        ),
        "reserved reason": _as_user(
            db_url, attacker, "SELECT request_position_exit(%s, NULL, 'stop_loss')", own
        ),
        "direct request row": _as_user(
            db_url, attacker,
            "INSERT INTO position_requests (position_id, user_id, kind, reason) "
            "VALUES (%s, %s, 'exit', 'user')", victim, attacker.user_id,
        ),
        "truncate": _as_user(db_url, attacker, "TRUNCATE positions CASCADE"),
        "setval": _as_user(
            db_url, attacker, "SELECT setval('position_events_id_seq', 9223372036854775807)",
            role="anon",
        ),
        "forged notification": _as_user(
            db_url, attacker, "SELECT pg_notify('position_state_change', %s)",
            json.dumps({"position_id": str(victim), "old_status": "monitoring",
                        "new_status": "closing", "user_id": str(attacker.user_id),
                        "symbol": "BTCUSDT"}),
        ),
    }  # fmt: skip


async def test_forged_rows_send_nothing_and_the_victim_still_trades(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        victim_owner, attacker = seed_owner(conn), seed_owner(conn)
    victim_id = uuid.uuid4()
    # the attacker's position shares the victim's first 24 hex digits (users choose ids)
    twin_id = uuid.UUID(victim_id.hex[:24] + uuid.uuid4().hex[24:])
    async with live_worker(exec_settings(db_url, redis_url), fake):
        assert _as_user(
            db_url, victim_owner,
            "INSERT INTO positions (id, user_id, trader_id, signal_id, symbol, side, status, "
            "requested_quantity, is_paper_trade) VALUES (%s, %s, %s, %s, 'BTCUSDT', 'long', "
            "'created', 0.5, false) RETURNING id",
            victim_id, victim_owner.user_id, victim_owner.trader_id, victim_owner.signal_id,
        ) == f"ok {victim_id}"  # fmt: skip
        with psycopg.connect(db_url, autocommit=True) as conn:
            act_as(conn, attacker.user_id)
            insert_position(conn, attacker, id=twin_id, quantity=D("0.1"), is_paper_trade=False)
        await wait_status(db_url, victim_id, "monitoring")
        await wait_status(db_url, twin_id, "monitoring")

        outcomes = await anyio.to_thread.run_sync(
            lambda: _forge_everything(db_url, attacker, twin_id, victim_id)
        )
        assert outcomes == {
            **dict.fromkeys(
                ["order on own position", "order on victim's position",
                 "flip to live and hold 2", "move own status", "direct request row",
                 "truncate", "setval"], "42501"),
            "exit victim": "PW010",
            "scale victim": "PW010",
            "reserved reason": "PW011",
            "forged notification": "ok",  # NOTIFY cannot be revoked: the worker ignores it
        }  # fmt: skip

        # the victim's own requests complete, ids and all
        assert (await _user_call(
            db_url, victim_owner, "SELECT request_position_scale_in(%s, 0.5)", victim_id
        )).startswith("ok")  # fmt: skip
        await wait_held(db_url, victim_id, "1")
        assert (await _user_call(
            db_url, victim_owner, "SELECT request_position_exit(%s)", victim_id
        )).startswith("ok")  # fmt: skip
        await wait_status(db_url, victim_id, "closed")
        assert (await _user_call(
            db_url, attacker, "SELECT request_position_exit(%s)", twin_id
        )).startswith("ok")  # fmt: skip
        await wait_status(db_url, twin_id, "closed")

    # exactly the orders the platform meant: 3 for the victim, 2 for the attacker, each once
    meant = {o["client_order_id"]: o for pid in (victim_id, twin_id) for o in orders(db_url, pid)}
    assert sorted(o["purpose"] for o in meant.values()) == sorted(
        ["entry", "scale_in", "exit", "entry", "exit"]
    )
    assert all(is_worker_order(o["id"], o["purpose"], o["client_order_id"]) for o in meant.values())
    assert sorted(fake.posted_client_ids()) == sorted(meant)
    assert all(o["status"] == "filled" for o in meant.values())
    victim = position(db_url, victim_id)
    assert (victim["entry_quantity"], victim["exit_quantity"], victim["held_quantity"]) == (
        D("1"), D("1"), D("0"),
    )  # fmt: skip
