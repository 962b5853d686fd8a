"""The paper exchange's orders and balances in PostgreSQL (``paper_orders``,
``paper_balances``; queries in ``paper.sql``): every replica shares one book.

* Placing is one transaction: the account's first balances (``paper.starting_balances``,
  once), the balance changes (a change that overdraws fails the table's CHECK:
  ``OrderRejected(-2010)``, nothing recorded), the order row (a client id already open for
  the account fails the partial unique index: ``DuplicateOrder``).
* A matching pass is one transaction that claims the symbol's open orders with
  ``FOR UPDATE SKIP LOCKED``: orders another replica is filling are skipped, never filled
  twice; each order's save is a savepoint, so an account that cannot pay one order's fill
  leaves the others' saves standing.
* Balance rows are locked by account, then asset, by every transaction (placements, and a
  pass before its first save): two of them never each hold a row the other waits for.
* A placement that PostgreSQL rolls back for a conflict with a concurrent transaction (a
  deadlock, should one ever form) is run again (``conflicts_retried``, logged as
  ``paper_conflict_retried``); one that keeps conflicting is ``Conflict``, which counts as
  the event's failure, never as an outage.
* Connection trouble is ``DatabaseUnavailable`` (the engine waits for the database).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from worker.db.queries import q
from worker.driver_errors import conflicts_retried, translated_errors
from worker.errors import Conflict
from worker.exchanges.base import DuplicateOrder, ExchangeFill, OrderRejected, OrderRequest
from worker.exchanges.paper_book import PaperOrder, Quote
from worker.exchanges.paper_funds import Balance, Changes, Hold, insufficient_balance
from worker.exchanges.paper_store import Claim, Placing, Resting
from worker.logs import get_logger

Conn = psycopg.AsyncConnection[Any]


class PgPaperStore:
    """``pool``: the worker's pool (its role owns the tables); ``starting``: every account's
    first balances."""

    def __init__(self, pool: AsyncConnectionPool[Any], starting: Mapping[str, Decimal]) -> None:
        self.pool, self.starting = pool, dict(starting)
        self._seeded: set[str] = set()  # accounts whose first balances are committed
        self.log = get_logger("worker.exchanges.paper")

    def new_order_id(self, prefix: str) -> str:
        return f"P{uuid.uuid4().hex[:24]}"  # unique across replicas without a round trip

    async def place(self, account: str | None, resting: Resting, changes: Changes) -> None:
        user_id = _account(account)
        await conflicts_retried(lambda: self._place(user_id, resting, changes), self._retried)
        self._seeded.add(user_id)  # bounded by the number of users

    async def _place(self, user_id: str, resting: Resting, changes: Changes) -> None:
        async with translated_errors(), self.pool.connection() as conn, conn.transaction():
            if user_id not in self._seeded:
                await conn.execute(
                    q("paper_seed_balances"),
                    {
                        "user_id": user_id,
                        "assets": list(self.starting),
                        "amounts": list(self.starting.values()),
                    },
                )
            await _change(conn, user_id, changes)
            try:
                await conn.execute(q("paper_insert_order"), _row(user_id, resting))
            except psycopg.errors.UniqueViolation:  # the transaction rolls back
                raise DuplicateOrder("Duplicate order sent.", -2010) from None

    async def place_many(self, items: Sequence[Placing]) -> list[Exception | None]:
        """Every order of ``items`` in one transaction; if that is refused (an account that
        cannot pay, a client id open already: the whole statement fails), each one placed
        in its own (:meth:`place`), so the refusal is only its own order's."""
        rows = [(_account(account), resting, changes) for account, resting, changes in items]
        try:
            await conflicts_retried(lambda: self._place_all(rows), self._retried)
        except (OrderRejected, DuplicateOrder):
            results: list[Exception | None] = []
            for account, resting, changes in rows:
                try:
                    await self.place(account, resting, changes)
                    results.append(None)
                except (OrderRejected, DuplicateOrder) as exc:
                    results.append(exc)
            return results
        self._seeded.update(user_id for user_id, _, _ in rows)
        return [None] * len(rows)

    def _retried(self, exc: Conflict, attempt: int) -> None:
        self.log.warning("paper_conflict_retried", error=str(exc), attempt=attempt)

    async def _place_all(self, rows: list[tuple[str, Resting, Changes]]) -> None:
        async with translated_errors(), self.pool.connection() as conn, conn.transaction():
            await self._insert_all(conn, rows)

    async def _insert_all(self, conn: Conn, rows: list[tuple[str, Resting, Changes]]) -> None:
        unseeded = sorted({user_id for user_id, _, _ in rows} - self._seeded)
        if unseeded:
            starting = {"assets": list(self.starting), "amounts": list(self.starting.values())}
            await conn.execute(q("paper_seed_balances_many"), {"user_ids": unseeded, **starting})
        totals: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}
        for user_id, _, changes in rows:
            for asset, (free, locked) in changes.items():
                if not (free or locked):
                    continue
                was = totals.get((user_id, asset), (Decimal(0), Decimal(0)))
                totals[(user_id, asset)] = (was[0] + free, was[1] + locked)
        await _apply(conn, totals)
        columns: dict[str, list[Any]] = {}
        for user_id, resting, _ in rows:
            for key, value in _row(user_id, resting).items():
                columns.setdefault(key, []).append(value)
        try:
            await conn.execute(q("paper_insert_orders"), columns)
        except psycopg.errors.UniqueViolation:
            raise DuplicateOrder("Duplicate order sent.", -2010) from None

    async def accounts_with_open(self, symbol: str, accounts: Sequence[str]) -> set[str]:
        async with translated_errors(), self.pool.connection() as conn:
            params = {"symbol": symbol, "user_ids": list(accounts)}
            cur = await conn.execute(q("paper_accounts_with_open"), params)
            return {row[0] for row in await cur.fetchall()}

    async def latest(
        self, account: str | None, symbol: str, client_order_id: str
    ) -> PaperOrder | None:
        params = {"user_id": account, "symbol": symbol, "client_order_id": client_order_id}
        row = await self._one("paper_latest_order", params)
        return _resting(row).order if row is not None else None

    async def by_id(self, account: str | None, exchange_order_id: str) -> PaperOrder | None:
        row = await self._one("paper_order_by_id", {"user_id": account, "id": exchange_order_id})
        return _resting(row).order if row is not None else None

    async def open_orders(self, account: str | None, symbol: str | None) -> list[PaperOrder]:
        async with translated_errors(), self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(q("paper_open_orders"), {"user_id": account, "symbol": symbol})
            return [_resting(row).order for row in await cur.fetchall()]

    async def open_symbols(self) -> list[str]:
        async with translated_errors(), self.pool.connection() as conn:
            cur = await conn.execute(q("paper_open_symbols"))
            return [row[0] for row in await cur.fetchall()]

    def claim(
        self,
        account: str | None,
        symbol: str,
        client_order_id: str | None = None,
        *,
        quote: Quote | None = None,
    ) -> AbstractAsyncContextManager[Claim]:
        return self._claim(account, symbol, client_order_id, quote)

    @asynccontextmanager
    async def _claim(
        self, account: str | None, symbol: str, client_order_id: str | None, quote: Quote | None
    ) -> AsyncIterator[Claim]:
        params = {
            "user_id": account,
            "symbol": symbol,
            "client_order_id": client_order_id,
            # the orders the quote may change (paper_book.moved_by); None: every one
            "bid": quote.bid if quote is not None else None,
            "ask": quote.ask if quote is not None else None,
            "last": quote.last if quote is not None else None,
        }
        async with translated_errors(), self.pool.connection() as conn:
            cur = await conn.execute(q("paper_any_open"), params)
            if (await cur.fetchone()) is None:  # the common case: one statement, no transaction
                yield _PgClaim(conn, [], [])
                return
        async with translated_errors(), self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            name = "paper_claim_orders" if client_order_id is None else "paper_claim_client_order"
            await cur.execute(q(name), params)
            rows = await cur.fetchall()
            owners = [str(r["user_id"]) for r in rows]
            if rows:  # the saves change the owners' balances one by one, in the book's order
                await conn.execute(q("paper_lock_balances_of"), {"user_ids": sorted(set(owners))})
            yield _PgClaim(conn, [_resting(row) for row in rows], owners)

    async def balances(self, account: str) -> dict[str, Balance]:
        async with translated_errors(), self.pool.connection() as conn:
            cur = await conn.execute(q("paper_balances_of"), {"user_id": _account(account)})
            found = {asset: (free, locked) for asset, free, locked in await cur.fetchall()}
        # an account that never placed an order starts with the starting balances
        return found or {asset: (amount, Decimal(0)) for asset, amount in self.starting.items()}

    async def _one(self, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
        async with translated_errors(), self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(q(name), params)
            row: dict[str, Any] | None = await cur.fetchone()
            return row


class _PgClaim:
    def __init__(self, conn: Conn, orders: list[Resting], owners: list[str]) -> None:
        self.conn, self.orders = conn, orders
        self._owners = {r.order.exchange_order_id: o for r, o in zip(orders, owners, strict=True)}

    async def save(self, resting: Resting, changes: Changes) -> bool:
        user_id = self._owners[resting.order.exchange_order_id]
        try:
            async with self.conn.transaction():  # a savepoint
                await _change(self.conn, user_id, changes)
                await self.conn.execute(q("paper_update_order"), _row(user_id, resting))
        except OrderRejected:  # the account cannot pay: this order's save is rolled back
            return False
        return True


async def _change(conn: Conn, user_id: str, changes: Changes) -> None:
    """Apply ``changes`` to the account; OrderRejected(-2010) when one overdraws."""
    await _apply(conn, {(user_id, a): (f, lk) for a, (f, lk) in changes.items() if f or lk})


async def _apply(conn: Conn, changes: Mapping[tuple[str, str], tuple[Decimal, Decimal]]) -> None:
    """Apply (free, locked) changes per (account, asset); OrderRejected(-2010) when one
    overdraws (the caller's transaction or savepoint rolls back)."""
    keys = sorted(changes)
    if not keys:
        return
    pairs = {"user_ids": [u for u, _ in keys], "assets": [a for _, a in keys]}
    await conn.execute(q("paper_touch_balances"), pairs)
    amounts = {"free": [changes[k][0] for k in keys], "locked": [changes[k][1] for k in keys]}
    try:
        await conn.execute(q("paper_change_balances"), {**pairs, **amounts})
    except psycopg.errors.CheckViolation:
        raise insufficient_balance() from None


def _account(account: str | None) -> str:
    if account is None:
        raise ValueError("the PostgreSQL paper store keeps orders per account (a user id)")
    return account


def _row(user_id: str, resting: Resting) -> dict[str, Any]:
    order, req = resting.order, resting.order.req
    return {
        "id": order.exchange_order_id,
        "user_id": user_id,
        "symbol": order.symbol,
        "client_order_id": req.client_order_id,
        "side": order.side,
        "type": req.type,
        "quote_quantity": req.quote_quantity,
        "quantity": order.quantity,
        "price": order.price,
        "stop_price": order.stop_price,
        "status": order.status,
        "triggered": order.triggered,
        "hold_asset": resting.hold.asset,
        "locked": resting.hold.amount,
        "fills": Jsonb([_fill_json(f) for f in order.fills]),
        "time_ms": order.time_ms,
        "update_ms": order.update_ms,
    }


def _fill_json(fill: ExchangeFill) -> dict[str, Any]:
    return {
        "trade_id": fill.trade_id,
        "price": str(fill.price),
        "qty": str(fill.qty),
        "commission": str(fill.commission),
        "commission_asset": fill.commission_asset,
        "time_ms": fill.time_ms,
    }


def _resting(row: Mapping[str, Any]) -> Resting:
    fills = row["fills"] if not isinstance(row["fills"], str) else json.loads(row["fills"])
    by_quote = row["quote_quantity"] is not None
    req = OrderRequest(
        row["symbol"],
        row["side"],
        row["type"],
        row["client_order_id"],
        quantity=None if by_quote else row["quantity"],
        quote_quantity=row["quote_quantity"],
        price=row["price"],
        stop_price=row["stop_price"],
    )
    order = PaperOrder(
        req,
        row["id"],
        row["quantity"],
        row["price"],
        row["stop_price"],
        row["time_ms"],
        status=row["status"],
        triggered=row["triggered"],
        update_ms=row["update_ms"],
        fills=[
            ExchangeFill(
                f["trade_id"],
                Decimal(f["price"]),
                Decimal(f["qty"]),
                Decimal(f["commission"]),
                f["commission_asset"],
                int(f["time_ms"]),
            )
            for f in fills
        ],
    )
    return Resting(order, Hold(row["hold_asset"], row["locked"]))
