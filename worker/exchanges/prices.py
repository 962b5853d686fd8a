"""Price feeds for the paper exchange: fixed (tests), synthetic (demo, tests), Binance public.

Each implements :class:`~worker.exchanges.base.PriceFeed` (``await feed.price(symbol)``) and
answers in :class:`~decimal.Decimal`. A symbol the feed does not know raises
:class:`~worker.exchanges.base.OrderRejected` with Binance's -1121, as the real ticker does.

* :class:`FixedPrices` - whatever the test ``set()``; nothing moves by itself.
* :class:`SyntheticPrices` - a seeded random walk per symbol, on the symbol's tick grid. It
  moves only when driven: :meth:`~SyntheticPrices.step` / :meth:`~SyntheticPrices.advance`,
  or, given a ``clock``, by catching up one step per ``tick_ms`` elapsed whenever a price is
  read. Scripted paths (:meth:`~SyntheticPrices.script`) replace the walk for the next steps,
  so a demo can make a stop-loss fire on cue.
  Given ``symbols`` (the listing, :mod:`worker.exchanges.symbols`), any listed symbol joins
  the walk when first read, at its synthetic reference price, on its tick.
* :class:`~worker.exchanges.market_stream.BinanceMarketStream` - real best bid/ask and trades
  from Binance's public WebSocket streams, REST when the stream has nothing; re-exported.
* :class:`~worker.exchanges.binance.BinancePublicPrices` - real last prices over REST, no key.

A feed that also knows the book implements :class:`QuoteFeed`; :func:`read_quote` reads any
feed as a :class:`~worker.exchanges.paper_book.Quote` (a bare price is the mid of a book
``spread_bps`` wide). :class:`PriceFeedStale` is what the paper exchange raises instead of
filling at a price older than it accepts.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Final, Protocol, runtime_checkable

from worker.exchanges.base import ExchangeError, PriceFeed
from worker.exchanges.binance import BinancePublicPrices
from worker.exchanges.filters import SymbolRules, unknown_symbol
from worker.exchanges.market_stream import BinanceMarketStream
from worker.exchanges.paper_book import Quote
from worker.exchanges.symbols import RulesSource, reference_price

__all__ = [
    "DEFAULT_PRICES",
    "BinanceMarketStream",
    "BinancePublicPrices",
    "FixedPrices",
    "PriceFeedStale",
    "QuoteFeed",
    "SyntheticPrices",
    "read_quote",
    "unknown_symbol",
]

DEFAULT_PRICES: Final[Mapping[str, Decimal]] = {
    "BTCUSDT": Decimal("50000"),
    "ETHUSDT": Decimal("3000"),
    "BNBUSDT": Decimal("500"),
    "SOLUSDT": Decimal("150"),
}
DEFAULT_TICK: Final = Decimal("0.01")
MAX_CATCH_UP_STEPS: Final = 3_600  # a clock-driven feed idle for longer skips the rest
_BPS: Final = Decimal(10_000)

ClockMs = Callable[[], int]


class PriceFeedStale(ExchangeError):
    """The feed has had no price for ``symbol`` for longer than the exchange accepts: a new
    order waits (the engine looks again on its next pass) rather than fill at an old price."""

    def __init__(self, symbol: str, age_ms: int) -> None:
        self.symbol, self.age_ms = symbol, age_ms
        super().__init__(f"held: price feed stale for {symbol} (last price {age_ms // 1000}s ago)")


@runtime_checkable
class QuoteFeed(Protocol):
    """A feed that knows the best bid and ask, not only a price."""

    async def quote(self, symbol: str) -> Quote: ...


async def read_quote(feed: PriceFeed, rules: SymbolRules, spread_bps: Decimal) -> Quote:
    """``rules.symbol``'s book from ``feed``: its own quote, else a book around its price."""
    if isinstance(feed, QuoteFeed):
        return await feed.quote(rules.symbol)
    return Quote.around(rules, await feed.price(rules.symbol), spread_bps)


