"""The port the execution engine trades through: one small Protocol, value types, errors.

Every exchange adapter (paper, Binance spot) implements :class:`Exchange` and translates
its driver's failures into the hierarchy below, so the engine decides on meaning, not on
HTTP codes:

* :class:`OrderRejected` - definitive: the exchange refused, nothing happened. Record the
  order failed with ``code`` and ``msg``. :class:`FilterViolation` is the local pre-check
  flavour (nothing was sent).
* :class:`OutcomeUnknown` - the request may or may not have been applied (timeout, dropped
  connection, 5xx, -1006, -1007, duplicate client id). Reconcile with
  :meth:`Exchange.get_order` by client order id; never re-send blindly.
* :class:`RateLimited` - nothing was applied; wait ``retry_after_s`` before any request.
* :class:`UnknownOrder` - the exchange has no (open) order with that id.
* :class:`ClockSkew` - timestamp outside recvWindow; adapters resync and retry once, it only
  escapes when the retry failed too (nothing was applied).

All money is :class:`~decimal.Decimal`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, get_args

from worker.errors import WorkerError

if TYPE_CHECKING:
    from worker.exchanges.filters import SymbolRules

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit", "stop_loss", "take_profit"]

CLIENT_ORDER_ID: Final = re.compile(r"^[a-zA-Z0-9\-_]{1,36}$")
OPEN_STATUSES: Final = frozenset({"NEW", "PENDING_NEW", "PARTIALLY_FILLED", "PENDING_CANCEL"})
FINAL_STATUSES: Final = frozenset({"FILLED", "CANCELED", "REJECTED", "EXPIRED", "EXPIRED_IN_MATCH"})


# -- errors ----------------------------------------------------------------------------------


class ExchangeError(WorkerError):
    """Base of every error an exchange adapter raises."""


class OrderRejected(ExchangeError):
    """The exchange (or the local pre-check) refused the request. Nothing was applied."""

    def __init__(self, code: int | None, msg: str) -> None:
        self.code, self.msg = code, msg
        super().__init__(f"rejected ({code}): {msg}" if code is not None else msg)


class FilterViolation(OrderRejected):
    """The order breaks a symbol filter; caught locally, nothing was sent."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(None, f"filter: {reason}")


