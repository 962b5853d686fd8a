"""Position accounting: average prices, fees and PnL, folded from a position's fills.

Pure: no I/O, no clock. Money and quantities are :class:`~decimal.Decimal` end to end (a float
is a ``TypeError``); arithmetic runs in a private 50-digit context whatever the caller's, and
:func:`quantize_money` / :func:`quantize_percent` round half-even only at the storage edge::

    figures = fold("long", Market("BTC", "USDT"), fills)  # reduce(apply, fills, empty)

Conventions:

* **A fee lands in one ledger, never two.** A fee in the *base* asset changes quantities only;
  one in quote or a third asset changes money only, by ``Fill.fee_quote`` (valued by the caller
  at the fill's own time, never revalued). ``fees_paid`` sums ``fee_quote`` of every fill.
* **Long**: entries are buys, exits sells. An entry of q at p holds q - base fee more and adds
  p*q + quote fee to the cost basis. An exit of q at r consumes q + base fee of the holding
  (never more than is held) and realizes q*r - quote fee - consumed*avg_cost.
* **Short**, the mirror (on spot, a borrowed sell): entries are sells, exits buys, and
  ``held_quantity`` is what is owed. An entry of q at p owes q + base fee more and adds the net
  proceeds p*q - quote fee to the basis. An exit (buy-back) of q at r covers q - base fee
  (never more than is owed) and realizes covered*avg_cost - q*r - quote fee.
* ``avg_cost`` is the open basis spread over the *held* quantity: buying 1.0 BTC at 100 with a
  0.001 BTC fee holds 0.999 at 100/0.999 = 100.1001... For a short it is net proceeds per unit
  owed. Either way it is the break-even exit price before exit fees; exits never change it.
* ``entry_price`` is sum(p*q)/sum(q) over entry fills (gross quantities). Exits never move it:
  they shrink the open entry quantity in proportion to the holding they consume, and a
  scale-in re-weights with what remains: (avg*Q_remaining + p*q) / (Q_remaining + q).
* ``entry_cost`` = entry_value + entry fees in quote or a third asset, for both sides (base
  fees are already in the quantity); ``realized_pnl_percent`` = realized_pnl / entry_cost * 100.
* The exit that makes the position flat releases exactly the basis left, so once flat
  ``realized_pnl`` is exactly exit_value - exit_fees - entry_cost (long), or
  entry_value - entry_fees - exit_value - exit_fees (short).
* ``entry_price``, ``avg_cost`` and ``exit_price`` are 0 until they exist and keep their last
  value once the position is flat.

Over 300 lines on purpose: the fold and its conventions (average price, cost basis, fees
in three kinds of asset, PnL) are one pure unit, read and table-tested together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)
from functools import reduce
from typing import Final, Literal

from worker.errors import WorkerError

Side = Literal["long", "short"]
FillSide = Literal["buy", "sell"]
AssetRole = Literal["base", "quote", "other"]

ZERO: Final = Decimal(0)
_CONTEXT: Final = Context(
    prec=50, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow]
)
_MONEY_STEP, _MONEY_LIMIT = Decimal("1e-8"), Decimal("1e12")  # DECIMAL(20, 8)
_PERCENT_STEP, _PERCENT_LIMIT = Decimal("1e-4"), Decimal("1e6")  # DECIMAL(10, 4)


class AccountingError(WorkerError, ValueError):
    """Fills that cannot be accounted: an exit larger than the holding, a bad amount."""


def _decimal(name: str, value: object) -> Decimal:
    """``value`` if it is a finite Decimal: TypeError for a float (or anything else)."""
    if not isinstance(value, Decimal):
        raise TypeError(f"{name} must be a Decimal, not {type(value).__name__}")
    if not value.is_finite():
        raise AccountingError(f"{name} must be finite, got {value}")
    return value


def _amount(name: str, value: object, *, positive: bool = False) -> Decimal:
    """``value`` if it is a finite Decimal >= 0 (> 0 when ``positive``), else raise."""
    amount = _decimal(name, value)
    if amount < 0 or (positive and amount == 0):
        raise AccountingError(f"{name} must be {'> 0' if positive else '>= 0'}, got {amount}")
    return amount


@dataclass(frozen=True, slots=True)
class Market:
    """The symbol's two assets, e.g. ``Market("BTC", "USDT")``, to tell where a fee was paid."""

    base_asset: str
    quote_asset: str

    def __post_init__(self) -> None:
        if not (self.base_asset and self.quote_asset) or self.role_of(self.quote_asset) == "base":
            raise AccountingError(f"bad market {self.base_asset!r}/{self.quote_asset!r}")

    @property
    def symbol(self) -> str:
        return f"{self.base_asset}{self.quote_asset}".upper()

    def role_of(self, asset: str) -> AssetRole:
        """Whether ``asset`` (case-insensitive) is this market's base, quote or another asset."""
        name = asset.upper()
        if name == self.base_asset.upper():
            return "base"
        return "quote" if name == self.quote_asset.upper() else "other"


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution: ``fee`` in ``fee_asset``, ``fee_quote`` its quote value at fill time."""

    side: FillSide
    price: Decimal
    quantity: Decimal
    fee: Decimal
    fee_asset: str
    fee_quote: Decimal
    trade_id: str | None = None

    def __post_init__(self) -> None:
        if self.side not in ("buy", "sell"):
            raise AccountingError(f"fill side must be 'buy' or 'sell', got {self.side!r}")
        _amount("price", self.price, positive=True)
        _amount("quantity", self.quantity, positive=True)
        _amount("fee", self.fee)
        _amount("fee_quote", self.fee_quote)
        if self.fee and not self.fee_asset:
            raise AccountingError("a fill with a fee needs its fee_asset")


@dataclass(frozen=True, slots=True)
class PositionFigures:
    """A position's running figures; ``PositionFigures(side, market)`` is the empty start.

    Quantities are in base units, money in quote. Derived: ``entry_cost``, ``exit_price``,
    ``realized_pnl``, ``realized_pnl_percent``, ``is_flat``.
    """

    side: Side
    market: Market
    held_quantity: Decimal = ZERO  # held now (short: owed), net of base-asset fees
    entry_quantity: Decimal = ZERO  # sum of entry fill quantities, gross
    entry_value: Decimal = ZERO  # sum of p*q over entry fills
    entry_fees: Decimal = ZERO  # entry fees paid in quote or a third asset, in quote
    entry_price: Decimal = ZERO  # average entry price (see the module notes)
    avg_cost: Decimal = ZERO  # basis per held unit: break-even exit price before exit fees
    exit_quantity: Decimal = ZERO  # sum of exit fill quantities, gross
    exit_value: Decimal = ZERO  # sum of r*q over exit fills
    exit_fees: Decimal = ZERO  # exit fees paid in quote or a third asset, in quote
    fees_paid: Decimal = ZERO  # every fee, valued in quote at its fill
    open_entry_quantity: Decimal = ZERO  # entry quantity not yet exited (entry_price weight)
    open_entry_value: Decimal = ZERO  # entry_price * open_entry_quantity
    basis_released: Decimal = ZERO  # basis taken out by exits so far
    fill_count: int = 0

    def __post_init__(self) -> None:
        if self.side not in ("long", "short"):
            raise AccountingError(f"position side must be 'long' or 'short', got {self.side!r}")

    @property
    def entry_cost(self) -> Decimal:
        """Quote committed at entry: entry_value + entry fees (quote or third asset)."""
        return _CONTEXT.add(self.entry_value, self.entry_fees)

    @property
    def exit_price(self) -> Decimal:
        """Quantity-weighted average exit price; 0 before the first exit."""
        if not self.exit_quantity:
            return ZERO
        return _CONTEXT.divide(self.exit_value, self.exit_quantity)

    @property
    def realized_pnl(self) -> Decimal:
        """PnL in quote of the exits so far, entry and exit fees included."""
        with localcontext(_CONTEXT):
            gross = self.exit_value - self.basis_released
            return _direction(self.side) * gross - self.exit_fees

    @property
    def realized_pnl_percent(self) -> Decimal:
        """realized_pnl / entry_cost * 100; 0 before the first entry."""
        cost = self.entry_cost
        if not cost:
            return ZERO
        with localcontext(_CONTEXT):
            return self.realized_pnl / cost * 100

    @property
    def is_flat(self) -> bool:
        """Nothing held (or owed): before the first entry, or after the last exit."""
        return self.held_quantity == 0


def _direction(side: Side) -> Decimal:
    return Decimal(1) if side == "long" else Decimal(-1)


def _fee_split(fill: Fill, market: Market) -> tuple[Decimal, Decimal]:
    """The fill's fee as (base units, quote value): exactly one of them is used."""
    if market.role_of(fill.fee_asset) == "base":
        return fill.fee, ZERO
    return ZERO, fill.fee_quote