def _positive(name: str, value: Decimal) -> Decimal:
    if not isinstance(value, Decimal):
        raise TypeError(f"{name} must be a Decimal, not {type(value).__name__}")
    if not value.is_finite() or value <= 0:
        raise ValueError(f"{name} must be a positive Decimal, got {value}")
    return value


class FixedPrices:
    """Prices that change only when told: ``FixedPrices({"BTCUSDT": Decimal("100")})``."""

    def __init__(self, prices: Mapping[str, Decimal] | None = None) -> None:
        self._prices: dict[str, Decimal] = {}
        for symbol, value in (prices or {}).items():
            self.set(symbol, value)

    def __repr__(self) -> str:
        return f"FixedPrices({self._prices!r})"

    def set(self, symbol: str, price: Decimal) -> None:
        """From now on ``symbol`` trades at ``price`` (a positive Decimal)."""
        self._prices[symbol] = _positive(f"{symbol} price", price)

    async def price(self, symbol: str) -> Decimal:
        try:
            return self._prices[symbol]
        except KeyError:
            raise unknown_symbol(symbol) from None


class SyntheticPrices:
    """A deterministic random walk per symbol, moved by :meth:`step` (or by a clock).

    ``start`` gives each symbol's first price (default :data:`DEFAULT_PRICES`); every step
    multiplies a price by ``1 + k/10000`` with ``k`` a whole number drawn uniformly from
    ``[-step_bps, step_bps]``, then rounds it half-up to the symbol's tick (``ticks``, else
    ``default_tick``), never below one tick. Each symbol has its own generator, seeded from
    ``seed`` and the symbol's name: one seed, one path, whatever other symbols exist.

    With ``symbols`` (a listing), every symbol the listing has joins the walk when first read
    through :meth:`price`, on the listing's tick: at its ``start`` price if it has one, else at
    :func:`~worker.exchanges.symbols.reference_price`; one the listing lacks is -1121.

    With ``clock`` (epoch milliseconds), reading a price first takes one step per ``tick_ms``
    elapsed since the first read (at most :data:`MAX_CATCH_UP_STEPS` at once), so a running
    worker sees prices move without a task of their own. Without it, only :meth:`step` and
    :meth:`advance` move prices: tests and the demo drive them and never wait on time.
    """

    def __init__(
        self,
        start: Mapping[str, Decimal] | None = None,
        *,
        seed: int = 7,
        step_bps: int = 20,
        ticks: Mapping[str, Decimal] | None = None,
        default_tick: Decimal = DEFAULT_TICK,
        clock: ClockMs | None = None,
        tick_ms: int = 1_000,
        symbols: RulesSource | None = None,
    ) -> None:
        if step_bps < 0 or tick_ms <= 0:
            raise ValueError("step_bps must be >= 0 and tick_ms > 0")
        self._seed, self._step_bps = seed, step_bps
        self._ticks = {s: _positive(f"{s} tick", t) for s, t in (ticks or {}).items()}
        self._default_tick = _positive("default_tick", default_tick)
        self._clock, self._tick_ms = clock, tick_ms
        self._origin_ms: int | None = None
        self._prices: dict[str, Decimal] = {}
        self._rngs: dict[str, random.Random] = {}
        self._scripts: dict[str, deque[Decimal]] = {}
        self._held: set[str] = set()
        self._symbols = symbols
        self._joining: dict[str, Decimal] = {}  # with a listing: start prices, joined on read
        self.steps = 0
        initial = DEFAULT_PRICES if start is None else start
        if symbols is not None:
            self._joining = {s: _positive(f"{s} price", p) for s, p in initial.items()}
            return
        for symbol, price in initial.items():
            self._rngs[symbol] = random.Random(f"{seed}:{symbol}")
            self.set(symbol, price)

    def __repr__(self) -> str:
        return f"SyntheticPrices(seed={self._seed}, steps={self.steps}, prices={self._prices!r})"

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self._prices)

    def current(self, symbol: str) -> Decimal:
        """The price now, without catching up with the clock."""
        try:
            return self._prices[symbol]
        except KeyError:
            raise unknown_symbol(symbol) from None

    async def price(self, symbol: str) -> Decimal:
        self.catch_up()
        if symbol not in self._prices and self._symbols is not None:
            rules = await self._symbols.rules(symbol)  # not listed: -1121
            if rules.tick_size > 0:
                self._ticks.setdefault(symbol, rules.tick_size)
            start = self._joining.pop(symbol) if symbol in self._joining else None
            self.set(symbol, start or reference_price(rules))
        return self.current(symbol)

    # -- moving ------------------------------------------------------------------------------

    def step(self) -> dict[str, Decimal]:
        """Move every symbol one step (its script's next price, or the walk); the new prices."""
        for symbol in self._prices:
            self._prices[symbol] = self._next_price(symbol)
        self.steps += 1
        return dict(self._prices)

    def advance(self, n: int) -> dict[str, Decimal]:
        """Take ``n`` steps; the prices after the last one."""
        for _ in range(n):
            self.step()
        return dict(self._prices)

    def catch_up(self) -> int:
        """With a clock: take the steps due since the first read. Returns how many were taken."""
        if self._clock is None:
            return 0
        now = self._clock()
        if self._origin_ms is None:
            self._origin_ms = now - self.steps * self._tick_ms
        due = (now - self._origin_ms) // self._tick_ms - self.steps
        if due > MAX_CATCH_UP_STEPS:  # long idle: the skipped steps are simply not taken
            self._origin_ms += (due - MAX_CATCH_UP_STEPS) * self._tick_ms
            due = MAX_CATCH_UP_STEPS
        self.advance(max(due, 0))
        return max(due, 0)

    def set(self, symbol: str, price: Decimal) -> None:
        """Jump ``symbol`` to ``price`` (rounded to its tick) now, without taking a step.

        A symbol not seen before joins the walk from here."""
        if symbol not in self._rngs:
            self._rngs[symbol] = random.Random(f"{self._seed}:{symbol}")
        self._prices[symbol] = self._on_tick(symbol, _positive(f"{symbol} price", price))

    def script(self, symbol: str, prices: Iterable[Decimal], *, hold: bool = False) -> None:
        """The next steps of ``symbol`` take ``prices`` in order instead of the walk.

        Appends to a script not yet played out. With ``hold`` the price then stays at the
        script's last value until :meth:`release`; otherwise the walk resumes from there.
        """
        self.current(symbol)  # unknown symbol: -1121
        path = [self._on_tick(symbol, _positive(f"{symbol} price", p)) for p in prices]
        self._scripts.setdefault(symbol, deque()).extend(path)
        if hold:
            self._held.add(symbol)
        else:
            self._held.discard(symbol)

    def release(self, symbol: str) -> None:
        """Let a held symbol walk again from its current price."""
        self._held.discard(symbol)

    def _next_price(self, symbol: str) -> Decimal:
        script = self._scripts.get(symbol)
        if script:
            return script.popleft()
        if symbol in self._held:
            return self._prices[symbol]
        move = self._rngs[symbol].randint(-self._step_bps, self._step_bps)
        walked = self._prices[symbol] * (1 + Decimal(move) / _BPS)
        return max(self._on_tick(symbol, walked), self._tick(symbol))

    def _tick(self, symbol: str) -> Decimal:
        return self._ticks.get(symbol, self._default_tick)

    def _on_tick(self, symbol: str, price: Decimal) -> Decimal:
        """``price`` on the symbol's tick grid (half-up), e.g. 100.005 -> 100.01 at 0.01."""
        tick = self._tick(symbol).normalize()
        return ((price / tick).to_integral_value(ROUND_HALF_UP) * tick).quantize(tick)
