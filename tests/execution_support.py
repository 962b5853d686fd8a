"""Running the worker with the engine against the fake Binance, for execution tests."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anyio
import psycopg
from psycopg.rows import dict_row

from tests.pipeline_support import eventually, settings_for
from tests.support import Owner, insert_position, seed_owner
from worker.app import App
from worker.exchanges.binance import BinanceClient
from worker.execution.client_ids import Purpose, client_order_id
from worker.execution.routing import ExchangeRouter
from worker.execution.rows import Order
from worker.execution.statuses import order_status_for
from worker.settings import ExecutionSettings, RiskSettings, Settings
from worker.testing.fake_binance import FakeBinance

KEY, SECRET = "test-key", "test-secret"
ORDER = "/api/v3/order"


def order_row(purpose: Purpose, status: str = "filled", **fields: Any) -> Order:
    """An order row as the engine loads it, for the tests of its pure decisions: a sell of
    0.5 BTCUSDT made now, with ``fields`` over these defaults."""
    order_id = fields.pop("id", uuid.uuid4())
    defaults: dict[str, Any] = {
        "id": order_id,
        "position_id": uuid.UUID(int=0),
        "client_order_id": client_order_id(order_id, purpose),
        "binance_order_id": None,
        "symbol": "BTCUSDT",
        "side": "sell",
        "type": "market",
        "quantity": Decimal("0.5"),
        "quote_quantity": None,
        "price": None,
        "stop_price": None,
        "status": status,
        "exchange_status": None,
        "filled_quantity": Decimal(0),
        "purpose": purpose,
        "is_paper_trade": False,
        "request_id": None,
        "send_attempts": 0,
        "missing_lookups": 0,
        "created_at": datetime.now(UTC),
    }
    return Order(**{**defaults, **fields})


# The execution tests size positions freely; the risk limits have their own tests.
NO_RISK_LIMITS = RiskSettings(
    max_position_notional=Decimal(0),
    max_open_positions=0,
    max_open_notional=Decimal(0),
    short_selling="any",
)


def exec_settings(db_url: str, redis_url: str, **execution: Any) -> Settings:
    base = settings_for(db_url, redis_url)
    fast = {
        "enabled": True,
        "reconcile_interval": 0.2,
        "reconcile_grace_seconds": 0.5,
        "open_orders_interval": 0.0,  # the REST safety net on every pass
        **execution,
    }
    return replace(base, execution=replace(ExecutionSettings(), **fast), risk=NO_RISK_LIMITS)


@asynccontextmanager
async def live_worker(
    settings: Settings, fake: FakeBinance, *, log: Any = None, **client_options: Any
) -> AsyncIterator[App]:
    """A worker trading on ``fake``, logging to ``log`` when given (instead of its own
    logger); ``client_options`` go to its BinanceClient. Fills arrive as on Binance: pushed
    over the fake's user data stream (``ws_api_url=None`` turns it off), with the reconcile
    pass as the safety net."""
    options = {"timeout_s": 2.0, "ws_api_url": fake.ws_api_url, **client_options}
    async with BinanceClient(KEY, SECRET, base_url=fake.base_url, **options) as client:
        app = App(settings, handle_signals=False, router=ExchangeRouter(None, client))
        if log is not None:
            app.log = log
        async with app.serving():
            yield app


def position(db_url: str, pid: uuid.UUID) -> dict[str, Any]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        row = conn.execute("SELECT * FROM positions WHERE id = %s", (pid,)).fetchone()
    assert row is not None
    return row


def orders(db_url: str, pid: uuid.UUID) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT * FROM orders WHERE position_id = %s ORDER BY created_at, client_order_id, id",
            (pid,),
        ).fetchall()


async def wait_status(db_url: str, pid: uuid.UUID, *statuses: str, timeout: float = 20) -> None:
    await eventually(lambda: position(db_url, pid)["status"] in statuses, timeout=timeout)


async def wait_held(db_url: str, pid: uuid.UUID, held: str, timeout: float = 20) -> None:
    await eventually(lambda: position(db_url, pid)["held_quantity"] == Decimal(held), timeout)


def new_position(db_url: str, **columns: Any) -> tuple[Owner, uuid.UUID]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        owner = seed_owner(conn)
        return owner, insert_position(conn, owner, **columns)


def call(db_url: str, sql: str, *args: Any) -> Any:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(sql, args).fetchone()
    return row[0] if row else None


async def call_off_loop(db_url: str, sql: str, *args: Any) -> Any:
    """:func:`call` in a thread, for SQL that may wait for a row lock the in-process worker
    holds (``request_position_exit`` locks the position): waiting on the event loop's own
    thread would stop the worker from ever committing, and both would wait forever."""
    return await anyio.to_thread.run_sync(lambda: call(db_url, sql, *args))


def trades(db_url: str, pid: uuid.UUID) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT * FROM trades WHERE position_id = %s ORDER BY executed_at, id", (pid,)
        ).fetchall()


def posts_by_client_id(fake: FakeBinance) -> Counter[str]:
    """How many times each client order id was POSTed to the fake (whatever the answer):
    single orders and the legs of OCO lists."""
    return Counter(fake.posted_client_ids())


def assert_matches_exchange(db_url: str, fake: FakeBinance, pid: uuid.UUID) -> None:
    """The database agrees with the (fake) exchange about one live position: exactly one
    exchange order per order row (one POST per client order id, none without a row), the
    same status, and every exchange fill recorded exactly once."""
    rows = orders(db_url, pid)
    ours = {o["client_order_id"] for o in rows}
    posted = posts_by_client_id(fake)
    assert {k: n for k, n in posted.items() if k in ours} == dict.fromkeys(ours, 1), (
        "one exchange order per intent"
    )
    assert set(posted) <= _client_ids(db_url), "no exchange order without a row"
    fills = trades(db_url, pid)
    for order in rows:
        [snapshot] = fake.orders(order["client_order_id"])
        want = order_status_for(snapshot["status"], Decimal(snapshot["executedQty"]))
        assert order["status"] == want, (order["purpose"], order["status"], snapshot["status"])
        on_exchange = sorted(
            str(t["id"]) for t in fake.trades() if t["orderId"] == snapshot["orderId"]
        )
        recorded = sorted(t["binance_trade_id"] for t in fills if t["order_id"] == order["id"])
        assert recorded == on_exchange, f"{order['purpose']}: fills recorded exactly once"
    assert len(fills) == len({(t["order_id"], t["binance_trade_id"]) for t in fills})


def _client_ids(db_url: str) -> set[str]:
    """Every client order id in the database (an id does not say which position it is of)."""
    with psycopg.connect(db_url) as conn:
        sql = "SELECT client_order_id FROM orders WHERE client_order_id IS NOT NULL"
        return {row[0] for row in conn.execute(sql)}


def resting(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Orders still working on the exchange, by our records."""
    return [o for o in rows if o["status"] in ("created", "submitted", "partially_filled")]
