"""kill -9 of a real worker process in the middle of the execution flow, then restart:
the database converges to the exchange, with exactly one exchange order per intent.

The kills are deterministic: a worker whose engine is given the crash points
(:func:`armed_worker`: ``python -m worker.testing.armed_worker run``), started with
``POSITION_WORKER_CRASH_AT=<point>``, SIGKILLs itself when it reaches that named step
(``worker/testing/crashpoints.py``). A second worker, without the crash point, must then bring
every position to the state and figures computed by hand below (BTCUSDT, 0.1 % commission
in USDT):

* opened: buy 0.5 @ 100, fee 0.05: entry cost 50.05;
* closed at 120: sell 0.5, fee 0.06: realized 60 - 0.06 - 50.05 = 9.89 (19.7602 %);
* stop-loss 90 hit at 85: sell 0.5, fee 0.0425: realized 42.5 - 0.0425 - 50.05 = -7.5925
  (-15.1698 %);
* scale-in 0.5 @ 110, fee 0.055: entry price 105, entry cost 105.105, held 1;
* partial exit 0.2 @ 120, fee 0.024: realized 24 - 0.024 - 0.2 x 100.1 = 3.956 (7.9041 %),
  held 0.3.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from tests.execution_support import (
    KEY,
    ORDER,
    SECRET,
    assert_matches_exchange,
    call,
    new_position,
    orders,
    position,
    posts_by_client_id,
    resting,
    trades,
    wait_held,
    wait_status,
)
from tests.pipeline_support import eventually, worker_env
from tests.waits import wait_until
from worker.testing.crashpoints import ENV as CRASH_AT
from worker.testing.fake_binance import FakeBinance, Fault
from worker.testing.processes import WorkerProcess

pytestmark = pytest.mark.anyio
D = Decimal
PROTECTIVE = ("stop_loss", "take_profit")
LIVE: dict[str, Any] = {
    "quantity": D("0.5"),
    "is_paper_trade": False,
    "stop_loss_price": D("90"),
    "take_profit_price": D("130"),
}
PAPER: dict[str, Any] = {"quantity": D("0.5"), "is_paper_trade": True}


# The execution tests size positions freely; the risk limits have their own tests.
NO_RISK_LIMITS_ENV = {
    "POSITION_WORKER__RISK__MAX_POSITION_NOTIONAL": "0",
    "POSITION_WORKER__RISK__MAX_OPEN_POSITIONS": "0",
    "POSITION_WORKER__RISK__MAX_OPEN_NOTIONAL": "0",
    "POSITION_WORKER__RISK__SHORT_SELLING": "any",
}


def live_env(db_url: str, redis_url: str, fake: FakeBinance, **pipeline: Any) -> dict[str, str]:
    """Fast reconciliation, and 1 s leases so that the events a killed worker had claimed
    are taken over quickly; Binance is the fake; paper prices are the fake's book too
    (paper feed ``binance``, re-read at every look), without slippage: a paper market order
    takes the fake's best ask or bid, a tick from the price its live orders fill at."""
    return {
        **worker_env(db_url, redis_url, **{"lease_seconds": 1.0, **pipeline}),
        "POSITION_WORKER__EXECUTION__ENABLED": "true",
        "POSITION_WORKER__EXECUTION__RECONCILE_INTERVAL": "0.2",
        "POSITION_WORKER__EXECUTION__RECONCILE_GRACE_SECONDS": "0.5",
        "POSITION_WORKER__BINANCE__BASE_URL": fake.base_url,
        "POSITION_WORKER__BINANCE__WS_API_URL": fake.ws_api_url,  # fills pushed too
        "POSITION_WORKER__PAPER__FEED": "binance",
        "POSITION_WORKER__PAPER__SLIPPAGE_BPS": "0",
        "POSITION_WORKER__PAPER__REST_REFRESH_SECONDS": "0",
        "POSITION_WORKER__PAPER__TAKER_FEE": "0.001",
        "POSITION_WORKER__PAPER__FEE_ASSET": "quote",
        # the fake's default account trades the tests' positions (which name no account)
        "POSITION_WORKER__ACCOUNTS__OPERATOR_ACCOUNT": "true",
        "BINANCE_API_KEY": KEY,
        "BINANCE_API_SECRET": SECRET,
        **NO_RISK_LIMITS_ENV,
    }


