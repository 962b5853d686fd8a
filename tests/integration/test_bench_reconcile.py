"""The reconciliation phase of ``position-worker bench`` (``worker.ops.bench_reconcile``) at
small size, as the command runs it (the shipped intervals): between listings a pass reads
none of the resting orders, a listing pass reads them all, and another user's fill is
recorded by the next pass after the price crosses it, in both runs."""

from __future__ import annotations

import pytest

from worker.ops.bench_reconcile import render_reconcile, run_reconcile_bench


@pytest.mark.timeout(300)
def test_the_phase_times_passes_and_a_neighbours_fill_with_and_without_resting_orders(
    pg_admin_url: str, redis_url: str
) -> None:
    flooded, alone = run_reconcile_bench(pg_admin_url, redis_url, 30, lambda line: None)
    assert (flooded.resting, alone.resting) == (30, 0)
    # five passes at 2 s, a listing every 10 s: one of them reads the 31 orders in flight,
    # the others what changed (nothing)
    assert flooded.read_p50 == 0 and flooded.read_max == 31
    assert alone.read_p50 == 0 and alone.read_max == 1
    for run in (flooded, alone):  # the next pass after the move, 2 s at most, recorded it
        assert 0 < run.fill_recorded_ms < 2_000 + 2_000
        assert 0 < run.pass_p50_ms <= run.pass_max_ms
    report = "\n".join(render_reconcile([flooded, alone]))
    assert "a pass between listings with 30 resting / with none: x" in report
    print(report)
