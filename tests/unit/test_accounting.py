"""worker/accounting.py: the worked example of the conventions, fee cases, and invariants.

Expected figures are written out by hand (or computed from the raw fills by an independent
oracle in the property tests), never taken from the module under test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from decimal import ROUND_DOWN, Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from worker.accounting import (
    AccountingError,
    Fill,
    FillSide,
    Market,
    PositionFigures,
    Side,
    apply,
    fee_in_quote,
    fold,
    quantize_money,
    quantize_percent,
    sellable_quantity,
    validate_exit_quantity,
)

D = Decimal
BTCUSDT = Market("BTC", "USDT")
FAST = settings(max_examples=200, deadline=None)


def fill(side: FillSide, price: str, qty: str, fee: str = "0", asset: str = "USDT") -> Fill:
    """A fill with ``fee`` in ``asset`` (quote or base), valued in quote at the fill's price."""
    quote = fee_in_quote(D(fee), asset, BTCUSDT, D(price))
    return Fill(side, D(price), D(qty), D(fee), asset, quote)


def buy(price: str, qty: str, fee: str = "0", asset: str = "USDT") -> Fill:
    return fill("buy", price, qty, fee, asset)


def sell(price: str, qty: str, fee: str = "0", asset: str = "USDT") -> Fill:
    return fill("sell", price, qty, fee, asset)


# The worked example: long BTCUSDT, fee 0.1 % paid in USDT.
WORKED = [
    buy("100", "0.5", "0.05"),
    buy("110", "0.5", "0.055"),
    sell("120", "0.4", "0.048"),
    sell("90", "0.6", "0.054"),
]


def test_worked_example_after_the_partial_exit() -> None:
    f = fold("long", BTCUSDT, WORKED[:3])
    assert f.entry_price == D("105")
    assert f.entry_fees == D("0.105")
    assert f.avg_cost == D("105.105")
    assert f.realized_pnl == D("5.910")
    assert f.held_quantity == D("0.6")
    assert f.entry_cost == D("105.105")
    assert not f.is_flat
    assert sellable_quantity(f) == D("0.6")


def test_worked_example_closed() -> None:
    f = fold("long", BTCUSDT, WORKED)
    assert f.is_flat and f.held_quantity == 0
    assert f.entry_price == D("105")  # exits never move it
    assert f.avg_cost == D("105.105")
    assert f.realized_pnl == D("-3.207")
    assert quantize_percent(f.realized_pnl_percent) == D("-3.0512")
    assert (f.exit_quantity, f.exit_value, f.exit_price) == (D("1.0"), D("102.0"), D("102"))
    assert f.fees_paid == D("0.207")
    assert f.fill_count == 4


def test_worked_example_each_exit_realizes_the_reference_amount() -> None:
    before = fold("long", BTCUSDT, WORKED[:3])
    after = apply(before, WORKED[3])
    assert after.realized_pnl - before.realized_pnl == D("-9.117")


# The worked example mirrored: a short entered by sells, covered by buys.
SHORT = [
    sell("100", "0.5", "0.05"),
    sell("110", "0.5", "0.055"),
    buy("90", "0.4", "0.036"),
    buy("120", "0.6", "0.072"),
]


@pytest.mark.parametrize(
    ("fills", "held", "avg_cost", "realized"),
    [
        (SHORT[:2], "1.0", "104.895", "0"),  # net proceeds per unit owed
        (SHORT[:3], "0.6", "104.895", "5.922"),  # 0.4*104.895 - 36 - 0.036
        (SHORT, "0", "104.895", "-3.213"),  # + 62.937 - 72 - 0.072
    ],
)
def test_short_mirrors_long(fills: list[Fill], held: str, avg_cost: str, realized: str) -> None:
    f = fold("short", BTCUSDT, fills)
    assert (f.held_quantity, f.avg_cost, f.realized_pnl) == (D(held), D(avg_cost), D(realized))
    assert f.entry_price == D("105") and f.entry_cost == D("105.105")


def test_short_closed_percent_and_identity() -> None:
    f = fold("short", BTCUSDT, SHORT)
    assert f.realized_pnl == f.entry_value - f.entry_fees - f.exit_value - f.exit_fees
    assert quantize_percent(f.realized_pnl_percent) == D("-3.0569")  # -3.213 / 105.105