def armed_worker(env: dict[str, str], log_path: Path) -> WorkerProcess:
    """A worker process whose execution engine calls the crash points."""
    return WorkerProcess(env, log_path, module="worker.testing.armed_worker")


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


# -- a kill at every named step, then a restart ---------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """Where a flow must end: status, the figures, and the protection left resting."""

    status: str
    figures: dict[str, Any]
    protected: Decimal | None = None  # quantity of the resting stop-loss and take-profit


OPENED = {
    "entry_price": D("100"),
    "entry_quantity": D("0.5"),
    "entry_value": D("50"),
    "entry_cost": D("50.05"),
    "fees_paid": D("0.05"),
    "held_quantity": D("0.5"),
    "realized_pnl": None,
}
OUTCOMES = {
    "entry": Outcome("monitoring", OPENED, protected=D("0.5")),
    "exit": Outcome(
        "closed",
        {
            **OPENED,
            "exit_price": D("120"),
            "exit_quantity": D("0.5"),
            "exit_value": D("60"),
            "fees_paid": D("0.11"),
            "held_quantity": D("0"),
            "realized_pnl": D("9.89"),
            "realized_pnl_percent": D("19.7602"),
            "close_reason": "user",
        },
    ),
    "stop": Outcome(
        "closed",
        {
            **OPENED,
            "exit_price": D("85"),
            "exit_quantity": D("0.5"),
            "exit_value": D("42.5"),
            "fees_paid": D("0.0925"),
            "held_quantity": D("0"),
            "realized_pnl": D("-7.5925"),
            "realized_pnl_percent": D("-15.1698"),
            "close_reason": "stop_loss",
        },
    ),
    "scale_in": Outcome(
        "monitoring",
        {
            "entry_price": D("105"),
            "entry_quantity": D("1"),
            "entry_value": D("105"),
            "entry_cost": D("105.105"),
            "fees_paid": D("0.105"),
            "held_quantity": D("1"),
            "realized_pnl": None,
        },
        protected=D("1"),
    ),
    "scale_out": Outcome(
        "monitoring",
        {
            **OPENED,
            "exit_price": D("120"),
            "exit_quantity": D("0.2"),
            "exit_value": D("24"),
            "fees_paid": D("0.074"),
            "held_quantity": D("0.3"),
            "realized_pnl": D("3.956"),
            "realized_pnl_percent": D("7.9041"),
        },
        protected=D("0.3"),
    ),
}

# (crash point, flow that reaches it). Flows: entry (just open), exit (open, then exit at
# 120), stop (open, then the price falls through the stop-loss), scale_in (open, then buy
# 0.5 more at 110), scale_out (open, then sell 0.2 at 120).
LIVE_POINTS = [
    ("entry.committed", "entry"),  # intent committed, nothing sent
    ("entry.sent", "entry"),  # the exchange filled it, nothing recorded
    ("entry.recording", "entry"),  # the recording transaction dies half-written
    ("entry.settled", "entry"),  # position open, no stop-loss / take-profit placed yet
    ("stop_loss.sent", "entry"),  # stop-loss resting on the exchange, not recorded
    ("take_profit.sent", "entry"),  # take-profit resting on the exchange, not recorded
    ("stop_loss.settled", "stop"),  # closed by the stop, take-profit still resting
    ("exit.protection_cancelled", "exit"),  # protection gone, exit not recorded yet
    ("exit.committed", "exit"),
    ("exit.sent", "exit"),
    ("exit.recording", "exit"),
    ("scale_in.committed", "scale_in"),
    ("scale_in.sent", "scale_in"),
    ("scale_in.settled", "scale_in"),  # held 1, protection still sized for 0.5
    ("scale_out.committed", "scale_out"),
    ("scale_out.sent", "scale_out"),
    ("scale_out.settled", "scale_out"),  # held 0.3, protection cancelled, not re-placed
]
# Paper market orders take the fake's book: the entry buys at the ask (100.01), the exit
# sells at the bid (119.99), a tick (0.01) from the price live orders fill at.
PAPER_OPENED = {
    **OPENED,
    "entry_price": D("100.01"),
    "entry_value": D("50.005"),
    "entry_cost": D("50.055005"),
    "fees_paid": D("0.050005"),
}
PAPER_OUTCOMES = {
    "entry": Outcome("monitoring", PAPER_OPENED, protected=D("0.5")),
    "exit": Outcome(
        "closed",
        {
            **PAPER_OPENED,
            "exit_price": D("119.99"),
            "exit_quantity": D("0.5"),
            "exit_value": D("59.995"),
            "fees_paid": D("0.11"),
            "held_quantity": D("0"),
            "realized_pnl": D("9.88"),
            "realized_pnl_percent": D("19.7383"),
            "close_reason": "user",
        },
    ),
}
PAPER_POINTS = [
    ("entry.committed", "entry"),
    ("entry.sent", "entry"),  # the simulated fill dies with the process
    ("exit.committed", "exit"),
    ("exit.sent", "exit"),
]


