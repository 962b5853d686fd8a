"""The paper exchange's values and pure matching rules: configuration, orders, fills, fees.

No I/O and no clock here: :mod:`worker.exchanges.paper` feeds prices and times in.
Statuses, quantities and the ``raw`` answer follow Binance's names and shapes, so the
engine records a paper order exactly as it records a Binance one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import Any, Final, Literal, cast, get_args

from worker.exchanges.base import (
    ExchangeFill,
    OrderRejected,
    OrderRequest,
    OrderState,
    OrderType,
    Side,
)
from worker.exchanges.filters import (
    SymbolRules,
    check_order,
    format_decimal,
    round_price,
    round_quantity,
)

FeeAsset = Literal["quote", "base", "BNB"]

ZERO: Final = Decimal(0)
COMMISSION_STEP: Final = Decimal("0.00000001")  # Binance reports commissions to 8 places
_BPS: Final = Decimal(10_000)
_OPEN: Final = frozenset({"NEW", "PARTIALLY_FILLED"})


MAX_BOOK_LEVELS: Final = 50  # a market order walks at most this many levels of the book


@dataclass(frozen=True, slots=True)
class Quote:
    """The top of a symbol's book as a feed sees it.

    ``bid``/``ask``: best prices; ``bid_qty``/``ask_qty``: what is shown there (None: not
    known, the configured depth applies); ``last``: the last trade (stops trigger on it);
    ``time_ms``: when the feed last heard of the symbol (None: a feed that cannot go stale).
    """

    bid: Decimal
    ask: Decimal
    last: Decimal
    bid_qty: Decimal | None = None
    ask_qty: Decimal | None = None
    time_ms: int | None = None

    @classmethod
    def around(
        cls, rules: SymbolRules, mid: Decimal, spread_bps: Decimal, time_ms: int | None = None
    ) -> Quote:
        """A book around ``mid``: bid and ask ``spread_bps`` apart, the bid rounded down and
        the ask up to the tick (so at least one tick apart once there is any spread);
        ``last`` is ``mid``. No spread: bid = ask = ``mid``."""
        if spread_bps <= 0:
            return cls(mid, mid, mid, time_ms=time_ms)
        half = mid * spread_bps / _BPS / 2
        bid = max(round_price(rules, mid - half, ROUND_DOWN), rules.tick_size or mid - half)
        return cls(bid, round_price(rules, mid + half, ROUND_UP), mid, time_ms=time_ms)

    def touch(self, side: Side) -> Decimal:
        """The price a taker of ``side`` meets: the ask for a buy, the bid for a sell."""
        return self.ask if side == "buy" else self.bid

    def shown(self, side: Side) -> Decimal | None:
        """The size a taker of ``side`` meets at the touch, if the feed says."""
        return self.ask_qty if side == "buy" else self.bid_qty


@dataclass(frozen=True, slots=True)
class Execution:
    """One part of an order's fill, before fees and trade ids: a price on the tick grid and a
    quantity on the step grid, as maker (a resting limit hit) or taker."""

    price: Decimal
    quantity: Decimal
    maker: bool


@dataclass(frozen=True, slots=True)
class PaperConfig:
    """How the paper exchange fills and charges.

    * ``taker_fee`` / ``maker_fee``: fraction of the fill's value (0.001 = 0.1 %). Market
      orders, triggered stops and limits that cross on arrival pay taker; a resting limit hit
      later pays maker.
    * ``fee_asset``: ``"quote"`` (USDT); ``"base"``, Binance's rule: the *received* asset,
      i.e. the base asset on a buy and the quote asset on a sell (so selling exactly what is
      held always fits); ``"BNB"``: the fee's value in BNB at the ``BNB<quote>`` price of the
      same feed (the BNB discount path). Commissions are rounded to 8 places.
    * ``bnb_discount``: the fraction taken off a fee paid in BNB (Binance spot: 0.25).
    * ``slippage_bps``: a taker's first fill is this many basis points beyond the touch (the
      ask for a buy, the bid for a sell), rounded to the tick away from the taker.
    * ``spread_bps``: a feed that gives only a price (synthetic, fixed) is read as the mid of
      a book this wide (see :meth:`Quote.around`).
    * ``depth_quote``: the value, in quote, shown at each level of the book when the feed does
      not say (bookTicker does); 0: unlimited, a taker fills wholly at its first price.
      A taker larger than a level walks the book: levels one gap further each (the spread,
      at least a tick), up to :data:`MAX_BOOK_LEVELS`; what is left then EXPIRES (market)
      or rests (limit).
    * ``partial_fills``: each execution is split into up to this many fills (step-aligned,
      the last takes the remainder), each with its own trade id.
    """

    taker_fee: Decimal = Decimal("0.001")
    maker_fee: Decimal = Decimal("0.001")
    fee_asset: FeeAsset = "quote"
    bnb_discount: Decimal = ZERO
    slippage_bps: Decimal = ZERO
    spread_bps: Decimal = ZERO
    depth_quote: Decimal = ZERO
    partial_fills: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.depth_quote, Decimal) or self.depth_quote < 0:
            raise ValueError("paper depth_quote must be a Decimal >= 0")
        for name in ("taker_fee", "maker_fee", "bnb_discount", "slippage_bps", "spread_bps"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not ZERO <= value < (_BPS if "bps" in name else 1):
                raise ValueError(f"paper {name} must be a Decimal in [0, 1) (bps: < 10000)")
        if self.fee_asset not in get_args(FeeAsset):
            raise ValueError(f"paper fee_asset must be quote, base or BNB, not {self.fee_asset!r}")
        if self.partial_fills < 1:
            raise ValueError("paper partial_fills must be >= 1")


@dataclass(slots=True)
class PaperOrder:
    """One order as the paper exchange holds it: the request, rounded, and its fills."""

    req: OrderRequest
    exchange_order_id: str
    quantity: Decimal  # floored to stepSize (market by quote: what the quote buys)
    price: Decimal | None  # limit price, on the tick grid
    stop_price: Decimal | None
    time_ms: int
    status: str = "NEW"
    triggered: bool = False
    update_ms: int = 0
    fills: list[ExchangeFill] = field(default_factory=list)

    @property
    def symbol(self) -> str:
        return self.req.symbol

    @property
    def side(self) -> Side:
        return self.req.side

    @property
    def is_open(self) -> bool:
        return self.status in _OPEN

    @property
    def executed(self) -> Decimal:
        return sum((f.qty for f in self.fills), ZERO)

    @property
    def remaining(self) -> Decimal:
        return self.quantity - self.executed

    def record(self, fills: list[ExchangeFill], now_ms: int) -> None:
        """Add an execution's fills: FILLED when nothing remains, else PARTIALLY_FILLED."""
        self.fills += fills
        self.update_ms = now_ms
        if self.remaining == 0:
            self.status = "FILLED"
        elif self.executed > 0:
            self.status = "PARTIALLY_FILLED"

    def state(self, fills: list[ExchangeFill] | None = None) -> OrderState:
        """The order now; ``fills`` are those to report with it (a placement's own fills)."""
        shown = tuple(fills or ())
        quote = sum((f.price * f.qty for f in self.fills), ZERO)
        return OrderState(
            client_order_id=self.req.client_order_id,
            exchange_order_id=self.exchange_order_id,
            status=self.status,
            executed_qty=self.executed,
            cumulative_quote=quote,
            fills=shown,
            raw=self._raw(quote, shown),
        )

    def _raw(self, quote: Decimal, fills: tuple[ExchangeFill, ...]) -> dict[str, Any]:
        """A Binance-shaped answer (JSON-ready strings), marked ``"paper": true``."""
        kind = self.req.type.upper() + ("_LIMIT" if self.stop_price and self.price else "")
        return {
            "symbol": self.symbol,
            "orderId": self.exchange_order_id,
            "clientOrderId": self.req.client_order_id,
            "transactTime": self.update_ms or self.time_ms,
            "side": self.side.upper(),
            "type": kind,
            "status": self.status,
            "origQty": format_decimal(self.quantity),
            "executedQty": format_decimal(self.executed),
            "cummulativeQuoteQty": format_decimal(quote),
            "price": format_decimal(self.price or ZERO),
            "stopPrice": format_decimal(self.stop_price or ZERO),
            "fills": [_fill_json(f) for f in fills],
            "paper": True,
        }