def test_fee_in_base_reduces_the_holding_and_the_final_exit_closes_flat() -> None:
    entry = buy("100", "1.0", "0.001", "BTC")
    assert entry.fee_quote == D("0.1")
    f = fold("long", BTCUSDT, [entry])
    assert f.held_quantity == D("0.999")
    assert (f.entry_quantity, f.entry_cost, f.fees_paid) == (D("1.0"), D("100"), D("0.1"))
    assert quantize_money(f.avg_cost) == D("100.10010010")  # 100 spread over the 0.999 held
    with pytest.raises(AccountingError, match=r"exceeds the 0\.999 BTC held"):
        apply(f, sell("110", "1.0", "0.11"))
    closed = apply(f, sell("110", "0.999", "0.10989"))
    assert closed.is_flat
    assert closed.realized_pnl == D("109.89") - D("0.10989") - D("100")


def test_fee_in_base_on_an_exit_is_taken_from_the_holding() -> None:
    f = fold("long", BTCUSDT, [buy("100", "1.0")])
    validate_exit_quantity(f, D("0.999"), base_fee=D("0.001"))
    with pytest.raises(AccountingError):
        validate_exit_quantity(f, D("1.0"), base_fee=D("0.001"))
    closed = apply(f, sell("120", "0.999", "0.001", "BTC"))
    assert closed.is_flat and closed.exit_fees == 0 and closed.fees_paid == D("0.12")
    assert closed.realized_pnl == D("0.999") * 120 - 100  # the fee is in the quantity


def test_short_buy_back_with_base_fee_covers_quantity_minus_fee() -> None:
    f = fold("short", BTCUSDT, [sell("100", "1.0")])
    closed = apply(f, buy("90", "1.001", "0.001", "BTC"))
    assert closed.is_flat
    assert closed.realized_pnl == D(100) - D("90.09")
    validate_exit_quantity(f, D("1.001"), base_fee=D("0.001"))
    with pytest.raises(AccountingError, match="owed"):
        apply(f, buy("90", "1.002", "0.001", "BTC"))


def test_fee_in_third_asset_is_valued_at_the_fill_and_leaves_quantity_alone() -> None:
    bnb_fee = fee_in_quote(D("0.0002"), "BNB", BTCUSDT, D("100"), D("300"))
    assert bnb_fee == D("0.06")
    f = fold("long", BTCUSDT, [Fill("buy", D(100), D(1), D("0.0002"), "BNB", bnb_fee)])
    assert (f.held_quantity, f.entry_cost, f.avg_cost, f.fees_paid) == (
        D(1), D("100.06"), D("100.06"), D("0.06"),
    )  # fmt: skip
    # The exit's BNB fee is valued at the exit's time (BNB now 600), the entry's is not revalued.
    exit_fee = fee_in_quote(D("0.0002"), "bnb", BTCUSDT, D("110"), D("600"))
    closed = apply(f, Fill("sell", D(110), D(1), D("0.0002"), "BNB", exit_fee))
    assert closed.realized_pnl == D(110) - D("0.12") - D("100.06")
    with pytest.raises(AccountingError, match="needs the BNB/USDT price"):
        fee_in_quote(D("0.0002"), "BNB", BTCUSDT, D("100"))


def test_fee_in_quote_for_quote_base_and_zero_fees() -> None:
    assert fee_in_quote(D("0.1"), "USDT", BTCUSDT, D("100")) == D("0.1")
    assert fee_in_quote(D("0.001"), "BTC", BTCUSDT, D("100")) == D("0.1")
    assert fee_in_quote(D(0), "", BTCUSDT, D("100")) == 0


def test_scale_in_after_partial_exit_reweights_with_the_remaining_quantity() -> None:
    f = fold("long", BTCUSDT, [buy("100", "1"), sell("120", "0.5"), buy("130", "0.5")])
    assert f.entry_price == D("115")  # (100*0.5 + 130*0.5) / 1.0, not (100 + 65) / 1.5
    assert (f.entry_quantity, f.held_quantity, f.avg_cost) == (D("1.5"), D("1.0"), D("115"))
    assert f.realized_pnl == D("10")
    closed = apply(f, sell("110", "1.0"))
    assert closed.realized_pnl == D("5") == closed.exit_value - closed.entry_cost
    assert closed.entry_price == D("115")