async def _act(db_url: str, fake: FakeBinance, pid: uuid.UUID, flow: str, paper: bool) -> None:
    """Take the flow's step after the entry (the entry itself needs nothing)."""
    if flow == "entry":
        return
    await _wait_protected(db_url, pid, paper)
    if flow == "stop":
        fake.set_price("BTCUSDT", "85")
    elif flow == "exit":
        fake.set_price("BTCUSDT", "120")
        call(db_url, "SELECT request_position_exit(%s)", pid)
    elif flow == "scale_in":
        fake.set_price("BTCUSDT", "110")
        call(db_url, "SELECT request_position_scale_in(%s, 0.5)", pid)
    elif flow == "scale_out":
        fake.set_price("BTCUSDT", "120")
        call(db_url, "SELECT request_position_exit(%s, 0.2)", pid)


async def _wait_protected(db_url: str, pid: uuid.UUID, paper: bool) -> None:
    def ready() -> bool:
        placed = sorted((o["purpose"], o["status"]) for o in resting(orders(db_url, pid)))
        expected = [] if paper else [("stop_loss", "submitted"), ("take_profit", "submitted")]
        return position(db_url, pid)["status"] == "monitoring" and placed == expected

    await eventually(ready, timeout=20)


def _converged(db_url: str, fake: FakeBinance, pid: uuid.UUID, want: Outcome, paper: bool) -> bool:
    """Final status and holding reached, every order settled or (protection) resting as
    the exchange says, nothing resting that should not."""
    p = position(db_url, pid)
    if p["status"] != want.status or p["held_quantity"] != want.figures["held_quantity"]:
        return False
    rows = orders(db_url, pid)
    working = resting(rows)
    if any(o["status"] == "created" or o["purpose"] not in PROTECTIVE for o in working):
        return False
    protection = sorted((o["purpose"], o["quantity"]) for o in working)
    if paper or want.protected is None:  # paper: the watcher enforces stops, nothing rests
        expected: list[tuple[str, Decimal]] = []
    else:
        expected = [("stop_loss", want.protected), ("take_profit", want.protected)]
    if protection != expected:
        return False
    if paper:
        return True
    exchange_open = {o["clientOrderId"] for o in fake.orders() if o["status"] == "NEW"}
    ours = {o["client_order_id"] for o in rows}
    return exchange_open & ours == {o["client_order_id"] for o in working}


async def _converge(
    db_url: str,
    fake: FakeBinance,
    pids: dict[uuid.UUID, bool],
    flow: str,
    *workers: WorkerProcess,
) -> None:
    """Wait until every position (-> is paper) ended its flow; on timeout, fail with what
    they and the workers' last log lines look like."""
    try:
        await eventually(lambda: _all(db_url, fake, pids, flow), timeout=20)
    except TimeoutError:
        pytest.fail(_describe(db_url, fake, list(pids), workers), pytrace=False)


def _describe(
    db_url: str, fake: FakeBinance, pids: list[uuid.UUID], workers: tuple[WorkerProcess, ...]
) -> str:
    lines = ["did not converge:"]
    for pid in pids:
        p = position(db_url, pid)
        lines.append(f"position {pid}: {p['status']} held {p['held_quantity']}")
        for o in orders(db_url, pid):
            on_exchange = [f["status"] for f in fake.orders(o["client_order_id"])]
            lines.append(
                f"  {o['client_order_id']} {o['purpose']} {o['status']} qty {o['quantity']}"
                f" sends {o['send_attempts']} misses {o['missing_lookups']} fake {on_exchange}"
            )
    for worker in workers:
        lines += ["worker log tail:", *(line.rstrip()[:300] for line in worker.lines[-15:])]
    return "\n".join(lines)


def _assert_figures(db_url: str, pid: uuid.UUID, want: Outcome) -> None:
    p = position(db_url, pid)
    got = {key: p[key] for key in want.figures}
    assert got == want.figures


