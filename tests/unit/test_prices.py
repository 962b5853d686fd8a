"""worker/exchanges/prices.py: fixed and synthetic price feeds (no network, no wall clock)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from worker.exchanges import binance
from worker.exchanges.base import OrderRejected, PriceFeed
from worker.exchanges.prices import (
    DEFAULT_PRICES,
    MAX_CATCH_UP_STEPS,
    BinancePublicPrices,
    FixedPrices,
    SyntheticPrices,
)

pytestmark = pytest.mark.anyio
D = Decimal


class ManualClock:
    """Epoch milliseconds that move only when a test says so."""

    def __init__(self, ms: int = 1_700_000_000_000) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def path(feed: SyntheticPrices, symbol: str, n: int) -> list[Decimal]:
    return [feed.step()[symbol] for _ in range(n)]


# -- FixedPrices ---------------------------------------------------------------------------------


async def test_fixed_prices_answer_what_was_set() -> None:
    feed = FixedPrices({"BTCUSDT": D("100")})
    assert await feed.price("BTCUSDT") == D("100")
    feed.set("BTCUSDT", D("101.5"))
    assert await feed.price("BTCUSDT") == D("101.5")


async def test_fixed_prices_unknown_symbol_is_binance_invalid_symbol() -> None:
    with pytest.raises(OrderRejected) as err:
        await FixedPrices().price("FOOUSDT")
    assert err.value.code == -1121


@pytest.mark.parametrize("bad", [D("0"), D("-1"), D("NaN")])
def test_fixed_prices_refuse_non_positive_prices(bad: Decimal) -> None:
    with pytest.raises(ValueError):
        FixedPrices({"BTCUSDT": bad})


def test_fixed_prices_refuse_floats() -> None:
    with pytest.raises(TypeError):
        FixedPrices().set("BTCUSDT", 100.0)  # type: ignore[arg-type]  # a float, on purpose


# -- SyntheticPrices -----------------------------------------------------------------------------


async def test_synthetic_starts_at_the_configured_prices() -> None:
    feed = SyntheticPrices({"BTCUSDT": D("50000"), "ETHUSDT": D("3000.004")})
    assert await feed.price("BTCUSDT") == D("50000.00")
    assert await feed.price("ETHUSDT") == D("3000.00")  # on the 0.01 tick grid
    assert feed.symbols == ("BTCUSDT", "ETHUSDT")
    assert set(SyntheticPrices().symbols) == set(DEFAULT_PRICES)


def test_same_seed_same_path_other_seed_other_path() -> None:
    one, two, other = SyntheticPrices(seed=3), SyntheticPrices(seed=3), SyntheticPrices(seed=4)
    first = path(one, "BTCUSDT", 50)
    assert first == path(two, "BTCUSDT", 50)
    assert first != path(other, "BTCUSDT", 50)
    assert len(set(first)) > 10  # it does walk


def test_a_symbols_path_does_not_depend_on_the_other_symbols() -> None:
    alone = SyntheticPrices({"BTCUSDT": D("50000")}, seed=9)
    crowded = SyntheticPrices({"ETHUSDT": D("3000"), "BTCUSDT": D("50000")}, seed=9)
    assert path(alone, "BTCUSDT", 30) == path(crowded, "BTCUSDT", 30)


def test_walk_stays_decimal_on_the_tick_and_within_step_bps() -> None:
    feed = SyntheticPrices(
        {"BTCUSDT": D("50000"), "XYZUSDT": D("2.5")}, step_bps=50, ticks={"XYZUSDT": D("0.001")}
    )
    before = feed.current("BTCUSDT")
    for _ in range(200):
        prices = feed.step()
        btc, xyz = prices["BTCUSDT"], prices["XYZUSDT"]
        assert isinstance(btc, Decimal) and isinstance(xyz, Decimal)
        assert btc % D("0.01") == 0 and xyz % D("0.001") == 0
        assert abs(btc - before) <= before * D("0.005") + D("0.01")
        before = btc


def test_price_never_falls_below_one_tick() -> None:
    feed = SyntheticPrices({"DUSTUSDT": D("0.02")}, step_bps=9_000, seed=1)
    assert min(path(feed, "DUSTUSDT", 300)) >= D("0.01")


def test_zero_step_bps_keeps_prices_still() -> None:
    feed = SyntheticPrices({"BTCUSDT": D("100")}, step_bps=0)
    assert path(feed, "BTCUSDT", 5) == [D("100.00")] * 5


def test_advance_is_n_steps() -> None:
    stepped, advanced = SyntheticPrices(seed=5), SyntheticPrices(seed=5)
    for _ in range(7):
        stepped.step()
    assert advanced.advance(7) == {s: stepped.current(s) for s in stepped.symbols}
    assert advanced.steps == 7


async def test_script_plays_then_the_walk_resumes_from_its_last_price() -> None:
    feed = SyntheticPrices({"BTCUSDT": D("100")}, seed=2)
    feed.script("BTCUSDT", [D("99"), D("95.555"), D("90")])
    assert path(feed, "BTCUSDT", 3) == [D("99.00"), D("95.56"), D("90.00")]
    after = path(feed, "BTCUSDT", 10)
    assert abs(after[0] - D("90")) <= D("90") * D("0.002") + D("0.01")
    assert set(after) != {D("90.00")}


def test_script_with_hold_stays_until_released() -> None:
    feed = SyntheticPrices({"BTCUSDT": D("100")}, seed=2)
    feed.script("BTCUSDT", [D("80")], hold=True)
    assert path(feed, "BTCUSDT", 4) == [D("80.00")] * 4
    feed.release("BTCUSDT")
    assert path(feed, "BTCUSDT", 20) != [D("80.00")] * 20


def test_scripts_append_and_leave_other_symbols_walking() -> None:
    feed = SyntheticPrices(seed=2)
    eth = SyntheticPrices(seed=2)
    feed.script("BTCUSDT", [D("1")])
    feed.script("BTCUSDT", [D("2")])
    assert path(feed, "BTCUSDT", 2) == [D("1.00"), D("2.00")]
    assert feed.current("ETHUSDT") == eth.advance(2)["ETHUSDT"]


def test_set_jumps_without_a_step_and_adds_new_symbols() -> None:
    feed = SyntheticPrices({"BTCUSDT": D("100")})
    feed.set("BTCUSDT", D("123.456"))
    feed.set("NEWUSDT", D("7"))
    assert (feed.current("BTCUSDT"), feed.current("NEWUSDT"), feed.steps) == (
        D("123.46"),
        D("7.00"),
        0,
    )


async def test_synthetic_unknown_symbol_is_invalid_symbol() -> None:
    feed = SyntheticPrices()
    for call in (lambda: feed.current("FOOUSDT"), lambda: feed.script("FOOUSDT", [D("1")])):
        with pytest.raises(OrderRejected) as err:
            call()
        assert err.value.code == -1121
    with pytest.raises(OrderRejected):
        await feed.price("FOOUSDT")


async def test_clock_driven_feed_takes_one_step_per_tick_elapsed() -> None:
    clock = ManualClock()
    feed = SyntheticPrices(seed=8, clock=clock, tick_ms=1_000)
    reference = SyntheticPrices(seed=8)
    first = await feed.price("BTCUSDT")
    assert first == reference.current("BTCUSDT") and feed.steps == 0
    clock.ms += 2_500
    assert await feed.price("BTCUSDT") == reference.advance(2)["BTCUSDT"]
    clock.ms += 499
    assert (await feed.price("BTCUSDT"), feed.steps) == (reference.current("BTCUSDT"), 2)
    clock.ms += 1
    await feed.price("BTCUSDT")
    assert feed.steps == 3


async def test_clock_driven_feed_caps_catch_up_after_a_long_idle() -> None:
    clock = ManualClock()
    feed = SyntheticPrices(clock=clock, tick_ms=10)
    await feed.price("BTCUSDT")
    clock.ms += 10 * (MAX_CATCH_UP_STEPS + 500)
    assert feed.catch_up() == MAX_CATCH_UP_STEPS
    clock.ms += 10
    assert feed.catch_up() == 1


def test_without_a_clock_nothing_moves_by_itself() -> None:
    feed = SyntheticPrices()
    assert feed.catch_up() == 0 and feed.steps == 0


def test_bad_synthetic_arguments() -> None:
    with pytest.raises(ValueError):
        SyntheticPrices(step_bps=-1)
    with pytest.raises(ValueError):
        SyntheticPrices(tick_ms=0)
    with pytest.raises(ValueError):
        SyntheticPrices(ticks={"BTCUSDT": D("0")})


def test_feeds_fit_the_price_feed_port_and_binance_feed_is_reexported() -> None:
    feeds: list[PriceFeed] = [FixedPrices(), SyntheticPrices()]
    assert len(feeds) == 2
    assert BinancePublicPrices is binance.BinancePublicPrices