def _consumed(figures: PositionFigures, quantity: Decimal, base_fee: Decimal) -> Decimal:
    """How much of the holding an exit of ``quantity`` uses up; raise if it is not there."""
    consumed = quantity + _direction(figures.side) * base_fee
    asset = figures.market.base_asset
    if quantity <= 0 or consumed <= 0:
        raise AccountingError(f"exit quantity must be > 0 net of fees, got {quantity} {asset}")
    if consumed > figures.held_quantity:
        held = "held" if figures.side == "long" else "owed"
        fee = f" (with a {base_fee} {asset} fee)" if base_fee else ""
        raise AccountingError(
            f"exit of {quantity} {asset}{fee} exceeds the {figures.held_quantity} {asset} {held}"
        )
    return consumed


def _enter(figures: PositionFigures, fill: Fill) -> PositionFigures:
    sign = _direction(figures.side)
    base_fee, quote_fee = _fee_split(fill, figures.market)
    added = fill.quantity - sign * base_fee
    if added <= 0:
        raise AccountingError(f"entry fee {fill.fee} {fill.fee_asset} eats the whole fill")
    value = fill.price * fill.quantity
    held = figures.held_quantity + added
    open_quantity = figures.open_entry_quantity + fill.quantity
    open_value = figures.open_entry_value + value
    entry_fees = figures.entry_fees + quote_fee
    entry_value = figures.entry_value + value
    open_basis = entry_value + sign * entry_fees - figures.basis_released
    return replace(
        figures,
        held_quantity=held,
        entry_quantity=figures.entry_quantity + fill.quantity,
        entry_value=entry_value,
        entry_fees=entry_fees,
        entry_price=open_value / open_quantity,
        avg_cost=open_basis / held,
        fees_paid=figures.fees_paid + fill.fee_quote,
        open_entry_quantity=open_quantity,
        open_entry_value=open_value,
        fill_count=figures.fill_count + 1,
    )


