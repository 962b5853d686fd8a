"""Lost orders: the spot testnet's reset forgets every order; an order the exchange
acknowledged that answers -2013 "Order does not exist." for ``execution.lost_order_seconds``
is marked lost (never looked up again), its position gets a critical notification and is
protected again."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from tests.execution_support import exec_settings, live_worker, new_position, orders, position
from tests.pipeline_support import eventually, stream_entries
from worker.testing.fake_binance import FakeBinance

pytestmark = pytest.mark.anyio
D = Decimal
PROTECTIVE = ("stop_loss", "take_profit")


def legs(db_url: str, pid: uuid.UUID) -> list[dict[str, object]]:
    return [o for o in orders(db_url, pid) if o["purpose"] in PROTECTIVE]


def acknowledged_pair(db_url: str, pid: uuid.UUID, after: int = 0) -> bool:
    live = [o for o in legs(db_url, pid)[after:] if o["status"] == "submitted"]
    return sorted(str(o["purpose"]) for o in live) == list(PROTECTIVE)


def lookups_of(fake: FakeBinance, client_ids: set[str]) -> int:
    return sum(
        1
        for r in fake.requests_to("GET", "/api/v3/order")
        if r.params.get("origClientOrderId") in client_ids
    )


async def test_orders_forgotten_by_a_testnet_reset_are_lost_and_protection_placed_again(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    _, pid = new_position(
        db_url,
        quantity=D("0.5"),
        is_paper_trade=False,
        stop_loss_price=D("90"),
        take_profit_price=D("130"),
    )
    settings = exec_settings(db_url, redis_url, lost_order_seconds=1.0)
    async with live_worker(settings, fake) as app:
        await eventually(lambda: acknowledged_pair(db_url, pid), 20)
        old = {str(o["client_order_id"]) for o in legs(db_url, pid)}
        fake.testnet_reset()
        await eventually(lambda: acknowledged_pair(db_url, pid, after=2), 20)
        lost = legs(db_url, pid)[:2]
        assert {o["status"] for o in lost} == {"cancelled"}
        assert {o["exchange_status"] for o in lost} == {"LOST"}
        assert all(str(o["error_message"]).startswith("lost:") for o in lost)
        assert position(db_url, pid)["status"] == "monitoring"
        assert position(db_url, pid)["protection"] == "exchange"
        notes = await eventually(
            lambda: [
                n
                for n in stream_entries(redis_url, "positions:notifications")
                if n["type"] == "order.lost" and n["position_id"] == str(pid)
            ],
            10,
        )
        assert {n["severity"] for n in notes} == {"critical"}
        # never looked up again
        looked_up = lookups_of(fake, old)
        assert app.watcher is not None
        start = app.watcher.passes
        await eventually(lambda: app.watcher is not None and app.watcher.passes > start + 5, 10)
        assert lookups_of(fake, old) == looked_up
