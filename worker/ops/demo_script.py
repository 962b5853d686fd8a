"""The demo's session: what a user (and, until execution lands, the exchange side) does."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import anyio
import psycopg
from psycopg.rows import dict_row

SEED = """
INSERT INTO auth.users (id, email) VALUES (%(user)s, 'demo@example.com');
INSERT INTO traders (id, user_id, name) VALUES (%(trader)s, %(user)s, 'demo trader');
INSERT INTO signals (id, user_id, trader_id, symbol, status)
  VALUES (%(signal)s, %(user)s, %(trader)s, 'BTCUSDT', 'active');
"""


class DemoSession:
    def __init__(self, db_url: str, say: Callable[[str], None]) -> None:
        self.db_url, self.say = db_url, say
        self.ids = {"user": uuid.uuid4(), "trader": uuid.uuid4(), "signal": uuid.uuid4()}

    async def run(self) -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(self.db_url, autocommit=True) as conn:
            for statement in SEED.strip().split(";\n"):
                await conn.execute(statement.strip().rstrip(";").encode(), self.ids)
            long_id = await self._open(conn, "long", Decimal("0.5"), Decimal("105"))
            short_id = await self._open(conn, "short", Decimal("2"), Decimal("3000"), "ETHUSDT")
            await self._wait_status(conn, long_id, "monitoring")
            await self._close(conn, long_id, Decimal("120"), Decimal("5.91"))
            await self._fail(conn, short_id)
            await anyio.sleep(0.5)  # let the last entries reach the screen
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute("SELECT * FROM positions ORDER BY created_at")
            return await cur.fetchall()

    async def _open(
        self, conn: Any, side: str, qty: Decimal, price: Decimal, symbol: str = "BTCUSDT"
    ) -> uuid.UUID:
        pid = uuid.uuid4()
        self.say(f"user opens a {side} {qty} {symbol} position")
        await conn.execute(
            "INSERT INTO positions (id, user_id, trader_id, signal_id, symbol, side, status,"
            " requested_quantity) VALUES (%s, %s, %s, %s, %s, %s, 'created', %s)",
            (pid, self.ids["user"], self.ids["trader"], self.ids["signal"], symbol, side, qty),
        )
        await conn.execute("UPDATE positions SET status = 'submitting' WHERE id = %s", (pid,))
        await conn.execute(
            "UPDATE positions SET status = 'open', entry_price = %s, entry_quantity = %s,"
            " entry_value = %s, held_quantity = %s, entry_time = now() WHERE id = %s",
            (price, qty, price * qty, qty, pid),
        )
        return pid

    async def _wait_status(self, conn: Any, pid: uuid.UUID, status: str) -> None:
        with anyio.fail_after(15):
            while True:
                cur = await conn.execute("SELECT status FROM positions WHERE id = %s", (pid,))
                row = await cur.fetchone()
                if row and row[0] == status:
                    return
                await anyio.sleep(0.05)

    async def _close(self, conn: Any, pid: uuid.UUID, price: Decimal, pnl: Decimal) -> None:
        self.say("the exit order fills")
        await conn.execute("UPDATE positions SET status = 'closing' WHERE id = %s", (pid,))
        await conn.execute(
            "UPDATE positions SET status = 'closed', exit_price = %s, exit_quantity ="
            " entry_quantity, exit_value = %s * entry_quantity, realized_pnl = %s,"
            " exit_time = now(), held_quantity = 0 WHERE id = %s",
            (price, price, pnl, pid),
        )

    async def _fail(self, conn: Any, pid: uuid.UUID) -> None:
        self.say("the short's exit is rejected while closing; the position goes back to open")
        await conn.execute("UPDATE positions SET status = 'closing' WHERE id = %s", (pid,))
        await conn.execute(
            "UPDATE positions SET status = 'open', failure_reason = 'exit rejected: -2010"
            " insufficient balance' WHERE id = %s",
            (pid,),
        )

    @staticmethod
    def render_summary(rows: list[dict[str, Any]]) -> str:
        head = f"{'position':<10}{'symbol':<9}{'side':<6}{'status':<12}{'entry':>12}{'exit':>12}"
        head += f"{'qty':>10}{'PnL':>12}"
        lines = ["Summary", head]
        for r in rows:
            lines.append(
                f"{str(r['id'])[:8]:<10}{r['symbol']:<9}{r['side']:<6}{r['status']:<12}"
                f"{_d(r['entry_price']):>12}{_d(r['exit_price']):>12}"
                f"{_d(r['entry_quantity']):>10}{_d(r['realized_pnl']):>12}"
            )
        return "\n".join(lines)


def _d(value: Decimal | None) -> str:
    return "-" if value is None else f"{value.normalize():f}"
