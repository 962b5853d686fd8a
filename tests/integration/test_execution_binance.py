"""The engine on Binance spot (the fake Binance on loopback): full lifecycle and faults."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.execution_support import (
    call,
    call_off_loop,
    exec_settings,
    live_worker,
    new_position,
    orders,
    position,
    wait_held,
    wait_status,
)
from tests.pipeline_support import eventually
from worker.testing.fake_binance import FakeBinance, Fault

pytestmark = pytest.mark.anyio
D = Decimal
ORDER = "/api/v3/order"
FINAL = ("filled", "cancelled", "failed")


def posts(fake: FakeBinance, cid: str) -> int:
    return fake.posted_client_ids().count(cid)  # single orders and OCO legs


async def test_worked_example_through_scale_in_partial_and_full_exit(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    """The accounting worked example: buy 0.5@100, 0.5@110, sell 0.4@120, 0.6@90, fee 0.1 % USDT."""
    _, pid = new_position(db_url, quantity=D("0.5"), is_paper_trade=False)
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_status(db_url, pid, "monitoring")
        opened = position(db_url, pid)
        assert (opened["entry_price"], opened["entry_quantity"], opened["held_quantity"]) == (
            D("100"),
            D("0.5"),
            D("0.5"),
        )
        fake.set_price("BTCUSDT", "110")
        await call_off_loop(db_url, "SELECT request_position_scale_in(%s, 0.5)", pid)
        await wait_held(db_url, pid, "1")
        fake.set_price("BTCUSDT", "120")
        await call_off_loop(db_url, "SELECT request_position_exit(%s, 0.4)", pid)
        await wait_held(db_url, pid, "0.6")
        partial = position(db_url, pid)
        assert partial["realized_pnl"] == D("5.91")
        assert partial["status"] == "monitoring"
        fake.set_price("BTCUSDT", "90")
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        await wait_status(db_url, pid, "closed")
    closed = position(db_url, pid)
    assert closed["entry_price"] == D("105")
    assert closed["entry_quantity"] == D("1")
    assert closed["entry_cost"] == D("105.105")
    assert closed["exit_quantity"] == D("1")
    assert closed["exit_price"] == D("102")
    assert closed["realized_pnl"] == D("-3.207")
    assert closed["realized_pnl_percent"] == D("-3.0512")
    assert closed["fees_paid"] == D("0.207")
    assert closed["held_quantity"] == 0
    assert closed["close_reason"] == "user"
    purposes = [(o["purpose"], o["status"]) for o in orders(db_url, pid)]
    assert purposes == [
        ("entry", "filled"),
        ("scale_in", "filled"),
        ("scale_out", "filled"),
        ("exit", "filled"),
    ]
    for order in orders(db_url, pid):
        assert posts(fake, order["client_order_id"]) == 1
    assert (
        call(db_url, "SELECT status FROM signals WHERE id = %s", closed["signal_id"]) == "completed"
    )


async def test_rejected_entry_fails_the_position_with_the_exchange_reason(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    fake.faults.push(Fault.insufficient_balance())
    _, pid = new_position(db_url, quantity=D("0.5"), is_paper_trade=False)
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_status(db_url, pid, "failed")
    failed = position(db_url, pid)
    assert "-2010" in failed["failure_reason"]
    [entry] = orders(db_url, pid)
    assert entry["status"] == "failed"
    assert posts(fake, entry["client_order_id"]) == 1


@pytest.mark.parametrize(
    "fault",
    [
        Fault.drop_after_apply(),
        Fault.timeout_after_apply(),
        Fault.drop_after_apply(lookups=2),
        Fault.server_error(),
        Fault.server_error(after_apply=True),
        Fault.drop_before_apply(),
    ],
    ids=[
        "dropped-after-fill",
        "-1007-after-fill",
        "invisible-for-2-lookups",
        "503",
        "503-after-fill",
        "dropped-before-apply",
    ],
)
async def test_unknown_outcome_is_reconciled_to_exactly_one_exchange_order(
    db_url: str, redis_url: str, fake: FakeBinance, fault: Fault
) -> None:
    fake.faults.push(fault)
    _, pid = new_position(db_url, quantity=D("0.5"), is_paper_trade=False)
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_status(db_url, pid, "monitoring", timeout=30)
    [entry] = orders(db_url, pid)
    assert entry["status"] == "filled"
    assert fake.order_count(entry["client_order_id"]) == 1
    assert position(db_url, pid)["held_quantity"] == D("0.5")


async def test_filter_failure_fails_locally_without_reaching_the_exchange(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    _, pid = new_position(db_url, quantity=D("0.01"), is_paper_trade=False)  # 1 USDT < 5 min
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_status(db_url, pid, "failed")
    assert "notional" in position(db_url, pid)["failure_reason"].lower()
    assert orders(db_url, pid) == []
    assert fake.requests_to("POST", ORDER) == []


async def test_stop_loss_fires_on_the_exchange_and_nothing_is_left_resting(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    _, pid = new_position(
        db_url,
        quantity=D("0.5"),
        is_paper_trade=False,
        stop_loss_price=D("90"),
        take_profit_price=D("130"),
    )
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_status(db_url, pid, "monitoring")
        await _wait_resting(fake, 2)
        fake.set_price("BTCUSDT", "85")
        await wait_status(db_url, pid, "closed")
        await _wait_resting(fake, 0)
        # the sibling's cancellation is recorded after the exchange confirms it
        await eventually(lambda: all(o["status"] in FINAL for o in orders(db_url, pid)), 10)
    closed = position(db_url, pid)
    assert closed["close_reason"] == "stop_loss"
    statuses = {o["purpose"]: o["status"] for o in orders(db_url, pid)}
    assert statuses == {"entry": "filled", "stop_loss": "filled", "take_profit": "cancelled"}
    assert [o for o in fake.orders() if o["status"] in ("NEW", "PARTIALLY_FILLED")] == []


@pytest.mark.parametrize(
    ("stop_loss", "max_loss", "stop"),
    [
        (None, D("5"), D("90")),  # max loss alone: 100 - 5 / 0.5
        (D("80"), D("3.333"), D("93.34")),  # tighter than the stop-loss: 93.334, tick 0.01 up
        (D("95"), D("5"), D("95")),  # the stop-loss is the tighter
    ],
)
async def test_max_loss_becomes_the_exchange_side_stop_when_it_is_the_tighter(
    db_url: str,
    redis_url: str,
    fake: FakeBinance,
    stop_loss: Decimal | None,
    max_loss: Decimal,
    stop: Decimal,
) -> None:
    """0.5 BTC bought at 100: a loss of ``max_loss`` USDT is reached at 100 - max_loss / 0.5;
    a computed stop is rounded to the tick towards the market (the loss stays within)."""
    _, pid = new_position(
        db_url,
        quantity=D("0.5"),
        is_paper_trade=False,
        stop_loss_price=stop_loss,
        max_loss_usdt=max_loss,
    )
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_status(db_url, pid, "monitoring")
        await _wait_resting(fake, 1)
    [resting] = [o for o in fake.orders() if o["status"] == "NEW"]
    [row] = [o for o in orders(db_url, pid) if o["purpose"] == "stop_loss"]
    assert D(resting["stopPrice"]) == row["stop_price"] == stop


async def _wait_resting(fake: FakeBinance, n: int) -> None:
    await eventually(lambda: len([o for o in fake.orders() if o["status"] == "NEW"]) == n, 10)


async def test_stop_that_fired_while_the_worker_was_down_closes_the_position_after_restart(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    _, pid = new_position(db_url, quantity=D("0.5"), is_paper_trade=False, stop_loss_price=D("90"))
    settings = exec_settings(db_url, redis_url)
    async with live_worker(settings, fake):
        await wait_status(db_url, pid, "monitoring")
        await _wait_resting(fake, 1)
    fake.set_price("BTCUSDT", "80")  # nobody is watching
    assert position(db_url, pid)["status"] == "monitoring"
    async with live_worker(settings, fake):
        await wait_status(db_url, pid, "closed")
    closed = position(db_url, pid)
    assert closed["close_reason"] == "stop_loss"
    assert closed["exit_price"] == D("80")
    assert closed["held_quantity"] == 0
