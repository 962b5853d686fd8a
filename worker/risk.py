"""Risk limits: what the platform lets one user's positions do. Pure: no I/O.

Defaults come from the ``[risk]`` settings; an operator overrides any of them per user in
``user_risk_limits`` (a NULL column keeps the default). The engine checks a new position
against them before anything is sent (``worker/execution/entry.py``); a refusal is
``created -> failed`` with the reason :func:`risk_problem` gives. Notional amounts are in
the symbol's quote asset; 0 means "no limit".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from worker.settings import RiskSettings


@dataclass(frozen=True, slots=True)
class RiskLimits:
    max_position_notional: Decimal
    max_open_positions: int
    max_open_notional: Decimal
    allowed_symbols: tuple[str, ...] | None  # None: every symbol; empty: none
    short_selling: str  # off | holdings | any

    @classmethod
    def of(cls, defaults: RiskSettings, override: Mapping[str, Any] | None) -> RiskLimits:
        """The defaults, with every non-NULL column of the user's override row. The
        configured ``allowed_symbols`` list empty means every symbol; a user's override
        that is an empty array means none (an operator stopping one user's new entries)."""
        row = {k: v for k, v in (override or {}).items() if v is not None}
        symbols = row.get("allowed_symbols", defaults.allowed_symbols or None)
        return cls(
            max_position_notional=Decimal(
                row.get("max_position_notional", defaults.max_position_notional)
            ),
            max_open_positions=int(row.get("max_open_positions", defaults.max_open_positions)),
            max_open_notional=Decimal(row.get("max_open_notional", defaults.max_open_notional)),
            allowed_symbols=None if symbols is None else tuple(symbols),
            short_selling=str(row.get("short_selling", defaults.short_selling)),
        )


@dataclass(frozen=True, slots=True)
class Exposure:
    """What the user already has: positions not final, and their notional (this one apart)."""

    open_positions: int
    open_notional: Decimal


def risk_problem(
    limits: RiskLimits,
    *,
    symbol: str,
    side: str,
    quantity: Decimal,
    notional: Decimal,
    quote_asset: str,
    base_asset: str,
    exposure: Exposure,
    base_free: Decimal | None,
) -> str | None:
    """Why the platform refuses this entry, or None. ``base_free``: the account's free
    balance of the base asset (None on paper, which holds no balances)."""
    if limits.allowed_symbols is not None and symbol not in limits.allowed_symbols:
        allowed = ", ".join(limits.allowed_symbols) or "none"
        return f"risk limit: {symbol} is not among the symbols allowed for you ({allowed})"
    if limits.max_position_notional and notional > limits.max_position_notional:
        return (
            f"risk limit: the position's notional {_amount(notional)} {quote_asset} is above"
            f" the maximum of {_amount(limits.max_position_notional)} per position"
        )
    if limits.max_open_positions and exposure.open_positions >= limits.max_open_positions:
        return (
            f"risk limit: you have {exposure.open_positions} positions open, the maximum is"
            f" {limits.max_open_positions}"
        )
    total = exposure.open_notional + notional
    if limits.max_open_notional and total > limits.max_open_notional:
        return (
            f"risk limit: your open notional would be {_amount(total)} {quote_asset}, above"
            f" the maximum of {_amount(limits.max_open_notional)}"
        )
    if side == "short":
        if limits.short_selling == "off":
            return "risk limit: short positions are off for you (spot: a short sells the asset)"
        if limits.short_selling == "holdings" and base_free is not None and base_free < quantity:
            return (
                f"risk limit: a spot short sells {base_asset} the account holds; it holds"
                f" {_amount(base_free)} free, the position needs {_amount(quantity)}"
            )
    return None


def _amount(value: Decimal) -> str:
    """A decimal as people write it: no exponent, no trailing zeros."""
    text = f"{value.normalize():f}"
    return text
