"""Paper orders and balances in PostgreSQL (worker/db/paper_store.py), on a real database.

* Two "replicas" (two pools, two exchanges over one database) matching the same resting
  orders at once fill each exactly once, and move each balance once.
* An order the account cannot pay is refused as Binance refuses it (-2010 "Account has
  insufficient balance for requested action."), nothing recorded.
* A round trip leaves the balance at start - fees + PnL, exactly.
* A paper LIMIT entry placed by one worker process is filled by another after the first is
  killed (SIGKILL), and the user's balances match the position's figures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.execution_support import call, new_position, position, wait_held, wait_status
from tests.integration.test_execution_crash import live_env
from tests.support import seed_owner
from tests.waits import wait_until
from worker.db.paper_store import PgPaperStore
from worker.exchanges.base import DuplicateOrder, OrderRejected, OrderRequest
from worker.exchanges.paper import PaperExchange
from worker.exchanges.paper_book import PaperConfig, Quote, moved_by
from worker.exchanges.prices import FixedPrices
from worker.testing.fake_binance import FakeBinance
from worker.testing.processes import WorkerProcess

pytestmark = pytest.mark.anyio
D = Decimal
START = {"USDT": D("10000")}
T0 = 1_760_000_000_000


@asynccontextmanager
async def replica(
    db_url: str, feed: FixedPrices, name: str, starting: dict[str, Decimal] = START
) -> AsyncIterator[PaperExchange]:
    """One worker's paper exchange: its own pool over the shared database."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db_url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
    )
    await pool.open()
    try:
        yield PaperExchange(
            feed,
            clock=lambda: T0,
            config=PaperConfig(partial_fills=2),
            id_prefix=f"{name}-",
            store=PgPaperStore(pool, starting),
        )
    finally:
        await pool.close()


def new_user(db_url: str) -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return str(seed_owner(conn).user_id)


