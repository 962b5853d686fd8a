"""The paper exchange: the :class:`~worker.exchanges.base.Exchange` port, simulated.

For ``is_paper_trade`` positions. Prices come from a :class:`~worker.exchanges.base.PriceFeed`
(:mod:`worker.exchanges.prices`), times from an injected clock (epoch ms): a run is
deterministic for a given feed and clock. Behaves like Binance spot (and the tests' fake
Binance) where they overlap; the pure rules live in :mod:`worker.exchanges.paper_book`:

* **Symbols**: every symbol the listing has (:mod:`worker.exchanges.symbols`: Binance's
  exchangeInfo, cached, else the shipped snapshot), with its real filters.
* **The book**: the feed's best bid and ask (:func:`~worker.exchanges.prices.read_quote`; a
  feed with only a price is the mid of a book ``spread_bps`` wide).
* **Market** orders take the ask (buy) or the bid (sell), ``slippage_bps`` worse, as taker,
  walking the book past the touch's size (``depth_quote``); what the book or
  :meth:`PaperExchange.set_liquidity` leaves unfilled EXPIRES. By ``quote_quantity``: the
  quantity the quote buys at the first price, floored to stepSize.
* **Limit** orders that cross on arrival fill as taker from the touch (never beyond the
  limit); the others rest (NEW) and fill at their limit, as maker, once the touch crosses it.
* **stop_loss / take_profit** rest until the last price reaches ``stop_price`` (a sell
  stop-loss as it falls, a sell take-profit as it rises; buys the mirror), then fill as a
  market order, or as a limit with ``price``. One that would fire at once is rejected (-2010).
* **A stale feed** (no price heard for ``stale_after_ms``) holds new orders:
  ``PriceFeedStale``, an ExchangeError the engine retries on its next pass; open orders are
  not matched against a stale price.
* Matching runs on :meth:`PaperExchange.on_price_tick` (a price pushed in),
  :meth:`PaperExchange.poll` (the feed's price for every symbol with open orders), and at
  every port call on a symbol, which reads the feed first: a worker that looks at an order
  sees it filled if the market crossed it. A move that reverses between two looks is missed.
* Quantities are floored to stepSize and prices rounded to tickSize, then checked by
  :func:`~worker.exchanges.filters.check_order` (FilterViolation). Unknown symbol:
  ``OrderRejected(-1121)``. A client order id is unique among an account's *open* orders
  (DuplicateOrder, -2010); a final order's id may be re-used. :meth:`PaperExchange.reject_next`
  scripts a rejection. ``get_order`` answers without fills (see ``get_fills``), None for an id
  never seen; ``cancel_order`` of a final or unknown order: ``UnknownOrder(-2011)``.
* **Balances** per account (:meth:`PaperExchange.for_account`: one user's paper account):
  an order holds what it may spend and its fills move it (:mod:`worker.exchanges.paper_funds`);
  an order the account cannot pay is refused with -2010 "Account has insufficient balance
  for requested action.", nothing recorded. A resting order whose fill the account can no
  longer pay (a stop that gapped past its hold, a BNB fee with no BNB left) EXPIRES.
* Orders and balances live in a :class:`~worker.exchanges.paper_store.PaperStore`: in
  memory (one process, bounded) or PostgreSQL (:class:`worker.db.paper_store.PgPaperStore`:
  every replica sees the same book). A matching pass *claims* the open orders its quote
  moves (``paper_book.moved_by``: a stop it fires, a limit it crosses; in PostgreSQL their
  rows, FOR UPDATE SKIP LOCKED), so two replicas never fill one order twice, and a book of
  many resting orders costs a pass or a placement what the price moves, not what rests.

Over 300 lines on purpose: one adapter implementing the whole exchange port; its matching
lives in paper_book.py, its balance rules in paper_funds.py, its prices in prices.py.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Final, cast

import anyio
from anyio.abc import TaskStatus

from worker.exchanges.base import (
    ExchangeError,
    ExchangeFill,
    OcoRequest,
    OrderRejected,
    OrderRequest,
    OrderState,
    OrderType,
    PriceFeed,
    UnknownOrder,
)
from worker.exchanges.filters import SymbolRules
from worker.exchanges.market_stream import BinanceMarketStream
from worker.exchanges.paper_book import (
    Execution,
    FeeAsset,
    PaperConfig,
    PaperOrder,
    Quote,
    commission,
    match,
    new_order,
    split,
)
from worker.exchanges.paper_funds import (
    INSUFFICIENT_BALANCE,
    Balance,
    Changes,
    Hold,
    closing,
    hold_for,
    merge,
    opening,
    settle,
)
from worker.exchanges.paper_store import (
    Claim,
    MemoryPaperStore,
    PaperStore,
    Placing,
    Resting,
)
from worker.exchanges.prices import (
    BinancePublicPrices,
    PriceFeedStale,
    SyntheticPrices,
    read_quote,
)
from worker.exchanges.symbols import (
    RulesSource,
    StaticSymbols,
    SymbolSource,
    default_cache_dir,
)

if TYPE_CHECKING:
    from worker.settings import Settings

__all__ = ["PaperConfig", "PaperExchange", "from_settings"]

ClockMs = Callable[[], int]
# resting orders a match changed that take_moved still remembers (the reconcile pass takes
# them every pass; beyond this, the oldest are left to its listing)
MAX_MOVED: Final = 100_000


def wall_clock_ms() -> int:
    """Epoch milliseconds: the clock :func:`from_settings` injects when given none."""
    return time.time_ns() // 1_000_000


class PaperExchange:
    """A simulated spot exchange over ``feed`` (see the module notes for the matching rules).

    ``clock`` returns epoch ms (order and fill times); ``config`` sets fees, fee asset,
    slippage and partial fills; ``rules`` are the tradable symbols and their filters (a
    :class:`~worker.exchanges.symbols.SymbolSource`, a list, or by default the snapshot);
    ``id_prefix`` starts every exchange order id of the in-memory store (give each run its
    own if its ids must not collide with an earlier run's); an order's k-th fill has the
    trade id ``<order id>-<k>``; ``stale_after_ms``: a quote older than this holds new
    orders (0: never); ``store`` keeps the orders and the balances (default: a
    :class:`MemoryPaperStore` that keeps no balances).
    """

    def __init__(
        self,
        feed: PriceFeed,
        *,
        clock: ClockMs,
        config: PaperConfig | None = None,
        rules: Iterable[SymbolRules] | RulesSource | None = None,
        id_prefix: str = "",
        stale_after_ms: int = 0,
        store: PaperStore | None = None,
    ) -> None:
        self._feed, self._clock = feed, clock
        self.config = config or PaperConfig()
        # symbols and quotes (worker/exchanges/symbols.py, prices.py): 0 = never stale
        self._symbols = _rules_source(rules)
        self._stale_after_ms = stale_after_ms
        self._prefix = id_prefix
        self.store: PaperStore = store if store is not None else MemoryPaperStore()
        self.account: str | None = None  # None: the shared book (see paper_store.py)
        self._rejections: dict[str | None, deque[OrderRejected]] = {}
        self._liquidity: dict[str, Decimal] = {}
        # client order ids of the resting orders a match changed, until taken (take_moved)
        self._moved: dict[str, None] = {}

    def __repr__(self) -> str:
        return f"PaperExchange(feed={self._feed!r}, config={self.config!r})"

    @property
    def feed(self) -> PriceFeed:
        return self._feed

    def for_account(self, account: str) -> PaperExchange:
        """This exchange as one paper account sees it (a user id): its own balances and
        orders. Shares the feed, the store, the ids and the scripting with this one."""
        view = copy.copy(self)
        view.account = account
        return view

    async def balances(self) -> dict[str, Balance]:
        """The account's (free, locked) per asset (empty where the store keeps none)."""
        if self.account is None:
            raise ValueError("balances belong to an account: use for_account(user_id)")
        return await self.store.balances(self.account)

    # -- scripting (tests and the demo) ----------------------------------------------------------

    def reject_next(
        self, symbol: str | None = None, code: int = -2010, msg: str = INSUFFICIENT_BALANCE
    ) -> None:
        """The next order on ``symbol`` (any symbol when None) is refused with ``code``/``msg``:
        ``OrderRejected``, nothing recorded. Several calls queue several rejections."""
        self._rejections.setdefault(symbol, deque()).append(OrderRejected(code, msg))

    def set_liquidity(self, symbol: str, quantity: Decimal | None) -> None:
        """At most ``quantity`` of ``symbol`` fills per order per price event (None: no cap).

        A market order then fills partly and EXPIRES; a limit order stays PARTIALLY_FILLED."""
        if quantity is None:
            self._liquidity.pop(symbol, None)
        else:
            self._liquidity[symbol] = quantity

    async def open_orders(self, symbol: str | None = None) -> list[OrderState]:
        """Orders still resting (NEW or PARTIALLY_FILLED), oldest first."""
        return [o.state() for o in await self.store.open_orders(self.account, symbol)]

    # -- the Exchange port -----------------------------------------------------------------------

    async def place_order(self, req: OrderRequest) -> OrderState:
        """Validate, then fill what can fill now. The answer carries this call's fills."""
        rules = await self.symbol_rules(req.symbol)
        quote = await self._fresh_quote(rules)  # resting orders first see the market
        resting, changes, state = await self._new_resting(req, quote)
        # the store checks the client id and the balance, and records all or nothing
        await self.store.place(self.account, resting, changes)
        return state

    async def place_orders(
        self, orders: Sequence[tuple[str, OrderRequest]]
    ) -> list[OrderState | Exception]:
        """:meth:`place_order` for many accounts' orders, ``(account, request)``, each
        answered as it would have been (its state, or what it raised): each symbol's book
        read once, the resting orders on it of the accounts that have any matched first,
        and the orders recorded together (``PaperStore.place_many``)."""
        answers: list[OrderState | Exception] = [Exception("not placed")] * len(orders)
        placing: list[tuple[int, Placing, OrderState]] = []
        quotes = await self._batch_quotes(orders)
        for i, (account, req) in enumerate(orders):
            try:
                quote = quotes[req.symbol]
                if isinstance(quote, Exception):
                    raise quote
                resting, changes, state = await self._new_resting(req, quote)
            except ExchangeError as exc:
                answers[i] = exc
                continue
            placing.append((i, (account, resting, changes), state))
        results = await self.store.place_many([p for _, p, _ in placing])
        for (i, _, state), result in zip(placing, results, strict=True):
            answers[i] = state if result is None else result
        return answers

    async def _batch_quotes(
        self, orders: Sequence[tuple[str, OrderRequest]]
    ) -> dict[str, Quote | Exception]:
        """Each symbol's book now (or why it cannot be used), its resting orders of the
        placing accounts matched against it first (as :meth:`_fresh_quote` does)."""
        quotes: dict[str, Quote | Exception] = {}
        for symbol in dict.fromkeys(req.symbol for _, req in orders):
            try:
                rules = await self.symbol_rules(symbol)
                quote = await read_quote(self._feed, rules, self.config.spread_bps)
                age = self._age_ms(quote)
                if age is not None:
                    raise PriceFeedStale(symbol, age)
            except ExchangeError as exc:
                quotes[symbol] = exc
                continue
            accounts = list(dict.fromkeys(a for a, req in orders if req.symbol == symbol))
            for account in await self.store.accounts_with_open(symbol, accounts):
                await self.for_account(account).on_quote(symbol, quote)
            quotes[symbol] = quote
        return quotes

    async def _new_resting(
        self, req: OrderRequest, quote: Quote
    ) -> tuple[Resting, Changes, OrderState]:
        """A valid new order filled as far as ``quote`` fills it now (:meth:`place_order`'s
        rules): how it rests, its balance changes, and the answer."""
        rules = await self.symbol_rules(req.symbol)
        bnb_price = await self._bnb_price(rules)
        self._scripted_rejection(req.symbol)
        order = new_order(
            rules, req, quote, self.config, exchange_order_id="", now_ms=self._clock()
        )
        order.exchange_order_id = self.store.new_order_id(self._prefix)
        hold = hold_for(order, rules, self.config, quote.touch(order.side))
        fills = self._match(order, rules, quote, bnb_price, placing=True)
        changes, left = settle(order, rules, hold, fills)
        return Resting(order, left), merge(opening(hold), changes), order.state(fills)

    async def place_oco(self, req: OcoRequest) -> tuple[OrderState, ...]:
        """Both legs as two independent orders, each holding its own quantity: the paper
        exchange has no order lists (paper positions are protected by the watcher, which
        never sends protective orders; this keeps the port complete)."""
        legs: tuple[tuple[OrderType, str, Decimal], ...] = (
            ("stop_loss", req.stop_client_order_id, req.stop_price),
            ("take_profit", req.take_profit_client_order_id, req.take_profit_price),
        )
        return tuple(
            [
                await self.place_order(
                    OrderRequest(req.symbol, req.side, kind, cid, req.quantity, stop_price=stop)
                )
                for kind, cid, stop in legs
            ]
        )

    async def get_order(self, symbol: str, client_order_id: str) -> OrderState | None:
        await self._sync(symbol)
        order = await self.store.latest(self.account, symbol, client_order_id)
        return order.state() if order is not None else None

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState:
        await self._sync(symbol)
        async with self.store.claim(self.account, symbol, client_order_id) as claim:
            for resting in claim.orders:
                order = replace(resting.order, fills=list(resting.order.fills))
                order.status, order.update_ms = "CANCELED", self._clock()
                await claim.save(Resting(order, _emptied(resting.hold)), closing(resting.hold))
                return order.state()
        raise UnknownOrder(-2011, "Unknown order sent.")

    async def get_fills(
        self, symbol: str, exchange_order_id: str, *, after: str | None = None
    ) -> list[ExchangeFill]:
        """Every fill of the order (``after`` is not needed: they are stored with it)."""
        await self._sync(symbol)
        order = await self.store.by_id(self.account, exchange_order_id)
        return list(order.fills) if order is not None and order.symbol == symbol else []

    async def symbol_rules(self, symbol: str) -> SymbolRules:
        return await self._symbols.rules(symbol)

    async def price(self, symbol: str) -> Decimal:
        """The feed's last price of a listed ``symbol``; its open orders are matched against
        the book first (unless the feed is stale)."""
        rules = await self.symbol_rules(symbol)
        quote = await read_quote(self._feed, rules, self.config.spread_bps)
        if self._age_ms(quote) is None:
            await self.on_quote(symbol, quote)
        return quote.last

    async def keep_symbols(self) -> None:
        """Keep the symbols' rules loaded and fresh while this task runs
        (:meth:`SymbolSource.keep`), so no order waits for exchangeInfo; returns at once for
        a fixed list."""
        if isinstance(self._symbols, SymbolSource):
            await self._symbols.keep()

    async def run_feed(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the feed's connection (Binance market streams) while this task runs; returns
        at once for a feed without one (synthetic, fixed)."""
        if isinstance(self._feed, BinanceMarketStream):
            await self._feed.run(task_status=task_status)
        else:
            task_status.started()

    async def aclose(self) -> None:
        """Close the feed if it holds a connection (Binance public prices)."""
        if isinstance(self._feed, BinancePublicPrices | BinanceMarketStream):
            await self._feed.aclose()

    # -- matching --------------------------------------------------------------------------------

    async def on_price_tick(self, symbol: str, price: Decimal) -> list[ExchangeFill]:
        """``symbol`` trades at ``price`` (the mid of a book ``spread_bps`` wide): fill the
        open orders it triggers or crosses."""
        rules = await self.symbol_rules(symbol)
        return await self.on_quote(symbol, Quote.around(rules, price, self.config.spread_bps))

    async def on_quote(self, symbol: str, quote: Quote) -> list[ExchangeFill]:
        """``symbol``'s book is ``quote``: fill the open orders it triggers or crosses (those
        of this account, or of every account for the shared exchange), each one claimed."""
        rules = await self.symbol_rules(symbol)
        try:  # read before the claim: no I/O while it holds rows
            bnb_price, missing = await self._bnb_price(rules), None
        except OrderRejected as exc:  # matters only if an order fills
            bnb_price, missing = None, exc
        fills: list[ExchangeFill] = []
        async with self.store.claim(self.account, symbol, quote=quote) as claim:
            if claim.orders and missing is not None:
                raise missing
            for resting in claim.orders:
                fills += await self._fill(claim, resting, rules, quote, bnb_price)
        return fills

    async def _fill(
        self,
        claim: Claim,
        resting: Resting,
        rules: SymbolRules,
        quote: Quote,
        bnb_price: Decimal | None,
    ) -> list[ExchangeFill]:
        """Match one claimed order and save what changed; an order its account can no
        longer pay EXPIRES, releasing what it held."""
        order = replace(resting.order, fills=list(resting.order.fills))
        fills = self._match(order, rules, quote, bnb_price, placing=False)
        if order == resting.order:
            return []
        changes, left = settle(order, rules, resting.hold, fills)
        self._note_moved(order.req.client_order_id)
        if await claim.save(Resting(order, left), changes):
            return fills
        expired = replace(resting.order, fills=list(resting.order.fills), status="EXPIRED")
        expired.update_ms = self._clock()
        await claim.save(Resting(expired, _emptied(resting.hold)), closing(resting.hold))
        return []

    def _note_moved(self, client_order_id: str) -> None:
        """Remember an order a match changed, for :meth:`take_moved` (the oldest forgotten
        beyond ``MAX_MOVED``: nobody takes them, and the watcher's listing finds them)."""
        self._moved[client_order_id] = None
        if len(self._moved) > MAX_MOVED:
            del self._moved[next(iter(self._moved))]

    def take_moved(self) -> list[str]:
        """The client order ids of the resting orders that this process's matches changed
        (filled, fired, expired) since the last call, every account's; the reconcile pass
        drives them between two listings. Another process's matches are its own to take."""
        moved = list(self._moved)
        self._moved.clear()  # in place: every account's view shares it
        return moved

    async def poll(self) -> list[ExchangeFill]:
        """Read the feed for every symbol with open orders and match the orders it moves;
        the new fills.
        A symbol whose rules or price cannot be had now (delisted, the feed unreachable) is
        left for the next poll or its orders' own lookups; the others are matched."""
        fills: list[ExchangeFill] = []
        for symbol in await self._open_symbols():
            try:
                rules = await self.symbol_rules(symbol)
                quote = await read_quote(self._feed, rules, self.config.spread_bps)
            except ExchangeError:
                continue
            if self._age_ms(quote) is None:
                fills += await self.on_quote(symbol, quote)
        return fills

    async def _open_symbols(self) -> list[str]:
        """The symbols with open orders of this account (every account's: the shared
        exchange, which reads them without reading the orders)."""
        if self.account is None:
            return await self.store.open_symbols()
        return list(
            dict.fromkeys(o.symbol for o in await self.store.open_orders(self.account, None))
        )

    def _match(
        self,
        order: PaperOrder,
        rules: SymbolRules,
        quote: Quote,
        bnb_price: Decimal | None,
        *,
        placing: bool,
    ) -> list[ExchangeFill]:
        """paper_book.match's executions as fills; a market order's rest EXPIRES."""
        cap = self._liquidity.get(order.symbol)
        executions, expires = match(order, rules, quote, self.config, placing=placing, cap=cap)
        fills = self._execute(order, rules, executions, bnb_price)
        if expires and order.remaining > 0:
            order.status = "EXPIRED"
        return fills

    def _execute(
        self,
        order: PaperOrder,
        rules: SymbolRules,
        executions: list[Execution],
        bnb_price: Decimal | None,
    ) -> list[ExchangeFill]:
        """Each execution as ``partial_fills`` fills, with fees and trade ids."""
        now = self._clock()
        fills: list[ExchangeFill] = []
        for execution in executions:
            price = execution.price
            for part in split(rules, execution.quantity, self.config.partial_fills):
                fee, asset = commission(
                    self.config,
                    rules,
                    order.side,
                    price * part,
                    part,
                    maker=execution.maker,
                    bnb_price=bnb_price,
                )
                trade_id = f"{order.exchange_order_id}-{len(order.fills) + len(fills) + 1}"
                fills.append(ExchangeFill(trade_id, price, part, fee, asset, now))
        order.record(fills, now)
        return fills

    # -- quotes (worker/exchanges/prices.py) -----------------------------------------------------

    async def _fresh_quote(self, rules: SymbolRules) -> Quote:
        """The book now, matched against open orders; PriceFeedStale when it is too old."""
        quote = await read_quote(self._feed, rules, self.config.spread_bps)
        age = self._age_ms(quote)
        if age is not None:
            raise PriceFeedStale(rules.symbol, age)
        await self.on_quote(rules.symbol, quote)
        return quote

    def _age_ms(self, quote: Quote) -> int | None:
        """How old a stale quote is (None: fresh enough, or a feed that cannot go stale)."""
        if quote.time_ms is None or self._stale_after_ms <= 0:
            return None
        age = self._clock() - quote.time_ms
        return age if age > self._stale_after_ms else None

    # -- placing ---------------------------------------------------------------------------------

    def _scripted_rejection(self, symbol: str) -> None:
        for key in (symbol, None):
            queue = self._rejections.get(key)
            if queue:
                raise queue.popleft()

    async def _sync(self, symbol: str) -> None:
        """Match ``symbol``'s open orders at the feed's price now; -1121 if not tradable."""
        await self.price(symbol)

    async def _bnb_price(self, rules: SymbolRules) -> Decimal | None:
        """The BNB price in the symbol's quote, when fees are paid in BNB (else None)."""
        if self.config.fee_asset != "BNB" or rules.base_asset == "BNB":
            return None
        pair = f"BNB{rules.quote_asset}"
        try:
            return await self._feed.price(pair)
        except OrderRejected:
            raise OrderRejected(None, f"paper: fees in BNB need a {pair} price") from None


def _emptied(hold: Hold) -> Hold:
    return Hold(hold.asset, Decimal(0))


def from_settings(
    settings: Settings, *, clock: ClockMs = wall_clock_ms, store: PaperStore | None = None
) -> PaperExchange:
    """The paper exchange ``[paper]`` describes: every listed symbol (see
    :func:`symbols_from_settings`), a clock-driven synthetic feed or Binance's public market
    streams, the configured book, fees, fee asset, slippage and partial fills; its orders and
    balances in ``store`` (default: in memory, every account starting with
    ``paper.starting_balances``). In-memory order ids start with the build time, so a
    restarted worker never re-issues an earlier run's ids (PostgreSQL's are random). Nothing
    is read or fetched here."""
    paper = settings.paper
    symbols = symbols_from_settings(settings)
    feed: PriceFeed
    if paper.feed == "binance":
        feed = BinanceMarketStream(
            stream_url=paper.stream_url,
            base_url=settings.binance.base_url,
            timeout_s=min(settings.binance.timeout_seconds, 5.0),
            rest_after_ms=round(paper.rest_refresh_seconds * 1000),
            clock=clock,
        )
    else:
        feed = SyntheticPrices(
            seed=paper.seed,
            clock=clock,
            tick_ms=max(1, round(paper.tick_seconds * 1000)),
            symbols=symbols,
        )
    config = PaperConfig(
        taker_fee=paper.taker_fee,
        maker_fee=paper.maker_fee,
        fee_asset=cast(FeeAsset, paper.fee_asset),
        bnb_discount=paper.bnb_discount,
        slippage_bps=paper.slippage_bps,
        spread_bps=paper.spread_bps,
        depth_quote=paper.depth_quote,
        partial_fills=paper.partial_fills,
    )
    if store is None:
        store = MemoryPaperStore(paper.starting_balances)
    return PaperExchange(
        feed,
        clock=clock,
        config=config,
        rules=symbols,
        id_prefix=f"P{clock()}-",
        stale_after_ms=round(paper.stale_after_seconds * 1000),
        store=store,
    )


def symbols_from_settings(settings: Settings) -> SymbolSource:
    """The listing ``[paper]`` describes: ``symbols = "auto"`` fetches Binance's exchangeInfo
    (``binance.base_url``) when the cache is older than its TTL; ``"snapshot"`` never does.
    Either reads only a cache of ``binance.base_url``'s listing."""
    paper = settings.paper
    fetch = paper.symbols == "auto"
    return SymbolSource(
        base_url=settings.binance.base_url if fetch else None,
        listing_url=settings.binance.base_url,
        cache_dir=Path(paper.symbols_cache_dir) if paper.symbols_cache_dir else default_cache_dir(),
        ttl_s=paper.symbols_cache_ttl_seconds,
        timeout_s=min(settings.binance.timeout_seconds, 5.0),
    )


def _rules_source(rules: Iterable[SymbolRules] | RulesSource | None) -> RulesSource:
    """The snapshot by default; a list of rules as a fixed listing."""
    if rules is None:
        return SymbolSource(base_url=None, cache_dir=None)
    if isinstance(rules, RulesSource):
        return rules
    return StaticSymbols(rules)
