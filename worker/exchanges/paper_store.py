"""Where the paper exchange keeps its orders and balances: a small port, and its in-memory
adapter (one process; unit tests and the demo). PostgreSQL's is
:class:`worker.db.paper_store.PgPaperStore` (every replica shares it).

An *account* is the user id of the paper positions it trades (the exchange's view for that
user, :meth:`~worker.exchanges.paper.PaperExchange.for_account`); ``None`` is the exchange
itself: it places into one shared book, and reads and matches every account's orders.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Protocol

from worker.exchanges.base import DuplicateOrder, OrderRejected
from worker.exchanges.paper_book import PaperOrder, Quote, moved_by
from worker.exchanges.paper_funds import Balance, Changes, Hold, applied

KEEP_FINAL: Final = 1_000  # final orders the in-memory store still answers lookups for


@dataclass(frozen=True, slots=True)
class Resting:
    """An order as stored, with what it holds of its account's balance."""

    order: PaperOrder
    hold: Hold


# one order to place: its account, the order as it rests, its account's balance changes
Placing = tuple[str | None, Resting, Changes]


class Claim(Protocol):
    """Orders taken for matching: no other claim sees them until this one ends."""

    orders: list[Resting]

    async def save(self, resting: Resting, changes: Changes) -> bool:
        """Store the order as it is now with its balance ``changes``, atomically; False (and
        nothing stored) when its account cannot cover the changes."""
        ...


class PaperStore(Protocol):
    def new_order_id(self, prefix: str) -> str:
        """A new exchange order id, unique in this store (``prefix`` where it helps)."""
        ...

    async def place(self, account: str | None, resting: Resting, changes: Changes) -> None:
        """Record a new order with its balance changes, atomically, or nothing: DuplicateOrder
        (its client id is open already), OrderRejected(-2010) (the account cannot pay)."""
        ...

    async def place_many(self, items: Sequence[Placing]) -> list[Exception | None]:
        """:meth:`place` for many orders, of any accounts: each one's result (None: placed;
        else what :meth:`place` raised for it, and nothing of it recorded)."""
        ...

    async def accounts_with_open(self, symbol: str, accounts: Sequence[str]) -> set[str]:
        """Which of ``accounts`` have an order of ``symbol`` still resting."""
        ...

    async def latest(
        self, account: str | None, symbol: str, client_order_id: str
    ) -> PaperOrder | None: ...

    async def by_id(self, account: str | None, exchange_order_id: str) -> PaperOrder | None: ...

    async def open_orders(self, account: str | None, symbol: str | None) -> list[PaperOrder]:
        """Orders still resting, oldest first."""
        ...

    async def open_symbols(self) -> list[str]:
        """The symbols with an order still resting (any account's), in order."""
        ...

    def claim(
        self,
        account: str | None,
        symbol: str,
        client_order_id: str | None = None,
        *,
        quote: Quote | None = None,
    ) -> AbstractAsyncContextManager[Claim]:
        """The open orders of ``symbol`` (of one client id when given; only those ``quote``
        may change when given: :func:`~worker.exchanges.paper_book.moved_by`) no other claim
        holds, oldest first; with a client id, waits for another claim of it to end."""
        ...

    async def balances(self, account: str) -> dict[str, Balance]:
        """The account's (free, locked) per asset."""
        ...