async def _crash_then_restart(
    env: dict[str, str],
    tmp_path: Path,
    point: str,
    before_crash: Callable[[], Awaitable[None]],
    *,
    logged_first: str | None = None,
    first_env: dict[str, str] | None = None,
) -> WorkerProcess:
    """Run a worker armed with ``point`` (``env`` with ``first_env`` over it) until it
    SIGKILLs itself there (having logged ``logged_first`` before, when given); start a
    clean one on ``env``."""
    armed = {**env, **(first_env or {}), CRASH_AT: point}
    first = armed_worker(armed, tmp_path / "first.log").start()
    try:
        await before_crash()
        code = first.wait(20)
    finally:
        first.kill()
    assert code == -signal.SIGKILL, f"worker exited with {code}, not killed at {point}"
    assert first.logged("crash_point_reached") == 1
    assert any(f'"point": "{point}"' in line for line in first.lines)
    if logged_first is not None:
        assert first.logged(logged_first) >= 1, f"no {logged_first}:\n" + "".join(first.lines[-40:])
    return WorkerProcess(env, tmp_path / "second.log").start()


@pytest.mark.parametrize(
    ("paper", "point", "flow"),
    [(False, *p) for p in LIVE_POINTS] + [(True, *p) for p in PAPER_POINTS],
    ids=[f"live-{p}" for p, _ in LIVE_POINTS] + [f"paper-{p}" for p, _ in PAPER_POINTS],
)
async def test_kill_9_at_each_step_then_restart_converges(
    db_url: str,
    redis_url: str,
    fake: FakeBinance,
    tmp_path: Path,
    paper: bool,
    point: str,
    flow: str,
) -> None:
    _, pid = new_position(db_url, **(PAPER if paper else LIVE))
    want = _outcome(flow, paper)
    env = live_env(db_url, redis_url, fake)
    second = await _crash_then_restart(
        env, tmp_path, point, lambda: _act(db_url, fake, pid, flow, paper)
    )
    try:
        await _converge(db_url, fake, {pid: paper}, flow, second)
    finally:
        second.kill()
    _assert_figures(db_url, pid, want)
    if paper:
        _assert_paper_fills(db_url, fake, pid, point)
    else:
        assert_matches_exchange(db_url, fake, pid)


async def _nothing() -> None:
    return None


@pytest.mark.parametrize(
    ("point", "quote_fails"),
    [
        ("entry.committed", False),
        ("entry.sent", False),
        ("entry.sent", True),
        ("entry.recording", False),
        ("entry.settled", False),
    ],
    ids=["committed", "sent", "sent-paper-quote-503", "recording", "settled"],
)
async def test_kill_9_in_a_batch_of_entries_then_restart_converges(
    db_url: str,
    redis_url: str,
    fake: FakeBinance,
    tmp_path: Path,
    point: str,
    quote_fails: bool,
) -> None:
    """Five positions (three live, two paper) committed before the worker starts: its first
    claim enters them together (worker/execution/entry_batch.py), and it is killed at
    ``point``, reached once for the whole batch once every send is answered (at
    ``entry.settled``: after the first position's recording, before its protection). A
    clean worker brings every one of them to what one position alone reaches, with one
    exchange order per intent.

    With ``quote_fails`` the paper book's price read answers 503 once, so the batch's paper
    orders are not placed (outcome unknown) when the kill comes: the clean worker places
    them, once each. The killed worker's reconciliation waits a minute before it takes up
    positions not entered, so that the claim's batch is the only one it runs."""
    pids: dict[uuid.UUID, bool] = {}
    for paper in (False, False, False, True, True):
        pids[new_position(db_url, **(PAPER if paper else LIVE))[1]] = paper
    if quote_fails:
        fake.faults.push(Fault.server_error(method="GET", path="/api/v3/ticker/bookTicker"))
    env = live_env(db_url, redis_url, fake)
    second = await _crash_then_restart(
        env,
        tmp_path,
        point,
        _nothing,
        logged_first="entry_batch",
        first_env={"POSITION_WORKER__EXECUTION__RECONCILE_GRACE_SECONDS": "60"},
    )
    killed_at, placed = await _converged_after_batch_kill(
        db_url, fake, tmp_path, pids, "entry", point, second
    )
    for times in placed.values():
        placed_by_second = quote_fails or point == "entry.committed"
        assert all(at > killed_at for at in times) == placed_by_second, (times, killed_at)