def _exit(figures: PositionFigures, fill: Fill) -> PositionFigures:
    base_fee, quote_fee = _fee_split(fill, figures.market)
    consumed = _consumed(figures, fill.quantity, base_fee)
    held = figures.held_quantity - consumed
    if held:
        released = figures.basis_released + consumed * figures.avg_cost
        open_quantity = figures.open_entry_quantity * held / figures.held_quantity
    else:  # the last exit releases exactly what is left: totals stay exact once flat
        released = figures.entry_value + _direction(figures.side) * figures.entry_fees
        open_quantity = ZERO
    return replace(
        figures,
        held_quantity=held,
        exit_quantity=figures.exit_quantity + fill.quantity,
        exit_value=figures.exit_value + fill.price * fill.quantity,
        exit_fees=figures.exit_fees + quote_fee,
        fees_paid=figures.fees_paid + fill.fee_quote,
        open_entry_quantity=open_quantity,
        open_entry_value=figures.entry_price * open_quantity,
        basis_released=released,
        fill_count=figures.fill_count + 1,
    )


def apply(figures: PositionFigures, fill: Fill) -> PositionFigures:
    """The figures after ``fill``: an entry or an exit according to the position's side.

    Raises :class:`AccountingError` when an exit would sell (or cover) more than is held.
    """
    if not isinstance(fill, Fill):
        raise TypeError(f"expected a Fill, not {type(fill).__name__}")
    is_entry = (fill.side == "buy") == (figures.side == "long")
    with localcontext(_CONTEXT):
        return _enter(figures, fill) if is_entry else _exit(figures, fill)


def fold(side: Side, market: Market, fills: Iterable[Fill]) -> PositionFigures:
    """The figures of a ``side`` position in ``market`` after ``fills``, applied in order."""
    return reduce(apply, fills, PositionFigures(side, market))


def sellable_quantity(figures: PositionFigures) -> Decimal:
    """The largest exit that can be accounted: all that is held (long) or owed (short).

    An exit whose fee is taken in the base asset consumes quantity + fee (long) or covers
    quantity - fee (short); size it with :func:`validate_exit_quantity`'s ``base_fee``.
    """
    return figures.held_quantity


def validate_exit_quantity(
    figures: PositionFigures, quantity: Decimal, *, base_fee: Decimal = ZERO
) -> None:
    """Raise :class:`AccountingError` unless an exit of ``quantity`` fits the holding."""
    _amount("base_fee", base_fee)
    _decimal("quantity", quantity)
    with localcontext(_CONTEXT):
        _consumed(figures, quantity, base_fee)


def fee_in_quote(
    fee: Decimal,
    fee_asset: str,
    market: Market,
    fill_price: Decimal,
    third_asset_price: Decimal | None = None,
) -> Decimal:
    """A fee's value in the quote asset at fill time (store it; never revalue it later).

    A base-asset fee is valued at the fill's own price; a third-asset fee (BNB) needs that
    asset's price in quote at the fill's time, ``third_asset_price``.
    """
    _amount("fee", fee)
    _amount("fill_price", fill_price, positive=True)
    role = market.role_of(fee_asset)
    if not fee or role == "quote":
        return fee
    if role == "base":
        return _CONTEXT.multiply(fee, fill_price)
    if third_asset_price is None:
        raise AccountingError(
            f"a fee in {fee_asset} needs the {fee_asset}/{market.quote_asset} price at fill time"
        )
    return _CONTEXT.multiply(fee, _amount("third_asset_price", third_asset_price, positive=True))


def _quantize(value: Decimal, step: Decimal, limit: Decimal, column: str) -> Decimal:
    _decimal("value", value)
    rounded = value.quantize(step, rounding=ROUND_HALF_EVEN, context=_CONTEXT)
    if abs(rounded) >= limit:
        raise AccountingError(f"{value} does not fit {column}")
    return _CONTEXT.plus(rounded)  # plus() turns -0 into 0


def quantize_money(value: Decimal) -> Decimal:
    """``value`` rounded half-even to 8 places for a DECIMAL(20, 8) column."""
    return _quantize(value, _MONEY_STEP, _MONEY_LIMIT, "DECIMAL(20, 8)")


def quantize_percent(value: Decimal) -> Decimal:
    """``value`` rounded half-even to 4 places for a DECIMAL(10, 4) column."""
    return _quantize(value, _PERCENT_STEP, _PERCENT_LIMIT, "DECIMAL(10, 4)")
