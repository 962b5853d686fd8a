"""Symbol filters: parsing exchangeInfo (worker.exchanges.binance_answers), rounding, and the
local pre-check (worker.exchanges.filters)."""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.exchanges.base import FilterViolation, OrderRejected, OrderRequest
from worker.exchanges.binance_answers import rules_from_exchange_info, symbol_rules
from worker.exchanges.filters import (
    SymbolRules,
    check_order,
    format_decimal,
    round_price,
    round_quantity,
)

D = Decimal
BTC_INFO = {
    "symbol": "BTCUSDT",
    "status": "TRADING",
    "baseAsset": "BTC",
    "quoteAsset": "USDT",
    "filters": [
        {"filterType": "PRICE_FILTER", "minPrice": "0.01", "tickSize": "0.01000000"},
        {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000", "stepSize": "0.00001"},
        {"filterType": "ICEBERG_PARTS", "limit": 10},
        {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True},
    ],
}  # fmt: skip
RULES = symbol_rules(BTC_INFO)


def test_parses_exchange_info_symbol() -> None:
    expected = SymbolRules(
        symbol="BTCUSDT",
        base_asset="BTC",
        quote_asset="USDT",
        tick_size=D("0.01"),
        step_size=D("0.00001"),
        min_qty=D("0.00001"),
        max_qty=D("9000"),
        min_notional=D("5"),
    )
    assert expected == RULES


def test_order_caps_are_read() -> None:
    """filters.md MAX_NUM_ALGO_ORDERS and MAX_NUM_ORDER_LISTS (0 when absent: no rule)."""
    caps = [
        {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
        {"filterType": "MAX_NUM_ORDER_LISTS", "maxNumOrderLists": 20},
    ]
    rules = symbol_rules(dict(BTC_INFO, filters=[*BTC_INFO["filters"], *caps]))
    assert (rules.max_algo_orders, rules.max_order_lists) == (5, 20)
    assert (RULES.max_algo_orders, RULES.max_order_lists) == (0, 0)


def test_legacy_min_notional_filter_is_read() -> None:
    info = dict(BTC_INFO, filters=[{"filterType": "MIN_NOTIONAL", "minNotional": "10.0"}])
    rules = symbol_rules(info)
    assert rules.min_notional == D("10") and rules.step_size == 0 and rules.tick_size == 0


def test_rules_from_exchange_info_finds_the_symbol_or_rejects() -> None:
    payload = {"symbols": [dict(BTC_INFO, symbol="ETHUSDT"), BTC_INFO]}
    assert rules_from_exchange_info(payload, "BTCUSDT") == RULES
    with pytest.raises(OrderRejected) as err:
        rules_from_exchange_info(payload, "DOGEUSDT")
    assert err.value.code == -1121


@pytest.mark.parametrize(
    ("qty", "expected"),
    [
        ("0.123456789", "0.12345"),
        ("0.00001", "0.00001"),
        ("0.000019999", "0.00001"),
        ("0.000009", "0.00000"),
        ("5", "5"),
        ("1.000000000", "1.00000"),
    ],
)
def test_round_quantity_floors_to_step(qty: str, expected: str) -> None:
    assert round_quantity(RULES, D(qty)) == D(expected)


@pytest.mark.parametrize(
    ("price", "rounding", "expected"),
    [
        ("50000.005", None, "50000.01"),
        ("50000.004", None, "50000.00"),
        ("50000.009", ROUND_DOWN, "50000.00"),
        ("50000.001", ROUND_UP, "50000.01"),
        ("0.5", None, "0.50"),
    ],
)
def test_round_price_to_tick(price: str, rounding: str | None, expected: str) -> None:
    result = (
        round_price(RULES, D(price)) if rounding is None else round_price(RULES, D(price), rounding)
    )
    assert result == D(expected)
    assert format_decimal(result) == expected


def test_zero_step_or_tick_means_no_rounding() -> None:
    rules = SymbolRules("X", "A", "B", D(0), D(0), D(0), D(0), D(0))
    assert round_quantity(rules, D("1.23456789")) == D("1.23456789")
    assert round_price(rules, D("1.23456789")) == D("1.23456789")


def test_format_decimal_is_plain() -> None:
    assert format_decimal(D("1E+1")) == "10"
    assert format_decimal(D("1E-5")) == "0.00001"


@pytest.mark.parametrize(
    ("qty", "price", "quote", "reason"),
    [
        ("0.000001", "50000", None, "below minQty"),
        ("-1", "50000", None, "must be positive"),
        ("9001", "50000", None, "above maxQty"),
        ("0.000015", "50000", None, "not a multiple of 0.00001"),
        ("0.001", "50000.001", None, "not a multiple of tickSize"),
        ("0.001", "0", None, "price must be positive"),
        ("0.00009", "50000", None, "notional 4.5"),
        (None, None, "4.99", "quote quantity 4.99 below minNotional 5"),
        (None, None, "0", "quote quantity must be positive"),
    ],
)
def test_check_order_names_the_broken_rule(
    qty: str | None, price: str | None, quote: str | None, reason: str
) -> None:
    with pytest.raises(FilterViolation) as err:
        check_order(
            RULES,
            None if qty is None else D(qty),
            None if price is None else D(price),
            quote_quantity=None if quote is None else D(quote),
        )
    assert reason in str(err.value)
    assert err.value.code is None and isinstance(err.value, OrderRejected)


@pytest.mark.parametrize(
    ("qty", "price", "quote"),
    [
        ("0.0001", "50000", None),
        ("0.00001", None, None),
        (None, None, "5"),
        ("0.0001", "50000", "5"),
    ],
)
def test_check_order_accepts_valid_orders(
    qty: str | None, price: str | None, quote: str | None
) -> None:
    check_order(
        RULES,
        None if qty is None else D(qty),
        None if price is None else D(price),
        quote_quantity=None if quote is None else D(quote),
    )


@given(
    st.decimals(min_value=D("0"), max_value=D("10000"), places=10, allow_nan=False),
    st.sampled_from([D("0.00001"), D("0.001"), D("1"), D("10")]),
)
def test_round_quantity_is_a_floor_onto_the_step_grid(qty: Decimal, step: Decimal) -> None:
    rules = SymbolRules("X", "A", "B", D("0.01"), step, D(0), D(0), D(0))
    rounded = round_quantity(rules, qty)
    assert rounded <= qty < rounded + step
    assert rounded % step == 0


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"side": "long"}, "side must be buy or sell"),
        ({"type": "oco"}, "unknown order type"),
        ({"client_order_id": "has space"}, "client_order_id must match"),
        ({"client_order_id": "x" * 37}, "client_order_id must match"),
        ({"quote_quantity": D("10")}, "exactly one of quantity"),
        ({"type": "limit"}, "a limit order needs a price"),
        ({"type": "stop_loss"}, "needs a stop_price"),
        ({"price": D("1")}, "a market order takes no price"),
    ],
)
def test_order_request_rejects_malformed_requests(kwargs: dict[str, object], problem: str) -> None:
    base: dict[str, object] = {
        "symbol": "BTCUSDT",
        "side": "buy",
        "type": "market",
        "client_order_id": "pos-1_entry",
        "quantity": D("0.01"),
    }
    with pytest.raises(ValueError, match=problem):
        OrderRequest(**{**base, **kwargs})  # type: ignore[arg-type]  # malformed on purpose
