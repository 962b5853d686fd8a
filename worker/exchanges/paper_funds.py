"""Paper balances: what an order holds and what its fills move. Pure: no I/O, no clock.

Binance spot's rules, as the paper exchange applies them per account:

* placing an order holds what it may spend: a buy holds quote (quantity x limit price; a
  market buy the quote its fill needs; a stop buy its stop price made ``slippage_bps``
  worse), plus the largest fee when the fee is paid in quote; a sell holds the base quantity;
* a fill spends from the hold and credits the received asset; its fee leaves the fee asset;
  what an order still holds when it ends (filled, cancelled, expired) goes back to free;
* an account that cannot cover a change is refused with Binance's answer to an order the
  balance cannot pay: ``-2010 Account has insufficient balance for requested action.``
  (binance-spot-api-docs errors.md, "Messages for -1010 ERROR_MSG_RECEIVED, -2010
  NEW_ORDER_REJECTED, -2011 CANCEL_REJECTED, and -2038 ORDER_AMEND_REJECTED": "Not enough
  funds to complete the action.").

A change is a mapping ``asset -> (free delta, locked delta)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_UP, Decimal
from typing import Final

from worker.exchanges.base import ExchangeFill, OrderRejected
from worker.exchanges.filters import SymbolRules
from worker.exchanges.paper_book import COMMISSION_STEP, PaperConfig, PaperOrder, slipped

INSUFFICIENT_BALANCE: Final = "Account has insufficient balance for requested action."
ZERO: Final = Decimal(0)

Balance = tuple[Decimal, Decimal]  # (free, locked)
Changes = dict[str, Balance]  # asset -> (free delta, locked delta)


def insufficient_balance() -> OrderRejected:
    """What Binance answers to an order the account cannot pay for."""
    return OrderRejected(-2010, INSUFFICIENT_BALANCE)


@dataclass(frozen=True, slots=True)
class Hold:
    """What an open order keeps out of its account's free balance."""

    asset: str
    amount: Decimal


def hold_for(order: PaperOrder, rules: SymbolRules, config: PaperConfig, market: Decimal) -> Hold:
    """What placing ``order`` holds (see the module notes); ``market`` is the feed's price."""
    if order.side == "sell":
        return Hold(rules.base_asset, order.quantity)
    if order.price is not None:
        per_unit = order.price
    else:  # market, or a stop without a limit: the taker's price at the market or the stop
        per_unit = slipped(rules, "buy", order.stop_price or market, config.slippage_bps)
    notional = order.quantity * per_unit
    if config.fee_asset == "quote":
        rate = max(config.maker_fee, config.taker_fee)
        notional += (notional * rate).quantize(COMMISSION_STEP, ROUND_UP)
    return Hold(rules.quote_asset, notional)


def opening(hold: Hold) -> Changes:
    """Placing an order: its hold moves from free to locked."""
    return {hold.asset: (-hold.amount, hold.amount)}


def closing(hold: Hold) -> Changes:
    """An order that ends: what it still holds moves back to free."""
    return {hold.asset: (hold.amount, -hold.amount)} if hold.amount else {}


def settle(
    order: PaperOrder, rules: SymbolRules, hold: Hold, fills: Iterable[ExchangeFill]
) -> tuple[Changes, Hold]:
    """The changes ``fills`` of ``order`` (already recorded on it) make, and what the order
    holds after them. An order that is no longer open releases all it held."""
    fills = list(fills)
    quantity = sum((f.qty for f in fills), ZERO)
    quote = sum((f.price * f.qty for f in fills), ZERO)
    spent, received = (quote, quantity) if order.side == "buy" else (quantity, quote)
    received_asset = rules.base_asset if order.side == "buy" else rules.quote_asset
    fees: dict[str, Decimal] = {}
    for f in fills:
        fees[f.commission_asset] = fees.get(f.commission_asset, ZERO) + f.commission
    taken = spent + fees.get(hold.asset, ZERO)
    release = hold.amount if not order.is_open else min(hold.amount, taken)
    changes: Changes = {}
    _add(changes, hold.asset, release - spent, -release)
    if fills:
        _add(changes, received_asset, received, ZERO)
    for asset, fee in fees.items():
        _add(changes, asset, -fee, ZERO)
    return changes, Hold(hold.asset, hold.amount - release)


def merge(*parts: Mapping[str, Balance]) -> Changes:
    """Several changes as one."""
    total: Changes = {}
    for part in parts:
        for asset, (free, locked) in part.items():
            _add(total, asset, free, locked)
    return total


def applied(balances: Mapping[str, Balance], changes: Mapping[str, Balance]) -> dict[str, Balance]:
    """``balances`` after ``changes``; OrderRejected(-2010) when an asset would go below zero."""
    after = dict(balances)
    for asset, (d_free, d_locked) in changes.items():
        free, locked = after.get(asset, (ZERO, ZERO))
        free, locked = free + d_free, locked + d_locked
        if free < 0 or locked < 0:
            raise insufficient_balance()
        after[asset] = (free, locked)
    return after


def _add(changes: Changes, asset: str, free: Decimal, locked: Decimal) -> None:
    old_free, old_locked = changes.get(asset, (ZERO, ZERO))
    changes[asset] = (old_free + free, old_locked + locked)