@pytest.mark.parametrize(
    "point",
    ["exit.protection_cancelled", "exit.committed", "exit.sent", "exit.recording", "exit.settled"],
)
async def test_kill_9_in_a_batch_of_exits_then_restart_converges(
    db_url: str, redis_url: str, fake: FakeBinance, tmp_path: Path, point: str
) -> None:
    """Five positions (three live, their stop-loss and take-profit resting on the exchange;
    two paper) entered, then their exits committed in one transaction: one claim takes them
    together (worker/execution/request_batch.py), the live ones' protection is cancelled
    one position at a time, and the worker is killed at ``point``, reached once for the
    whole batch (at ``exit.settled``: after the first position's close, before its
    follow-ups). A clean worker closes every one as one exit alone does, with one exchange
    order per intent. The killed worker's reconciliation waits a minute before it looks at
    orders in flight, so that the claim's batch is the only thing that exits them."""
    pids: dict[uuid.UUID, bool] = {}
    for paper in (False, False, False, True, True):
        pids[new_position(db_url, **(PAPER if paper else LIVE))[1]] = paper

    async def exit_all() -> None:
        for pid, paper in pids.items():
            await _wait_protected(db_url, pid, paper)
        fake.set_price("BTCUSDT", "120")
        with psycopg.connect(db_url) as conn, conn.transaction():
            for pid in pids:
                conn.execute("SELECT request_position_exit(%s)", (pid,))

    env = live_env(db_url, redis_url, fake)
    second = await _crash_then_restart(
        env,
        tmp_path,
        point,
        exit_all,
        logged_first=None if point == "exit.protection_cancelled" else "request_batch",
        first_env={"POSITION_WORKER__EXECUTION__RECONCILE_GRACE_SECONDS": "60"},
    )
    await _converged_after_batch_kill(db_url, fake, tmp_path, pids, "exit", point, second)


async def _converged_after_batch_kill(
    db_url: str,
    fake: FakeBinance,
    tmp_path: Path,
    pids: dict[uuid.UUID, bool],
    flow: str,
    point: str,
    second: WorkerProcess,
) -> tuple[datetime, dict[uuid.UUID, list[datetime]]]:
    """After a batch's worker was killed at ``point``: wait until the clean worker
    ``second`` brought every position (-> is paper) to the end of ``flow``; assert each
    one's figures, the paper ones' fills and the live ones against the exchange, and one
    exchange order per client order id. When the kill came, and when each paper
    position's orders were placed."""
    try:
        await _converge(db_url, fake, pids, flow, second)
    finally:
        second.kill()
    killed_at = _killed_at(tmp_path / "first.log")
    placed: dict[uuid.UUID, list[datetime]] = {}
    for pid, paper in pids.items():
        _assert_figures(db_url, pid, _outcome(flow, paper))
        if paper:
            placed[pid] = _assert_paper_fills(db_url, fake, pid, point, killed_at)
        else:
            assert_matches_exchange(db_url, fake, pid)
    assert set(posts_by_client_id(fake).values()) == {1}
    return killed_at, placed


def _assert_paper_fills(
    db_url: str, fake: FakeBinance, pid: uuid.UUID, point: str, killed_at: datetime | None = None
) -> list[datetime]:
    """Paper orders never reach the fake; each fills exactly once in our records. The paper
    exchange keeps its orders in PostgreSQL: an order sent by the killed worker outlives it,
    and the restarted worker finds it by its client id and never sends it again
    (``send_attempts`` 1, and one paper order per order row).

    With ``killed_at`` (a batch: its crash point is reached once all its sends have been
    answered, refusals and errors included), an order whose paper placement is younger than
    the kill was not placed by the killed worker: the restarted one rightly sends it once
    more (``send_attempts`` 2 when the killed worker had counted its send). Returns when
    each paper order was placed."""
    rows = orders(db_url, pid)
    assert not set(posts_by_client_id(fake)) & {o["client_order_id"] for o in rows}
    fills = trades(db_url, pid)
    assert sorted(t["order_id"] for t in fills) == sorted(o["id"] for o in rows)
    with psycopg.connect(db_url) as conn:
        paper = conn.execute(
            "SELECT client_order_id, status, created_at FROM paper_orders"
            " WHERE client_order_id = ANY(%s) ORDER BY client_order_id",
            ([o["client_order_id"] for o in rows],),
        ).fetchall()
    assert [p[:2] for p in paper] == sorted((o["client_order_id"], "FILLED") for o in rows)
    placed_at = {p[0]: p[2] for p in paper}
    for order in rows:
        assert order["status"] == "filled"
        assert order["filled_quantity"] == order["quantity"]
        after_kill = killed_at is not None and placed_at[order["client_order_id"]] > killed_at
        # past "<purpose>.committed", the killed worker had counted its sends
        # (exec_bump_sends); before it, the orders were never sent
        counted = point.split(".")[1] not in ("committed", "protection_cancelled")
        want = 2 if after_kill and counted else 1
        assert order["send_attempts"] == want, (order["purpose"], point, after_kill)
    return list(placed_at.values())