def _fill_json(fill: ExchangeFill) -> dict[str, Any]:
    return {
        "price": format_decimal(fill.price),
        "qty": format_decimal(fill.qty),
        "commission": format_decimal(fill.commission),
        "commissionAsset": fill.commission_asset,
        "tradeId": fill.trade_id,
    }


def new_order(
    rules: SymbolRules, req: OrderRequest, quote: Quote, config: PaperConfig, *,
    exchange_order_id: str, now_ms: int,
) -> PaperOrder:  # fmt: skip
    """``req`` as an order on the symbol's grid (quantity floored to stepSize, prices rounded
    to tickSize), or FilterViolation / OrderRejected(-2010) for a stop that would fire now.

    A market order by ``quote_quantity`` gets the quantity the quote buys at its first price.
    """
    price = round_price(rules, req.price) if req.price is not None else None
    stop = round_price(rules, req.stop_price) if req.stop_price is not None else None
    touch = quote.touch(req.side)
    if req.quote_quantity is not None:
        check_order(rules, None, None, quote_quantity=req.quote_quantity)
        fill_price = slipped(rules, req.side, touch, config.slippage_bps)
        quantity = round_quantity(rules, req.quote_quantity / fill_price)
        check_order(rules, quantity, None)
    else:
        quantity = round_quantity(rules, cast(Decimal, req.quantity))
        reference = next(p for p in (price, stop, touch) if p is not None)
        check_order(rules, quantity, reference)
    if stop is not None and price is not None:
        check_order(rules, None, stop)
    if stop is not None and stop_triggered(req.type, req.side, stop, quote.last):
        raise OrderRejected(-2010, "Stop price would trigger immediately.")
    return PaperOrder(req, exchange_order_id, quantity, price, stop, now_ms, triggered=stop is None)