@pytest.mark.parametrize(
    ("side", "fills", "message"),
    [
        ("long", [buy("100", "1"), sell("100", "1.00000001")], "exceeds the 1 BTC held"),
        ("long", [sell("100", "1")], "exceeds the 0 BTC held"),
        ("long", [buy("100", "1"), sell("1", "1"), sell("1", "0.1")], "exceeds the 0 BTC held"),
        ("short", [sell("100", "1"), buy("100", "2")], "exceeds the 1 BTC owed"),
        ("long", [buy("100", "0.001", "0.001", "BTC")], "eats the whole fill"),
    ],
)
def test_impossible_fills_raise(side: Side, fills: list[Fill], message: str) -> None:
    with pytest.raises(AccountingError, match=message):
        fold(side, BTCUSDT, fills)


@pytest.mark.parametrize("qty", ["0", "-1", "0.60000001"])
def test_validate_exit_quantity_refuses(qty: str) -> None:
    f = fold("long", BTCUSDT, WORKED[:3])
    with pytest.raises(AccountingError):
        validate_exit_quantity(f, D(qty))


def test_validate_exit_quantity_accepts_up_to_the_holding() -> None:
    f = fold("long", BTCUSDT, WORKED[:3])
    validate_exit_quantity(f, D("0.6"))
    validate_exit_quantity(f, D("0.00000001"))


# The calls below are ill-typed on purpose (floats, a tuple for a Fill): what is tested is
# that they fail at run time too, hence their `type: ignore[arg-type]`.
@pytest.mark.parametrize(
    "make",
    [
        lambda: Fill("buy", 100.0, D(1), D(0), "USDT", D(0)),  # type: ignore[arg-type]
        lambda: Fill("buy", D(100), D(1), D(0), "USDT", 0.0),  # type: ignore[arg-type]
        lambda: fee_in_quote(0.1, "USDT", BTCUSDT, D(1)),  # type: ignore[arg-type]
        lambda: fee_in_quote(D(1), "BNB", BTCUSDT, D(1), 300.0),  # type: ignore[arg-type]
        lambda: quantize_money(1.5),  # type: ignore[arg-type]
        lambda: validate_exit_quantity(PositionFigures("long", BTCUSDT), 0.5),  # type: ignore[arg-type]
        lambda: apply(PositionFigures("long", BTCUSDT), ("buy", D(1), D(1))),  # type: ignore[arg-type]
    ],
)
def test_floats_and_non_fills_are_type_errors(make: Callable[[], object]) -> None:
    with pytest.raises(TypeError):
        make()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"side": "hold"},
        {"price": D(0)},
        {"quantity": D("-1")},
        {"fee": D("-0.1")},
        {"fee_quote": D("NaN")},
        {"price": D("Infinity")},
        {"fee_asset": ""},
    ],
)
def test_bad_fills_are_refused(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "side": "buy", "price": D(1), "quantity": D(1), "fee": D("0.1"), "fee_asset": "USDT",
        "fee_quote": D("0.1"),
    }  # fmt: skip
    with pytest.raises(AccountingError):
        Fill(**{**base, **kwargs})  # type: ignore[arg-type]  # bad values on purpose


def test_bad_market_and_side_are_refused() -> None:
    for base, quote in [("BTC", "btc"), ("", "USDT"), ("BTC", "")]:
        with pytest.raises(AccountingError):
            Market(base, quote)
    with pytest.raises(AccountingError):
        PositionFigures("flat", BTCUSDT)  # type: ignore[arg-type]  # not a Side, on purpose
    assert BTCUSDT.symbol == "BTCUSDT"


@pytest.mark.parametrize(
    ("value", "money", "percent"),
    [
        ("1.123456785", "1.12345678", "1.1235"),  # half-even: ...785 -> ...78
        ("1.123456775", "1.12345678", "1.1235"),
        ("-3.05122496551", "-3.05122497", "-3.0512"),
        ("-0.000000001", "0E-8", "0.0000"),  # no negative zero
        ("0.00005", "0.00005000", "0.0000"),  # half-even to 4 dp: 0.0000
        ("0.00015", "0.00015000", "0.0002"),
    ],
)
def test_quantize_half_even(value: str, money: str, percent: str) -> None:
    assert str(quantize_money(D(value))) == money
    assert str(quantize_percent(D(value))) == percent


def test_quantize_refuses_what_the_column_cannot_hold() -> None:
    with pytest.raises(AccountingError, match="DECIMAL"):
        quantize_money(D("1e12"))
    with pytest.raises(AccountingError, match="DECIMAL"):
        quantize_percent(D("-1000000"))
    assert quantize_percent(D("999999.99994")) == D("999999.9999")