def _killed_at(log: Path) -> datetime:
    """When the worker logging to ``log`` reached its crash point (it is killed there)."""
    for line in log.read_text().splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("event") == "crash_point_reached":
            return datetime.fromisoformat(entry["timestamp"])
    raise AssertionError(f"{log} never reached its crash point")


# -- three workers on one database, one of them killed between send and record ---------------


async def test_three_workers_one_killed_between_send_and_record_every_position_converges(
    db_url: str, redis_url: str, fake: FakeBinance, tmp_path: Path
) -> None:
    """Three worker processes drive live and paper positions at once; the one armed with
    ``entry.sent`` dies -9 the first time it has sent an entry and not recorded it, while
    the other two keep running. Positions come in waves of six (four live, two paper)
    until it has died (the pipeline spreads events one at a time over the three, so the
    first wave almost always reaches it). Every position then opens with its protection,
    and closes on an exit requested for all of them, with one exchange order per intent."""
    env = live_env(db_url, redis_url, fake, batch_size=1)
    armed = armed_worker({**env, CRASH_AT: "entry.sent"}, tmp_path / "armed.log")
    others = [WorkerProcess(env, tmp_path / f"worker{i}.log") for i in (1, 2)]
    fleet = [armed, *others]
    pids: dict[uuid.UUID, bool] = {}  # position -> is paper
    try:
        async with anyio.create_task_group() as tg:
            for worker in fleet:
                tg.start_soon(_start_in_a_thread, worker)
        for _ in range(6):
            for paper in (False, False, False, False, True, True):
                pids[new_position(db_url, **(PAPER if paper else LIVE))[1]] = paper
            await eventually(
                lambda: _exited(armed) or _all(db_url, fake, pids, "entry"),
                timeout=30,
            )
            if _exited(armed):
                break
        assert armed.wait(5) == -signal.SIGKILL
        assert any('"point": "entry.sent"' in line for line in armed.lines)
        assert not any(_exited(w) for w in others), "the other two keep running"
        await _converge(db_url, fake, pids, "entry", *others)
        fake.set_price("BTCUSDT", "120")
        for pid in pids:
            call(db_url, "SELECT request_position_exit(%s)", pid)
        await _converge(db_url, fake, pids, "exit", *others)
        assert not any(_exited(w) for w in others)
    finally:
        for worker in fleet:
            worker.kill()
    for pid, paper in pids.items():
        _assert_figures(db_url, pid, _outcome("exit", paper))
        if not paper:
            assert_matches_exchange(db_url, fake, pid)
            continue
        fills = trades(db_url, pid)
        rows = orders(db_url, pid)
        assert sorted(t["order_id"] for t in fills) == sorted(o["id"] for o in rows)
        assert all(o["status"] == "filled" and o["send_attempts"] in (1, 2) for o in rows)
    assert set(posts_by_client_id(fake).values()) == {1}
    assert not [o for o in fake.orders() if o["status"] in ("NEW", "PARTIALLY_FILLED")]


async def _start_in_a_thread(worker: WorkerProcess) -> None:
    await anyio.to_thread.run_sync(worker.start)


def _exited(worker: WorkerProcess) -> bool:
    """The started worker's process has ended."""
    assert worker.process is not None, "the worker was never started"
    return worker.process.poll() is not None


def _all(db_url: str, fake: FakeBinance, pids: dict[uuid.UUID, bool], flow: str) -> bool:
    return all(
        _converged(db_url, fake, pid, _outcome(flow, paper), paper) for pid, paper in pids.items()
    )


def _outcome(flow: str, paper: bool) -> Outcome:
    return PAPER_OUTCOMES[flow] if paper else OUTCOMES[flow]
