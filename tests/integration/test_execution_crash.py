"""kill -9 of a real worker process in the middle of the execution flow, then restart:
the database converges to the exchange, with exactly one exchange order per intent."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from tests.execution_support import (
    KEY,
    SECRET,
    call,
    new_position,
    orders,
    position,
    wait_held,
    wait_status,
)
from tests.pipeline_support import worker_env
from tests.test_helpers_sync import wait_until
from worker.testing.fake_binance import FakeBinance, Fault
from worker.testing.processes import WorkerProcess

pytestmark = pytest.mark.anyio
D = Decimal
ORDER = "/api/v3/order"


def live_env(db_url: str, redis_url: str, fake: FakeBinance) -> dict[str, str]:
    return {
        **worker_env(db_url, redis_url),
        "POSITION_WORKER__EXECUTION__ENABLED": "true",
        "POSITION_WORKER__EXECUTION__RECONCILE_INTERVAL": "0.2",
        "POSITION_WORKER__EXECUTION__RECONCILE_GRACE_SECONDS": "0.5",
        "POSITION_WORKER__BINANCE__BASE_URL": fake.base_url,
        "BINANCE_API_KEY": KEY,
        "BINANCE_API_SECRET": SECRET,
    }


def posted(fake: FakeBinance) -> int:
    return len(fake.requests_to("POST", ORDER))


@pytest.mark.parametrize("step", ["entry", "exit"])
async def test_kill_9_while_an_order_is_in_flight_converges_to_one_exchange_order(
    db_url: str, redis_url: str, fake: FakeBinance, tmp_path: Path, step: str
) -> None:
    env = live_env(db_url, redis_url, fake)
    _, pid = new_position(db_url, quantity=D("0.5"), is_paper_trade=False)
    first = WorkerProcess(env, tmp_path / "first.log")
    if step == "entry":
        fake.faults.push(Fault.hang())  # applied, never answered
        first.start()
        wait_until(lambda: posted(fake) == 1, timeout=20)
    else:
        first.start()
        await wait_status(db_url, pid, "monitoring")
        fake.set_price("BTCUSDT", "120")
        fake.faults.push(Fault.hang())
        call(db_url, "SELECT request_position_exit(%s)", pid)
        wait_until(lambda: posted(fake) == 2, timeout=20)
    first.kill()  # SIGKILL between sending and recording
    fake.release_hung()
    second = WorkerProcess(env, tmp_path / "second.log").start()
    try:
        if step == "entry":
            await wait_held(db_url, pid, "0.5", timeout=30)
        else:
            await wait_status(db_url, pid, "closed", timeout=30)
    finally:
        second.kill()
    for order in orders(db_url, pid):
        assert fake.order_count(order["client_order_id"]) == 1, order["purpose"]
        assert order["status"] == "filled"
    assert posted(fake) == (1 if step == "entry" else 2)
    if step == "exit":
        closed = position(db_url, pid)
        assert closed["realized_pnl"] == D("9.89")  # 0.5*(120-100) - 0.05 - 0.06