def rows(db_url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()


def balances(db_url: str, user: str) -> dict[str, tuple[Decimal, Decimal]]:
    found = rows(db_url, "SELECT asset, free, locked FROM paper_balances WHERE user_id = %s", user)
    return {asset: (free, locked) for asset, free, locked in found}


def limit_buy(cid: str, qty: str, price: str) -> OrderRequest:
    return OrderRequest("BTCUSDT", "buy", "limit", cid, D(qty), price=D(price))


async def test_two_replicas_matching_at_once_fill_each_resting_order_once(db_url: str) -> None:
    feed = FixedPrices({"BTCUSDT": D("100")})
    users = [new_user(db_url) for _ in range(3)]
    async with replica(db_url, feed, "A") as a, replica(db_url, feed, "B") as b:
        for user in users:
            for n in range(5):
                state = await a.for_account(user).place_order(limit_buy(f"o{n}", "0.1", "95"))
                assert state.status == "NEW"
        feed.set("BTCUSDT", D("94"))  # every order crosses: both replicas race to fill

        fills: list[Any] = []

        async def match(exchange: PaperExchange) -> None:
            fills.extend(await exchange.on_price_tick("BTCUSDT", D("94")))

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(match, a)
                tg.start_soon(match, b)

    assert len(fills) == 15 * 2  # each order once, in its 2 partial fills
    assert len({f.trade_id for f in fills}) == 30
    stored = rows(db_url, "SELECT status, jsonb_array_length(fills) FROM paper_orders")
    assert sorted(stored) == [("FILLED", 2)] * 15
    for user in users:  # 5 x 0.1 BTC at 95 (maker, 0.1 %): 47.5 USDT + 0.0475 fee, once
        assert balances(db_url, user) == {
            "USDT": (D("10000") - D("47.5") - D("0.0475"), D(0)),
            "BTC": (D("0.5"), D(0)),
        }


async def test_insufficient_balance_is_refused_with_2010_and_nothing_is_recorded(
    db_url: str,
) -> None:
    feed = FixedPrices({"BTCUSDT": D("100"), "ETHUSDT": D("3000")})
    user = new_user(db_url)
    async with replica(db_url, feed, "A", {"USDT": D("100")}) as paper:
        account = paper.for_account(user)
        too_big = [
            OrderRequest("BTCUSDT", "buy", "market", "m1", D("1")),  # 100 + fee > 100
            limit_buy("l1", "2", "60"),  # holds 120 + fee
            OrderRequest("ETHUSDT", "sell", "market", "s1", D("0.01")),  # holds no ETH
        ]
        for req in too_big:
            with pytest.raises(OrderRejected) as refused:
                await account.place_order(req)
            assert (refused.value.code, refused.value.msg) == (
                -2010,
                "Account has insufficient balance for requested action.",
            )
        assert rows(db_url, "SELECT count(*) FROM paper_orders") == [(0,)]
        assert balances(db_url, user) == {}  # not even the first balances
        assert await account.balances() == {"USDT": (D("100"), D(0))}
        # what fits is taken, and what it holds is no longer free for the next order
        await account.place_order(limit_buy("l2", "0.5", "99"))  # holds 49.5 + 0.0495
        with pytest.raises(OrderRejected, match="insufficient balance"):
            await account.place_order(limit_buy("l3", "0.51", "99"))
        with pytest.raises(DuplicateOrder):
            await account.place_order(limit_buy("l2", "0.06", "99"))
        assert await account.balances() == {"USDT": (D("50.4505"), D("49.5495"))}
        # the hold comes back whole when the order is cancelled
        await account.cancel_order("BTCUSDT", "l2")
        assert await account.balances() == {"USDT": (D("100"), D(0))}


async def test_a_round_trip_leaves_start_minus_fees_plus_pnl_exactly(db_url: str) -> None:
    feed = FixedPrices({"BTCUSDT": D("100")})
    user = new_user(db_url)
    async with replica(db_url, feed, "A") as paper:
        account = paper.for_account(user)
        buy = await account.place_order(OrderRequest("BTCUSDT", "buy", "market", "b", D("0.5")))
        feed.set("BTCUSDT", D("120"))
        sell = await account.place_order(OrderRequest("BTCUSDT", "sell", "market", "s", D("0.5")))
        assert (buy.status, sell.status) == ("FILLED", "FILLED")
        fees = sum(f.commission for f in (*buy.fills, *sell.fills))
        pnl = D("0.5") * (D("120") - D("100"))
        assert fees == D("0.05") + D("0.06")
        assert await account.balances() == {
            "USDT": (D("10000") - fees + pnl, D(0)),  # 10009.89
            "BTC": (D(0), D(0)),
        }
        # another user's account is untouched: balances are per user
        other = paper.for_account(new_user(db_url))
        assert await other.get_order("BTCUSDT", "b") is None
        assert await other.get_fills("BTCUSDT", buy.exchange_order_id) == []


async def test_a_paper_limit_entry_placed_by_one_worker_is_filled_by_another_after_a_kill(
    db_url: str, redis_url: str, fake: FakeBinance, tmp_path: Path
) -> None:
    env = live_env(db_url, redis_url, fake)  # paper prices: the fake's ticker
    fake.set_price("BTCUSDT", "100")
    owner, pid = new_position(db_url, quantity=D("0.5"), is_paper_trade=True, limit_price=D("95"))
    user = str(owner.user_id)
    first = WorkerProcess(env, tmp_path / "first.log").start()
    try:
        wait_until(
            lambda: rows(db_url, "SELECT status FROM paper_orders") == [("NEW",)], timeout=20
        )
    finally:
        first.kill()  # SIGKILL: the resting order lives on in PostgreSQL only
    # 0.5 x 95 + the largest fee (0.1 %) held for the order
    assert balances(db_url, user) == {"USDT": (D("9952.4525"), D("47.5475"))}
    fake.set_price("BTCUSDT", "94")
    second = WorkerProcess(env, tmp_path / "second.log").start()
    try:
        await wait_held(db_url, pid, "0.5", timeout=30)
        assert rows(db_url, "SELECT status FROM paper_orders") == [("FILLED",)]
        assert position(db_url, pid)["entry_price"] == D("95")  # a maker fill at its limit
        fake.set_price("BTCUSDT", "120")
        call(db_url, "SELECT request_position_exit(%s)", pid)
        await wait_status(db_url, pid, "closed", timeout=30)
    finally:
        second.kill()
    closed = position(db_url, pid)
    # the exit is a market sell at the fake's best bid, a tick under 120
    [(exit_price, exit_fee)] = rows(
        db_url,
        "SELECT price, fee FROM trades WHERE position_id = %s AND side = 'sell'",
        pid,
    )
    assert exit_price == D("119.99")
    assert exit_fee == D("0.5") * exit_price * D("0.001")
    assert closed["realized_pnl"] == (D("0.5") * exit_price - exit_fee - D("47.5") - D("0.0475"))
    assert balances(db_url, user) == {
        "USDT": (D("10000") + closed["realized_pnl"], D(0)),
        "BTC": (D(0), D(0)),
    }
    assert len(rows(db_url, "SELECT 1 FROM trades WHERE position_id = %s", pid)) == 2


async def test_two_worker_processes_fill_each_resting_paper_entry_once(
    db_url: str, redis_url: str, fake: FakeBinance, tmp_path: Path
) -> None:
    """Two replicas running at once, ten paper limit entries resting, then the price crosses
    them all: every entry fills exactly once (one paper order, its fills recorded once)."""
    env = {**live_env(db_url, redis_url, fake), "POSITION_WORKER__PAPER__PARTIAL_FILLS": "2"}
    fake.set_price("BTCUSDT", "100")
    pids = [
        new_position(db_url, quantity=D("0.5"), is_paper_trade=True, limit_price=D("95"))[1]
        for _ in range(10)
    ]
    workers = [WorkerProcess(env, tmp_path / f"w{n}.log").start() for n in range(2)]
    try:
        wait_until(
            lambda: (
                rows(db_url, "SELECT count(*) FROM paper_orders WHERE status = 'NEW'") == [(10,)]
            ),
            timeout=30,
        )
        fake.set_price("BTCUSDT", "94")
        for pid in pids:
            await wait_held(db_url, pid, "0.5", timeout=30)
    finally:
        for worker in workers:
            worker.kill()
    assert (
        rows(db_url, "SELECT status, jsonb_array_length(fills) FROM paper_orders")
        == [("FILLED", 2)] * 10
    )
    for pid in pids:
        assert len(rows(db_url, "SELECT 1 FROM trades WHERE position_id = %s", pid)) == 2
        assert position(db_url, pid)["entry_price"] == D("95")


async def test_orders_placed_together_are_answered_and_recorded_as_one_by_one(
    db_url: str,
) -> None:
    """place_orders (a batch of entries): the same answers, balances and order rows as
    place_order one at a time; an order its account cannot pay (two of one user's that
    together overdraw) is refused alone with -2010, the others placed."""
    feed = FixedPrices({"BTCUSDT": D("100")})
    start = {"USDT": D("100")}
    shapes = [("m", "0.5"), ("m", "0.4"), ("l", "0.3")]  # per user: 50.05 + 40.04 + 30.03

    def requests(prefix: str) -> list[OrderRequest]:
        return [
            OrderRequest("BTCUSDT", "buy", "market", f"{prefix}{n}", D(qty))
            if kind == "m"
            else limit_buy(f"{prefix}{n}", qty, "101")
            for n, (kind, qty) in enumerate(shapes)
        ]

    together, alone = new_user(db_url), new_user(db_url)
    async with replica(db_url, feed, "A", start) as paper:
        batch = await paper.place_orders([(together, r) for r in requests("t")])
        single: list[Any] = []
        for r in requests("s"):
            try:
                single.append(await paper.for_account(alone).place_order(r))
            except OrderRejected as exc:
                single.append(exc)
    assert [type(a).__name__ for a in batch] == ["OrderState", "OrderState", "OrderRejected"]
    assert [type(a).__name__ for a in single] == [type(a).__name__ for a in batch]
    refused = batch[2]
    assert isinstance(refused, OrderRejected) and refused.code == -2010

    def shape(answer: Any) -> tuple[Any, ...]:
        if isinstance(answer, Exception):
            return (str(answer),)
        fills = [(f.price, f.qty, f.commission) for f in answer.fills]
        return (answer.status, answer.executed_qty, answer.cumulative_quote, fills)

    assert [shape(a) for a in batch] == [shape(a) for a in single]
    assert balances(db_url, together) == balances(db_url, alone)
    placed = "SELECT client_order_id, status, quantity, locked FROM paper_orders"
    mine = rows(db_url, placed + " WHERE user_id = %s ORDER BY client_order_id", together)
    theirs = rows(db_url, placed + " WHERE user_id = %s ORDER BY client_order_id", alone)
    assert [r[1:] for r in mine] == [r[1:] for r in theirs]
    assert [r[0] for r in mine] == ["t0", "t1"]


async def test_a_matching_pass_claims_exactly_the_orders_its_quote_moves(db_url: str) -> None:
    """worker/db/paper.sql's filter is paper_book.moved_by in SQL: for quotes below, around
    and above a book of resting limits and untriggered stops on both sides, the claim takes
    (and locks) exactly the open orders moved_by picks, and the symbols a pass reads are
    those with open orders."""
    feed = FixedPrices({"BTCUSDT": D("100"), "ETHUSDT": D("100")})
    user = new_user(db_url)
    start = {"USDT": D("100000"), "BTC": D("100"), "ETH": D("100")}
    book = [
        ("buy", "limit", "95", None), ("buy", "limit", "99", None),
        ("sell", "limit", "101", None), ("sell", "limit", "105", None),
        ("sell", "stop_loss", None, "97"), ("sell", "take_profit", None, "103"),
        ("buy", "stop_loss", None, "103"), ("buy", "take_profit", None, "97"),
        ("sell", "stop_loss", "96", "97"), ("buy", "stop_loss", "104", "103"),
    ]  # fmt: skip
    async with replica(db_url, feed, "A", start) as paper:
        account = paper.for_account(user)
        for n, (side, kind, price, stop) in enumerate(book):
            req = OrderRequest("BTCUSDT", side, kind, f"b{n}", D("0.5"),  # type: ignore[arg-type]
                               price=D(price) if price else None,
                               stop_price=D(stop) if stop else None)  # fmt: skip
            assert (await account.place_order(req)).status == "NEW"
        eth = OrderRequest("ETHUSDT", "buy", "limit", "e", D("1"), price=D("90"))
        await account.place_order(eth)
        store = paper.store
        assert await store.open_symbols() == ["BTCUSDT", "ETHUSDT"]
        resting = await store.open_orders(None, "BTCUSDT")
        assert len(resting) == len(book)
        picked = []
        for bid, ask, last in (
            ("99.5", "100.5", "100"), ("98.9", "99", "98"), ("94", "94.5", "94"),
            ("101", "101.1", "102"), ("106", "107", "106"), ("96.9", "103.1", "100"),
        ):  # fmt: skip
            quote = Quote(D(bid), D(ask), D(last))
            expected = {o.req.client_order_id for o in resting if moved_by(o, quote)}
            async with store.claim(None, "BTCUSDT", quote=quote) as claim:
                claimed = {r.order.req.client_order_id for r in claim.orders}
            assert claimed == expected, (bid, ask, last)
            picked.append(len(claimed))
        assert picked[0] == 0 and max(picked) >= 4  # a quote that moves nothing, and many