class MemoryPaperStore:
    """One process's paper book. ``starting``: every account's first balances (None: balances
    are not kept and every order is paid for). Holds the open orders and the latest
    ``keep_final`` final ones: memory stays flat however many orders pass through."""

    def __init__(
        self, starting: Mapping[str, Decimal] | None = None, *, keep_final: int = KEEP_FINAL
    ) -> None:
        self.starting = dict(starting) if starting is not None else None
        self.keep_final = keep_final
        self._orders: dict[str, tuple[str, Resting]] = {}  # by exchange order id
        self._open: dict[str, dict[str, None]] = {}  # symbol -> open order ids, oldest first
        self._open_all: dict[str, None] = {}  # every open order id, oldest first
        self._final: OrderedDict[str, None] = OrderedDict()  # final order ids, oldest first
        self._by_client_id: dict[tuple[str, str, str], str] = {}  # the latest per client id
        self._balances: dict[str, dict[str, Balance]] = {}
        self._seq = itertools.count(1)

    def new_order_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._seq)}"

    async def place(self, account: str | None, resting: Resting, changes: Changes) -> None:
        key, order = account or "", resting.order
        if any(
            self._orders[i][0] == key
            and self._orders[i][1].order.req.client_order_id == order.req.client_order_id
            for i in self._open_all
        ):
            raise DuplicateOrder("Duplicate order sent.", -2010)
        self._pay(key, changes)
        self._by_client_id[(key, order.symbol, order.req.client_order_id)] = order.exchange_order_id
        self._store(key, resting)

    async def place_many(self, items: Sequence[Placing]) -> list[Exception | None]:
        results: list[Exception | None] = []
        for account, resting, changes in items:
            try:
                await self.place(account, resting, changes)
                results.append(None)
            except (OrderRejected, DuplicateOrder) as exc:
                results.append(exc)
        return results

    async def accounts_with_open(self, symbol: str, accounts: Sequence[str]) -> set[str]:
        return {a for a in accounts if self._resting(a, symbol)}

    async def latest(
        self, account: str | None, symbol: str, client_order_id: str
    ) -> PaperOrder | None:
        keys = [account or ""] if account is not None else self._accounts()
        for key in keys:
            order_id = self._by_client_id.get((key, symbol, client_order_id))
            if order_id is not None and order_id in self._orders:
                return self._orders[order_id][1].order
        return None

    async def by_id(self, account: str | None, exchange_order_id: str) -> PaperOrder | None:
        found = self._orders.get(exchange_order_id)
        if found is None or account not in (None, found[0]):
            return None
        return found[1].order

    async def open_orders(self, account: str | None, symbol: str | None) -> list[PaperOrder]:
        return [r.order for r in self._resting(account, symbol)]

    async def open_symbols(self) -> list[str]:
        return sorted(symbol for symbol, ids in self._open.items() if ids)

    @asynccontextmanager
    async def _claim(
        self, account: str | None, symbol: str, client_order_id: str | None, quote: Quote | None
    ) -> AsyncIterator[Claim]:
        orders = [
            r
            for r in self._resting(account, symbol)
            if client_order_id in (None, r.order.req.client_order_id)
            and (quote is None or moved_by(r.order, quote))
        ]
        yield _MemoryClaim(self, orders)

    def claim(
        self,
        account: str | None,
        symbol: str,
        client_order_id: str | None = None,
        *,
        quote: Quote | None = None,
    ) -> AbstractAsyncContextManager[Claim]:
        return self._claim(account, symbol, client_order_id, quote)

    async def balances(self, account: str) -> dict[str, Balance]:
        return dict(self._account_balances(account))

    # -- inside --------------------------------------------------------------------------------

    def save(self, resting: Resting, changes: Changes) -> bool:
        key = self._orders[resting.order.exchange_order_id][0]
        try:
            self._pay(key, changes)
        except OrderRejected:
            return False
        self._store(key, resting)
        return True

    def _pay(self, key: str, changes: Changes) -> None:
        if self.starting is not None:
            self._balances[key] = applied(self._account_balances(key), changes)

    def _account_balances(self, key: str) -> dict[str, Balance]:
        if self.starting is None:
            return {}
        if key not in self._balances:
            zero = Decimal(0)
            self._balances[key] = {a: (amount, zero) for a, amount in self.starting.items()}
        return self._balances[key]

    def _store(self, key: str, resting: Resting) -> None:
        order = resting.order
        order_id = order.exchange_order_id
        self._orders[order_id] = (key, resting)
        if order.is_open:
            self._open.setdefault(order.symbol, {})[order_id] = None
            self._open_all[order_id] = None
            return
        self._open.get(order.symbol, {}).pop(order_id, None)
        self._open_all.pop(order_id, None)
        self._final[order_id] = None
        while len(self._final) > self.keep_final:
            self._forget(self._final.popitem(last=False)[0])

    def _forget(self, order_id: str) -> None:
        key, resting = self._orders.pop(order_id)
        cid = (key, resting.order.symbol, resting.order.req.client_order_id)
        if self._by_client_id.get(cid) == order_id:
            del self._by_client_id[cid]

    def _resting(self, account: str | None, symbol: str | None) -> list[Resting]:
        ids = self._open_all if symbol is None else self._open.get(symbol, {})
        found = [self._orders[order_id] for order_id in ids]
        return [resting for key, resting in found if account is None or key == account]

    def _accounts(self) -> list[str]:
        return list(dict.fromkeys(key for key, _ in self._orders.values()))


class _MemoryClaim:
    def __init__(self, store: MemoryPaperStore, orders: list[Resting]) -> None:
        self.store, self.orders = store, orders

    async def save(self, resting: Resting, changes: Changes) -> bool:
        return self.store.save(resting, changes)
