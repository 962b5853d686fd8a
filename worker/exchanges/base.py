"""The port the execution engine trades through: one small Protocol, value types, errors.

Every exchange adapter (paper, Binance spot) implements :class:`Exchange` and translates
its driver's failures into the errors of :mod:`worker.exchanges.errors` (re-exported here:
the engine imports the whole port from this module). A symbol's trading rules are a
:class:`~worker.exchanges.filters.SymbolRules`. All money is :class:`~decimal.Decimal`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal, Protocol, get_args, runtime_checkable

from worker.exchanges.errors import (
    ClockSkew,
    CredentialsRejected,
    DuplicateOrder,
    ExchangeError,
    FilterViolation,
    OrderRejected,
    OutcomeUnknown,
    RateLimited,
    UnknownOrder,
)
from worker.exchanges.filters import SymbolRules

__all__ = [
    "CLIENT_ORDER_ID",
    "FINAL_STATUSES",
    "OPEN_STATUSES",
    "ClockSkew",
    "CredentialsRejected",
    "DuplicateOrder",
    "Exchange",
    "ExchangeError",
    "ExchangeFill",
    "FilterViolation",
    "ListsOpenOrders",
    "OcoRequest",
    "OrderRejected",
    "OrderRequest",
    "OrderState",
    "OrderType",
    "OutcomeUnknown",
    "PriceFeed",
    "RateLimited",
    "Side",
    "SymbolRules",
    "UnknownOrder",
]

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit", "stop_loss", "take_profit"]

SIDES: Final = frozenset(get_args(Side))  # every order built is checked: read the Literal once
ORDER_TYPES: Final = frozenset(get_args(OrderType))
CLIENT_ORDER_ID: Final = re.compile(r"^[a-zA-Z0-9\-_]{1,36}$")
OPEN_STATUSES: Final = frozenset({"NEW", "PENDING_NEW", "PARTIALLY_FILLED", "PENDING_CANCEL"})
FINAL_STATUSES: Final = frozenset({"FILLED", "CANCELED", "REJECTED", "EXPIRED", "EXPIRED_IN_MATCH"})


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
        _valid(f"order request {self.client_order_id!r}", _request_problem(self))


def _valid(what: str, problem: str) -> None:
    if problem:
        raise ValueError(f"invalid {what}: {problem}")


def _side_problem(side: str) -> str:
    return "" if side in SIDES else f"side must be buy or sell, not {side!r}"


def _request_problem(req: OrderRequest) -> str:
    if problem := _side_problem(req.side):
        return problem
    if req.type not in ORDER_TYPES:
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
    stop-market orders (``STOP_LOSS`` / ``TAKE_PROFIT``), or with ``take_profit_maker`` the
    take-profit a ``LIMIT_MAKER`` resting at its price (not an "algo" order: it takes no
    MAX_NUM_ALGO_ORDERS slot; a SELL only, rest-api.md: ``belowType`` has no LIMIT_MAKER).
    For a SELL (long exit) the take-profit is the *above* leg and the stop-loss the *below*
    one; mirrored for a BUY."""

    symbol: str
    side: Side
    quantity: Decimal
    list_client_order_id: str
    stop_client_order_id: str
    stop_price: Decimal
    take_profit_client_order_id: str
    take_profit_price: Decimal
    take_profit_maker: bool = False

    def __post_init__(self) -> None:
        _valid(f"OCO request {self.list_client_order_id!r}", _oco_problem(self))


def _oco_problem(req: OcoRequest) -> str:
    if problem := _side_problem(req.side):
        return problem
    ids = (req.list_client_order_id, req.stop_client_order_id, req.take_profit_client_order_id)
    if not all(CLIENT_ORDER_ID.match(i) for i in ids):
        return "client order ids must match ^[a-zA-Z0-9-_]{1,36}$"
    if req.take_profit_maker and req.side != "sell":
        return "a LIMIT_MAKER take-profit leg is only possible on a sell"
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


@runtime_checkable
class ListsOpenOrders(Protocol):
    """An exchange that lists an account's open orders in one call (Binance's
    ``openOrders``): the reconciler's safety net uses it instead of a lookup per order."""

    async def open_orders(self, symbol: str | None = None) -> list[OrderState]: ...


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
