"""The demo's session: a user trading on the paper exchange, prices scripted by the demo.

Every figure is hand-computable (fee 0.1 % in USDT, no slippage):

* long BTCUSDT 0.5 @ 100, scale-in 0.5 @ 110, partial exit 0.4 @ 120, exit 0.6 @ 90:
  the accounting worked example, realized -3.207 USDT (-3.0512 %), fees 0.207;
* short ETHUSDT 2 @ 3000 with take-profit 2700, price falls to 2690: +608.62 (10.1335 %);
* long SOLUSDT 10 @ 150 with stop-loss 140, price falls to 138: -122.88 (-8.1838 %);
* short BNBUSDT 1: the user holds no BNB to sell; the exchange refuses the entry (-2010,
  insufficient balance): failed.

The user's paper account starts with 10,000 USDT and 2 ETH (``DEMO_BALANCES``) and ends with
10,000 - 3.207 + 608.62 - 122.88 = 10,482.533 USDT and its 2 ETH.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import anyio
import psycopg
from psycopg.rows import dict_row

from worker.exchanges.paper import PaperExchange
from worker.exchanges.prices import SyntheticPrices

SEED = (
    "INSERT INTO auth.users (id, email) VALUES (%(user)s, 'demo@example.com')",
    "INSERT INTO traders (id, user_id, name) VALUES (%(trader)s, %(user)s, 'demo trader')",
    "INSERT INTO signals (id, user_id, trader_id, symbol, status)"
    " VALUES (%(signal)s, %(user)s, %(trader)s, 'BTCUSDT', 'active')",
)
D = Decimal
DEMO_BALANCES = {"USDT": D("10000"), "ETH": D("2")}  # no BNB: the BNB short is refused


class DemoSession:
    def __init__(
        self, db_url: str, paper: PaperExchange, feed: SyntheticPrices, say: Callable[[str], None]
    ) -> None:
        self.db_url, self.paper, self.feed, self.say = db_url, paper, feed, say
        self.ids = {"user": uuid.uuid4(), "trader": uuid.uuid4(), "signal": uuid.uuid4()}
        self.conn: Any = None
        self.balances: list[dict[str, Any]] = []

    async def run(self) -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(self.db_url, autocommit=True) as conn:
            self.conn = conn
            for statement in SEED:
                await conn.execute(statement, self.ids)
            with anyio.fail_after(45):
                await self._worked_example()
                await self._closed_by_protection(
                    "short", "ETHUSDT", "2", "3000", "2690", take_profit="2700"
                )
                await self._closed_by_protection(
                    "long", "SOLUSDT", "10", "150", "138", stop_loss="140"
                )
                await self._rejected_entry()
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT asset, free, locked FROM paper_balances WHERE user_id = %s ORDER BY asset",
                (self.ids["user"],),
            )
            self.balances = await cur.fetchall()
            await cur.execute("SELECT * FROM positions ORDER BY created_at")
            return await cur.fetchall()

    async def _worked_example(self) -> None:
        self.price("BTCUSDT", "100")
        pid = await self.open("long", "BTCUSDT", "0.5")
        await self.wait(pid, status="monitoring")
        self.price("BTCUSDT", "110")
        self.say("user scales in: +0.5 BTC")
        await self.sql("SELECT request_position_scale_in(%s, 0.5)", pid)
        await self.wait(pid, held="1")
        self.price("BTCUSDT", "120")
        self.say("user takes partial profit: sells 0.4 BTC")
        await self.sql("SELECT request_position_exit(%s, 0.4)", pid)
        await self.wait(pid, held="0.6")
        self.price("BTCUSDT", "90")
        self.say("user closes the rest")
        await self.sql("SELECT request_position_exit(%s)", pid)
        await self.wait(pid, status="closed")

    async def _closed_by_protection(
        self, side: str, symbol: str, qty: str, entry: str, then: str, **protection: str
    ) -> None:
        """A position opened at ``entry`` with a ``stop_loss`` or ``take_profit`` that the
        price moving to ``then`` triggers."""
        self.price(symbol, entry)
        pid = await self.open(side, symbol, qty, **protection)
        await self.wait(pid, status="monitoring")
        self.price(symbol, then)
        await self.wait(pid, status="closed")

    async def _rejected_entry(self) -> None:
        self.price("BNBUSDT", "600")
        self.say("the user holds no BNB: a spot short has nothing to sell")
        pid = await self.open("short", "BNBUSDT", "1")
        await self.wait(pid, status="failed")

    def price(self, symbol: str, price: str) -> None:
        self.say(f"market: {symbol} {price}")
        self.feed.set(symbol, D(price))

    async def open(
        self, side: str, symbol: str, qty: str, *, stop_loss: str | None = None,
        take_profit: str | None = None,
    ) -> uuid.UUID:  # fmt: skip
        pid = uuid.uuid4()
        extra = "".join(f", {k} {v}" for k, v in (("stop-loss", stop_loss),
                        ("take-profit", take_profit)) if v)  # fmt: skip
        self.say(f"user opens a {side} {qty} {symbol} paper position{extra}")
        await self.conn.execute(
            "INSERT INTO positions (id, user_id, trader_id, signal_id, symbol, side, status,"
            " requested_quantity, stop_loss_price, take_profit_price, is_paper_trade)"
            " VALUES (%s, %s, %s, %s, %s, %s, 'created', %s, %s, %s, true)",
            (pid, self.ids["user"], self.ids["trader"], self.ids["signal"], symbol, side,
             D(qty), stop_loss and D(stop_loss), take_profit and D(take_profit)),
        )  # fmt: skip
        return pid

    async def sql(self, statement: str, *args: Any) -> None:
        await self.conn.execute(statement, args)

    async def wait(
        self, pid: uuid.UUID, *, status: str | None = None, held: str | None = None
    ) -> None:
        while True:
            cur = await self.conn.execute(
                "SELECT status, held_quantity FROM positions WHERE id = %s", (pid,)
            )
            now_status, now_held = await cur.fetchone()
            if (status is None or now_status == status) and (held is None or now_held == D(held)):
                return
            await anyio.sleep(0.05)

    def render_balances(self) -> str:
        held = ", ".join(f"{_d(r['free'] + r['locked'])} {r['asset']}" for r in self.balances
                         if r["free"] + r["locked"])  # fmt: skip
        return f"Paper balances of the demo user: {held}"

    @staticmethod
    def render_summary(rows: list[dict[str, Any]]) -> str:
        head = (f"{'position':<10}{'symbol':<9}{'side':<6}{'status':<8}{'entry':>9}{'exit':>9}"
                f"{'qty':>6}{'fees':>9}{'PnL':>10}{'PnL %':>9}  note")  # fmt: skip
        lines = ["Summary (USDT)", head, "-" * len(head)]
        for r in rows:
            note = r["close_reason"] or r["failure_reason"] or ""
            lines.append(
                f"{str(r['id'])[:8]:<10}{r['symbol']:<9}{r['side']:<6}{r['status']:<8}"
                f"{_d(r['entry_price']):>9}{_d(r['exit_price']):>9}{_d(r['entry_quantity']):>6}"
                f"{_d(r['fees_paid']):>9}{_d(r['realized_pnl']):>10}"
                f"{_d(r['realized_pnl_percent']):>9}  {note}"
            )
        return "\n".join(lines)


def _d(value: Decimal | None) -> str:
    return "-" if value is None else f"{value.normalize():f}"
