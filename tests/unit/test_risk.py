"""The platform's risk limits (worker/risk.py): each refuses with its reason."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from worker.execution.entry import exposure_rows
from worker.risk import Exposure, RiskLimits, risk_problem
from worker.settings import RiskSettings

LIMITS = RiskLimits.of(
    RiskSettings(
        max_position_notional=Decimal("1000"),
        max_open_positions=3,
        max_open_notional=Decimal("2500"),
        allowed_symbols=("BTCUSDT", "ETHUSDT"),
        short_selling="holdings",
    ),
    None,
)


def check(limits: RiskLimits = LIMITS, **changes: Any) -> str | None:
    args: dict[str, Any] = {
        "symbol": "BTCUSDT",
        "side": "long",
        "quantity": Decimal("0.01"),
        "notional": Decimal("500"),
        "quote_asset": "USDT",
        "base_asset": "BTC",
        "exposure": Exposure(0, Decimal(0)),
        "base_free": None,
    }
    return risk_problem(limits, **{**args, **changes})


def test_within_every_limit_passes() -> None:
    assert check() is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"symbol": "DOGEUSDT"}, "DOGEUSDT is not among the symbols allowed"),
        ({"notional": Decimal("1000.5")}, "notional 1000.5 USDT is above the maximum of 1000"),
        ({"exposure": Exposure(3, Decimal(0))}, "you have 3 positions open, the maximum is 3"),
        ({"exposure": Exposure(2, Decimal("2100"))}, "open notional would be 2600 USDT"),
        (
            {"side": "short", "base_free": Decimal("0.005")},
            "it holds 0.005 free, the position needs 0.01",
        ),
    ],
)
def test_each_limit_refuses_with_its_reason(changes: dict[str, Any], reason: str) -> None:
    problem = check(**changes)
    assert problem is not None and reason in problem


def test_short_selling_off_refuses_every_short_and_holdings_allows_what_is_held() -> None:
    off = RiskLimits.of(RiskSettings(short_selling="off"), None)
    assert "short positions are off" in (check(off, side="short") or "")
    assert check(side="short", base_free=Decimal("0.01")) is None


def test_a_user_override_replaces_only_its_non_null_columns() -> None:
    limits = RiskLimits.of(
        RiskSettings(max_open_positions=3),
        {"max_open_positions": 10, "max_position_notional": None, "allowed_symbols": None},
    )
    assert limits.max_open_positions == 10
    assert limits.max_position_notional == RiskSettings().max_position_notional
    assert check(limits, exposure=Exposure(5, Decimal(0))) is None


def test_an_empty_override_list_allows_no_symbol_but_an_empty_default_allows_all() -> None:
    everything = RiskLimits.of(RiskSettings(allowed_symbols=()), None)
    assert check(everything, symbol="DOGEUSDT") is None
    nothing = RiskLimits.of(RiskSettings(), {"allowed_symbols": []})
    assert "not among the symbols allowed for you (none)" in (check(nothing) or "")


def test_zero_means_no_limit() -> None:
    none = RiskLimits.of(
        RiskSettings(
            max_position_notional=Decimal(0), max_open_positions=0, max_open_notional=Decimal(0)
        ),
        None,
    )
    assert check(none, notional=Decimal("1e9"), exposure=Exposure(10**6, Decimal("1e12"))) is None


def test_the_exposure_is_read_only_when_a_limit_looks_at_it() -> None:
    """A user's other positions are read (at most this many) for the open-positions or the
    open-notional limit; with both off nothing looks at them, and none are read."""
    assert exposure_rows(LIMITS) == 1001
    assert exposure_rows(replace(LIMITS, max_open_positions=5000)) == 5001
    assert exposure_rows(replace(LIMITS, max_open_positions=0)) == 1001  # the notional limit
    assert exposure_rows(replace(LIMITS, max_open_notional=Decimal(0))) == 1001
    off = replace(LIMITS, max_open_positions=0, max_open_notional=Decimal(0))
    assert exposure_rows(off) == 0