def test_caller_decimal_context_does_not_change_results() -> None:
    import decimal

    with decimal.localcontext(decimal.Context(prec=3, rounding=decimal.ROUND_DOWN)):
        f = fold("long", BTCUSDT, WORKED)
        pnl, percent = f.realized_pnl, f.realized_pnl_percent
    assert pnl == D("-3.207")
    assert quantize_percent(percent) == D("-3.0512")


# ---- properties ----------------------------------------------------------------------------

PRICES = st.decimals(min_value=D("0.01"), max_value=D("100000"), places=8)
QUANTITIES = st.decimals(min_value=D("0.0001"), max_value=D("1000"), places=8)
FEE_RATES = st.sampled_from([D(0), D("0.00075"), D("0.001"), D("0.0025")])
STEP = D("1e-8")


def _fee(
    draw: st.DrawFn, price: Decimal, qty: Decimal, in_base: bool
) -> tuple[str, Decimal, Decimal]:
    """(asset, fee, fee_quote) for a fill: quote, a third asset, or (if allowed) the base."""
    rate = draw(FEE_RATES)
    asset = draw(st.sampled_from(["USDT", "BNB", "BTC"] if in_base else ["USDT", "BNB"]))
    if asset == "BTC":
        fee = (qty * rate).quantize(STEP)
        return asset, fee, fee * price
    quote = (price * qty * rate).quantize(STEP)
    return (
        (asset, quote, quote) if asset == "USDT" else (asset, (quote / 300).quantize(STEP), quote)
    )


def _legs(side: Side) -> tuple[FillSide, FillSide]:
    """The fill sides of (entries, exits)."""
    return ("buy", "sell") if side == "long" else ("sell", "buy")


@st.composite
def scenarios(
    draw: st.DrawFn, close: bool = True, base_fees: bool = True
) -> tuple[Side, list[Fill]]:
    """A valid random position: entries, partial exits, scale-ins; closed when ``close``."""
    side: Side = draw(st.sampled_from(["long", "short"]))
    enter, leave = _legs(side)
    sign = 1 if side == "long" else -1
    fills: list[Fill] = []
    held = D(0)
    for _ in range(draw(st.integers(1, 6))):
        price = draw(PRICES)
        if held and draw(st.booleans()):
            consumed = STEP * draw(st.integers(1, int(held / STEP)))
            asset, fee, quote = _fee(draw, price, consumed, base_fees)
            qty = consumed - sign * fee if asset == "BTC" else consumed
            assume(qty > 0)
            fills.append(Fill(leave, price, qty, fee, asset, quote))
            held -= consumed
        else:
            qty = draw(QUANTITIES)
            asset, fee, quote = _fee(draw, price, qty, base_fees)
            fills.append(Fill(enter, price, qty, fee, asset, quote))
            held += qty - sign * fee if asset == "BTC" else qty
    if close and held:
        fills.append(Fill(leave, draw(PRICES), held, D(0), "USDT", D(0)))
    return side, fills


def _quote_fees(fills: list[Fill]) -> Decimal:
    return sum((x.fee_quote for x in fills if x.fee_asset != "BTC"), D(0))


def _value(fills: list[Fill]) -> Decimal:
    return sum((x.price * x.quantity for x in fills), D(0))


@FAST
@given(scenarios())
def test_cash_is_conserved_once_flat(scenario: tuple[Side, list[Fill]]) -> None:
    side, fills = scenario
    f = fold(side, BTCUSDT, fills)
    entry_side, _ = _legs(side)
    entries = [x for x in fills if x.side == entry_side]
    exits = [x for x in fills if x.side != entry_side]
    entry_cost = _value(entries) + _quote_fees(entries)
    assert f.is_flat
    assert f.entry_cost == entry_cost
    if side == "long":
        assert f.realized_pnl == _value(exits) - entry_cost - _quote_fees(exits)
    else:
        expected = _value(entries) - _quote_fees(entries) - _value(exits) - _quote_fees(exits)
        assert f.realized_pnl == expected
    assert f.fees_paid == sum((x.fee_quote for x in fills), D(0))