class OutcomeUnknown(ExchangeError):
    """The request may have been applied. Reconcile by client order id, never re-send blindly."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        self.reason, self.code = reason, code
        super().__init__(f"outcome unknown: {reason}")


class DuplicateOrder(OutcomeUnknown):
    """An open order already has this client id: an earlier send did arrive. Reconcile."""


class RateLimited(ExchangeError):
    """HTTP 429 (or 418: banned). No request may be sent for ``retry_after_s`` seconds."""

    def __init__(self, retry_after_s: float, banned: bool) -> None:
        self.retry_after_s, self.banned = retry_after_s, banned
        what = "IP banned" if banned else "rate limited"
        super().__init__(f"{what}: retry after {retry_after_s:.1f}s")


class UnknownOrder(ExchangeError):
    """The exchange does not know the order (-2013), or it is no longer open (-2011)."""

    def __init__(self, code: int | None, msg: str) -> None:
        self.code, self.msg = code, msg
        super().__init__(f"unknown order ({code}): {msg}")


class ClockSkew(ExchangeError):
    """Request timestamp outside recvWindow (-1021). Nothing was applied; resync and retry."""


# -- values ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderRequest:
    """One order to place. Exactly one of ``quantity`` / ``quote_quantity`` (market only)."""

    symbol: str
    side: Side
    type: OrderType
    client_order_id: str
    quantity: Decimal | None = None
    quote_quantity: Decimal | None = None
    price: Decimal | None = None  # limit price; with stop_loss/take_profit: a *_LIMIT order
    stop_price: Decimal | None = None

    def __post_init__(self) -> None:
        problem = _request_problem(self)
        if problem:
            raise ValueError(f"invalid order request {self.client_order_id!r}: {problem}")


def _request_problem(req: OrderRequest) -> str:
    if req.side not in get_args(Side):
        return f"side must be buy or sell, not {req.side!r}"
    if req.type not in get_args(OrderType):
        return f"unknown order type {req.type!r}"
    if not CLIENT_ORDER_ID.match(req.client_order_id):
        return "client_order_id must match ^[a-zA-Z0-9-_]{1,36}$"
    if (req.quantity is None) == (req.quote_quantity is None):
        return "exactly one of quantity and quote_quantity is required"
    if req.quote_quantity is not None and req.type != "market":
        return "quote_quantity is only allowed on market orders"
    if req.type == "limit" and req.price is None:
        return "a limit order needs a price"
    if req.type in ("stop_loss", "take_profit") and req.stop_price is None:
        return f"a {req.type} order needs a stop_price"
    if req.type == "market" and (req.price is not None or req.stop_price is not None):
        return "a market order takes no price or stop_price"
    return ""


@dataclass(frozen=True)
class OcoRequest:
    """A stop-loss and a take-profit for the same ``quantity`` as one OCO order list: when
    one leg triggers the exchange cancels (expires) the other, and the held balance is
    locked once for both (two separate orders would each need all of it). Both legs are
    stop-market orders (``STOP_LOSS`` / ``TAKE_PROFIT``). For a SELL (long exit) the
    take-profit is the *above* leg and the stop-loss the *below* one; mirrored for a BUY."""

    symbol: str
    side: Side
    quantity: Decimal
    list_client_order_id: str
    stop_client_order_id: str
    stop_price: Decimal
    take_profit_client_order_id: str
    take_profit_price: Decimal

    def __post_init__(self) -> None:
        problem = _oco_problem(self)
        if problem:
            raise ValueError(f"invalid OCO request {self.list_client_order_id!r}: {problem}")


def _oco_problem(req: OcoRequest) -> str:
    if req.side not in get_args(Side):
        return f"side must be buy or sell, not {req.side!r}"
    ids = (req.list_client_order_id, req.stop_client_order_id, req.take_profit_client_order_id)
    if not all(CLIENT_ORDER_ID.match(i) for i in ids):
        return "client order ids must match ^[a-zA-Z0-9-_]{1,36}$"
    if req.stop_client_order_id == req.take_profit_client_order_id:
        return "the two legs need different client order ids"
    if req.quantity <= 0 or req.stop_price <= 0 or req.take_profit_price <= 0:
        return "quantity and prices must be positive"
    above, below = (
        (req.take_profit_price, req.stop_price)
        if req.side == "sell"
        else (req.stop_price, req.take_profit_price)
    )
    if above <= below:
        return f"a {req.side} OCO needs the take-profit on the other side of the stop"
    return ""


@dataclass(frozen=True)
class ExchangeFill:
    """One execution (trade) of an order, as the exchange reported it."""

    trade_id: str
    price: Decimal
    qty: Decimal
    commission: Decimal
    commission_asset: str
    time_ms: int


@dataclass(frozen=True)
class OrderState:
    """An order as the exchange sees it now. ``status`` uses Binance's names."""

    client_order_id: str
    exchange_order_id: str
    status: str
    executed_qty: Decimal
    cumulative_quote: Decimal
    fills: tuple[ExchangeFill, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def average_price(self) -> Decimal | None:
        """Quote spent or received per unit, or None when nothing executed."""
        return self.cumulative_quote / self.executed_qty if self.executed_qty else None


# -- ports -----------------------------------------------------------------------------------


class PriceFeed(Protocol):
    """Where a current price comes from (synthetic, fixed, Binance public data)."""

    async def price(self, symbol: str) -> Decimal: ...


class Exchange(Protocol):
    """What the execution engine needs from an exchange. All methods may raise ExchangeError."""

    async def place_order(self, req: OrderRequest) -> OrderState:
        """Send one order. FilterViolation before sending; OutcomeUnknown: reconcile."""
        ...

    async def place_oco(self, req: OcoRequest) -> tuple[OrderState, ...]:
        """Send a stop-loss and a take-profit as one OCO list; the answer has one state per
        leg (find them by client order id). OutcomeUnknown: reconcile each leg by its
        client order id (a leg found means the whole list exists); never re-send blindly."""
        ...

    async def get_order(self, symbol: str, client_order_id: str) -> OrderState | None:
        """The latest order with this client id, or None if the exchange never heard of it.

        ``fills`` is empty here: fetch them with :meth:`get_fills`."""
        ...

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState:
        """Cancel an open order; UnknownOrder when it is unknown or already final."""
        ...

    async def get_fills(
        self, symbol: str, exchange_order_id: str, *, after: str | None = None
    ) -> list[ExchangeFill]:
        """The fills of one order, oldest first: every one, or with ``after`` (a trade id
        this exchange gave) those after it; an adapter may return earlier ones too."""
        ...

    async def symbol_rules(self, symbol: str) -> SymbolRules:
        """Tick size, step size and limits of a symbol (OrderRejected if unknown)."""
        ...

    async def price(self, symbol: str) -> Decimal:
        """The last traded price."""
        ...
