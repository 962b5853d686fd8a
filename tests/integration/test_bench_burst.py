"""One burst of the bench's execution phase, small, on the servers under test: every
position enters and exits, and the burst says what it cost in CPU per position
(worker/ops/bench_execution.py). The report's arithmetic is tested in
tests/unit/test_bench_report.py; this is the measuring end."""

from __future__ import annotations

import shutil
from pathlib import Path

from worker.ops.bench import Bench, Plan
from worker.ops.bench_execution import ExecutionBench, ExecutionPlan


def test_a_burst_enters_and_exits_every_position_and_counts_its_cpu(
    pg_admin_url: str, redis_url: str
) -> None:
    bench = Bench(pg_admin_url, redis_url, Plan.for_mode(True), lambda line: None)
    try:
        burst = ExecutionBench(bench, ExecutionPlan(positions=30, workers=(1,))).burst(1)
    finally:
        bench.drop_dbs()
        shutil.rmtree(bench.tmp, ignore_errors=True)
    assert (burst["system"], burst["positions"], burst["refused"]) == ("worker-1", 30, 0)
    assert burst["entries_per_s"] > 0 and burst["exits_per_s"] > 0
    assert burst["entry_p50_ms"] <= burst["entry_p99_ms"]
    if Path("/proc/stat").exists():  # Linux: the workers' CPU, and the machine's
        assert burst["worker_cpu_ms"] > 0
        assert burst["machine_cpu_ms"] > 0
        # the machine did work while the positions entered and while they exited (the
        # fraction's upper end is /proc's tick, 10 ms, over spans this short: not tested)
        assert burst["entry_busy"] > 0 and burst["exit_busy"] > 0
    else:
        assert burst["worker_cpu_ms"] is None and burst["machine_cpu_ms"] is None
        assert burst["entry_busy"] is None and burst["exit_busy"] is None