# -- rules ---------------------------------------------------------------------------------------


def match(
    order: PaperOrder,
    rules: SymbolRules,
    quote: Quote,
    config: PaperConfig,
    *,
    placing: bool,
    cap: Decimal | None = None,
) -> tuple[list[Execution], bool]:
    """What ``order`` fills against ``quote`` now (at most ``cap``), and whether what remains
    then expires (a market order, or a stop that fired without a limit, never rests).

    A stop fires when the last price reaches it, then takes the book as an arriving order.
    A market order walks the book from the touch. A limit crosses when the touch reaches its
    price: on arrival it takes the book as far as its limit (taker); resting, it fills at its
    limit (maker)."""
    if not order.triggered:
        if not stop_triggered(order.req.type, order.side, order.stop_price, quote.last):
            return [], False
        order.triggered = placing = True  # a stop that fires takes the book, like an arrival
    quantity = order.remaining if cap is None else min(order.remaining, round_quantity(rules, cap))
    if order.price is None:
        return walk(rules, order.side, quote, quantity, config), True
    if not limit_crossed(order.side, order.price, quote.touch(order.side)):
        return [], False
    if placing:
        return walk(rules, order.side, quote, quantity, config, limit=order.price), False
    return [Execution(order.price, quantity, maker=True)], False


def moved_by(order: PaperOrder, quote: Quote) -> bool:
    """Whether :func:`match` may change ``order`` at ``quote``: a stop not yet fired that
    fires, or a fired one (a plain limit counts as fired) without a limit or whose limit
    the touch crosses. Every other order is left as it is by ``match``, so a matching pass
    claims only these (in PostgreSQL: worker/db/paper.sql's ``paper_moved_by`` filter,
    the same test in SQL): a book of many resting orders costs what the quote moves."""
    if not order.triggered:
        return stop_triggered(order.req.type, order.side, order.stop_price, quote.last)
    return order.price is None or limit_crossed(order.side, order.price, quote.touch(order.side))


