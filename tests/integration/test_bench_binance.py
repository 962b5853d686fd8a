"""50 protected positions on one symbol of one account, against the fake Binance at its
documented defaults (MAX_NUM_ALGO_ORDERS 5, REQUEST_WEIGHT 6,000 per minute): every one is
protected, on the exchange or by the worker as ``positions.protection`` reports, the
weight stays under the budget and Binance never answers 429 (``worker.ops.bench_binance``,
the ``bench --binance-only`` phase). Then the whole phase at small size, as the command
runs it (shipped settings): resting orders that fill are recorded within 100 ms over the
user data stream, and later with the stream off."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.execution_support import exec_settings
from worker.ops.bench_binance import measure, run_binance_bench

pytestmark = pytest.mark.anyio


async def test_fifty_protected_positions_on_one_symbol_stay_under_the_weight_budget(
    db_url: str, redis_url: str
) -> None:
    fast = exec_settings(db_url, redis_url)  # passes every 0.2 s: ten times the shipped rate
    settings = replace(fast, risk=replace(fast.risk, max_open_positions=0))
    result = await measure(settings, 50, 5.0, lambda line: None, settle_timeout_s=90)
    assert result.unprotected == 0
    assert result.exchange_protected + result.worker_protected == 50
    assert result.exchange_protected == 3  # 2 + 2 algo slots, then a LIMIT_MAKER take-profit
    assert result.rate_limited == 0
    assert result.max_used_weight_1m < 6000 * 0.7  # lookups never had to wait
    assert set(result.weight_by_route) <= {
        "GET /api/v3/openOrders",
        "GET /api/v3/ticker/price",
    }  # at rest: no lookup of one order, no order sent
    print(result.render())


@pytest.mark.timeout(300)
def test_the_phase_measures_fills_over_the_stream_and_with_it_off(
    pg_admin_url: str, redis_url: str
) -> None:
    result = run_binance_bench(pg_admin_url, redis_url, 3, 2.0, lambda line: None, fills=10)
    assert result.unprotected == 0
    stream, polled = result.fills
    assert len(stream.latencies_ms) == len(polled.latencies_ms) == 10
    assert stream.p99 < 100  # issue 19's target
    assert polled.p50 > stream.p50 and polled.p99 > stream.p99
    report = result.render()
    assert "user data stream, 10 fills: p50" in report
    assert "reconcile pass alone (stream off), 10 fills: p50" in report
    print(report)