@FAST
@given(scenarios(close=False))
def test_holdings_never_negative_and_exits_never_move_the_averages(
    scenario: tuple[Side, list[Fill]],
) -> None:
    side, fills = scenario
    f = PositionFigures(side, BTCUSDT)
    for x in fills:
        after = apply(f, x)
        assert after.held_quantity >= 0 and after.entry_cost >= 0 and after.fees_paid >= 0
        if after.exit_quantity != f.exit_quantity:  # an exit
            assert (after.entry_price, after.avg_cost) == (f.entry_price, f.avg_cost)
        f = after
    with pytest.raises(AccountingError):
        validate_exit_quantity(f, f.held_quantity + STEP)


@FAST
@given(scenarios(close=False))
def test_all_figures_are_decimals(scenario: tuple[Side, list[Fill]]) -> None:
    side, fills = scenario
    f = fold(side, BTCUSDT, fills)
    names = [x.name for x in dataclasses.fields(f) if x.name not in ("side", "market")]
    names.remove("fill_count")
    names += ["entry_cost", "exit_price", "realized_pnl", "realized_pnl_percent"]
    for name in names:
        assert type(getattr(f, name)) is Decimal, name
    assert quantize_money(f.realized_pnl).as_tuple().exponent == -8


def _split(x: Fill, share: Decimal) -> list[Fill]:
    """``x`` as two fills at the same price, quantity and fees divided by ``share``."""
    q1 = min(x.quantity - STEP, max(STEP, (x.quantity * share).quantize(STEP)))
    f1, fq1 = ((v * share).quantize(STEP, ROUND_DOWN) for v in (x.fee, x.fee_quote))
    first = dataclasses.replace(x, quantity=q1, fee=f1, fee_quote=fq1)
    rest = dataclasses.replace(
        x, quantity=x.quantity - q1, fee=x.fee - f1, fee_quote=x.fee_quote - fq1
    )
    return [first, rest]


@FAST
@given(st.booleans().flatmap(lambda close: scenarios(close=close)), st.data())
def test_splitting_a_fill_at_one_price_changes_nothing(
    scenario: tuple[Side, list[Fill]], data: st.DataObject
) -> None:
    side, fills = scenario
    i = data.draw(st.integers(0, len(fills) - 1))
    assume(fills[i].quantity >= 2 * STEP)
    share = data.draw(st.decimals(min_value=D("0.01"), max_value=D("0.99"), places=2))
    parts_of_i = _split(fills[i], share)
    assume(all(p.quantity > p.fee for p in parts_of_i if p.fee_asset == "BTC"))
    split = fills[:i] + parts_of_i + fills[i + 1 :]
    whole, parts = fold(side, BTCUSDT, fills), fold(side, BTCUSDT, split)
    for name in ("held_quantity", "entry_quantity", "entry_cost", "exit_value", "fees_paid"):
        assert getattr(parts, name) == getattr(whole, name), name
    if whole.is_flat:
        assert parts.realized_pnl == whole.realized_pnl
    # A partial exit divides once more (50 digits): equal to far below a satoshi.
    for name in ("realized_pnl", "entry_price", "avg_cost"):
        assert abs(getattr(parts, name) - getattr(whole, name)) < D("1e-30"), name


@FAST
@given(scenarios(close=False), st.permutations(range(6)))
def test_entry_order_does_not_matter_before_any_exit(
    scenario: tuple[Side, list[Fill]], order: list[int]
) -> None:
    side, fills = scenario
    entry_side, exit_side = _legs(side)
    entries = [x for x in fills if x.side == entry_side]
    shuffled = [entries[i] for i in order if i < len(entries)]
    a, b = fold(side, BTCUSDT, entries), fold(side, BTCUSDT, shuffled)
    assert (a.entry_price, a.avg_cost, a.entry_cost, a.held_quantity) == (
        b.entry_price, b.avg_cost, b.entry_cost, b.held_quantity,
    )  # fmt: skip
    close = Fill(exit_side, D("123.45"), a.held_quantity, D(0), "USDT", D(0))
    assert apply(a, close).realized_pnl == apply(b, close).realized_pnl


@FAST
@given(scenarios(base_fees=False))
def test_long_and_short_of_the_same_trades_sum_to_minus_twice_the_fees(
    scenario: tuple[Side, list[Fill]],
) -> None:
    side, fills = scenario
    flip: dict[FillSide, FillSide] = {"buy": "sell", "sell": "buy"}
    mirrored = [dataclasses.replace(x, side=flip[x.side]) for x in fills]
    other: Side = "short" if side == "long" else "long"
    total = fold(side, BTCUSDT, fills).realized_pnl + fold(other, BTCUSDT, mirrored).realized_pnl
    assert total == -2 * _quote_fees(fills)