def walk(
    rules: SymbolRules,
    side: Side,
    quote: Quote,
    quantity: Decimal,
    config: PaperConfig,
    *,
    limit: Decimal | None = None,
) -> list[Execution]:
    """A taker of ``quantity`` through the book: the first level ``slippage_bps`` beyond the
    touch, each further level one gap worse (the spread, at least a tick), each holding what
    the feed shows at the touch (else ``depth_quote``); never beyond ``limit``."""
    first = slipped(rules, side, quote.touch(side), config.slippage_bps)
    if limit is not None:
        first = min(first, limit) if side == "buy" else max(first, limit)
    size = _level_size(rules, side, quote, config)
    if size is None:
        return [Execution(first, quantity, maker=False)] if quantity > 0 else []
    gap = max(rules.tick_size, round_price(rules, first * config.spread_bps / _BPS, ROUND_UP))
    executions, left = [], quantity
    for level in range(MAX_BOOK_LEVELS):
        price = first + gap * level if side == "buy" else first - gap * level
        beyond = limit is not None and (price > limit if side == "buy" else price < limit)
        if left <= 0 or price <= 0 or beyond:
            break
        take = min(size, left)
        executions.append(Execution(price, take, maker=False))
        left -= take
    return executions


def _level_size(
    rules: SymbolRules, side: Side, quote: Quote, config: PaperConfig
) -> Decimal | None:
    """The base quantity at each level (at least one step); None: unlimited."""
    shown = quote.shown(side)
    if shown is None and config.depth_quote > 0:
        shown = config.depth_quote / quote.touch(side)
    if shown is None:
        return None
    return max(round_quantity(rules, shown), rules.step_size or shown)


def stop_triggered(kind: OrderType, side: Side, stop: Decimal | None, price: Decimal) -> bool:
    """A sell stop-loss fires when the price falls to ``stop``, a buy one when it rises to it;
    a take-profit the reverse. An order without a stop counts as fired."""
    if stop is None:
        return True
    falling = (side == "sell") == (kind == "stop_loss")
    return price <= stop if falling else price >= stop


def limit_crossed(side: Side, limit: Decimal, price: Decimal) -> bool:
    """A buy limit fills at or below its price, a sell limit at or above."""
    return price <= limit if side == "buy" else price >= limit


def slipped(rules: SymbolRules, side: Side, price: Decimal, slippage_bps: Decimal) -> Decimal:
    """The taker's fill price: ``slippage_bps`` worse than ``price``, on the tick grid."""
    if side == "buy":
        return round_price(rules, price * (1 + slippage_bps / _BPS), ROUND_UP)
    return round_price(rules, price * (1 - slippage_bps / _BPS), ROUND_DOWN)


def split(rules: SymbolRules, quantity: Decimal, parts: int) -> list[Decimal]:
    """``quantity`` in up to ``parts`` step-aligned pieces, the last taking the remainder."""
    piece = round_quantity(rules, quantity / parts)
    pieces = [piece] * (parts - 1) + [quantity - piece * (parts - 1)]
    return [p for p in pieces if p > 0]


def commission(
    config: PaperConfig,
    rules: SymbolRules,
    side: Side,
    value: Decimal,
    quantity: Decimal,
    *,
    maker: bool,
    bnb_price: Decimal | None,
) -> tuple[Decimal, str]:
    """The fee of one fill worth ``value`` quote for ``quantity`` base, and its asset; a fee
    paid in BNB (fee asset BNB) is ``bnb_discount`` cheaper, as on Binance."""
    rate = config.maker_fee if maker else config.taker_fee
    in_base = config.fee_asset == "base" and side == "buy"
    if in_base or (config.fee_asset == "BNB" and rules.base_asset == "BNB"):
        amount, asset = quantity * rate, rules.base_asset
    elif config.fee_asset == "BNB" and bnb_price is not None:
        amount, asset = value * rate / bnb_price, "BNB"
    else:
        amount, asset = value * rate, rules.quote_asset
    if config.fee_asset == "BNB" and asset == "BNB":
        amount *= 1 - config.bnb_discount
    return amount.quantize(COMMISSION_STEP), asset
