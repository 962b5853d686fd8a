"""The benchmark report: medians over interleaved rounds, ratios paired by round; the JSON
and its plot (SVG) only where ``bench --out`` says."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from worker.cli import build_parser, main
from worker.ops import bench
from worker.ops.bench_execution import Reading, busy
from worker.ops.bench_plot import axis_ticks, render_svg, svg_path_for, write_svg
from worker.ops.bench_report import median_runs, render, render_execution, round_ratios

SVG = "{http://www.w3.org/2000/svg}"


def _run(system: str, rate: float, round_: int, **extra: Any) -> dict[str, Any]:
    return {"system": system, "events": 1000, "events_per_s": rate, "round": round_, **extra}


# The machine slows down in round 2: the worker's slow run and the naive one's go together.
RUNS = [
    _run("ceiling", 2000, 1),
    _run("naive", 1800, 1),
    _run("worker-1", 1710, 1, p99_ms=4.0, missing=0),
    _run("ceiling", 1500, 2),
    _run("naive", 1200, 2),
    _run("worker-1", 1140, 2, p99_ms=9.0, missing=0),
    _run("ceiling", 2100, 3),
    _run("naive", 2000, 3),
    _run("worker-1", 1800, 3, p99_ms=5.0, missing=1),
]


def test_the_median_run_of_each_system_is_chosen_whole() -> None:
    chosen = median_runs(RUNS)
    assert list(chosen) == ["ceiling", "naive", "worker-1"]
    assert chosen["naive"]["events_per_s"] == 1800
    assert chosen["worker-1"] == RUNS[2]  # its other columns come from the same run
    even = median_runs([_run("naive", 1, 1), _run("naive", 3, 2)])
    assert even["naive"]["events_per_s"] == 1  # the lower middle: never flattering


def test_ratios_are_paired_by_round() -> None:
    assert round_ratios(RUNS, "worker-1", "naive") == [0.95, 0.95, 0.9]
    # a round without the base system is left out, not divided by zero
    assert round_ratios([*RUNS, _run("worker-1", 900, 4)], "worker-1", "naive") == [
        0.95,
        0.95,
        0.9,
    ]


RESULTS: dict[str, Any] = {
    "saturation": RUNS,
    "fixed_rate": [
        {
            "system": "worker-1",
            "rate": 500.0,
            "events": 5000,
            "p50_ms": 1.0,
            "p95_ms": 2.0,
            "p99_ms": 3.0,
            "missing": 0,
        },
    ],
    "backlog": {"events": 100_000, "events_per_s": 21_000.0},
    "backlog_runs": [
        _run("worker-1", 21_000.0, 1),
        _run("prototype", 25_000.0, 1),
        _run("worker-1", 16_000.0, 2),
        _run("prototype", 20_000.0, 2),
    ],
}


def test_the_report_gives_medians_rounds_and_every_loss() -> None:
    text = render(RESULTS)
    assert "3 interleaved rounds" in text
    # the median of the paired ratios (0.95), not the ratio of the medians (1710/1800)
    assert "worker-1/naive = 0.95" in text
    assert "(rounds: 0.95 0.95 0.90)" in text
    assert "worker-1 1,710 1,140 1,800" in text
    assert "lost in all saturation runs: 1" in text  # a loss in a non-median run shows
    assert "21,000 events/s" in text
    # the drain against the bare design: the lower median, the ratio paired by round
    assert "the bare prototype" in text and "20,000 events/s" in text
    assert "worker-1/prototype = 0.82   (rounds: 0.84 0.80)" in text


def test_write_json_writes_the_results_where_asked_creating_directories(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "today" / "bench.json"
    bench.write_json({**RESULTS, "servers": {"cpus": "2"}}, out)
    assert json.loads(out.read_text())["backlog"] == RESULTS["backlog"]


@pytest.fixture
def fake_bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[bool]:
    """``bench`` without running one: run_bench returns RESULTS at once. The command runs
    from an empty directory, to see what it leaves there."""
    calls: list[bool] = []

    def run_bench(
        database_url: str | None,
        redis_url: str | None,
        quick: bool,
        say: Callable[[str], None],
        *,
        execution: str = "off",
        worker_python: str | None = None,
        keep_logs: bool = False,
    ) -> dict[str, Any]:
        calls.append(quick)
        if execution == "only":
            return {"saturation": RUNS[:1], "execution": EXECUTION}
        return RESULTS

    monkeypatch.setattr(bench, "run_bench", run_bench)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return calls


def test_bench_without_out_prints_the_report_and_writes_no_file(
    fake_bench: list[bool], capsys: pytest.CaptureFixture[str]
) -> None:
    assert build_parser().parse_args(["bench"]).out is None
    assert main(["bench", "--quick"]) == 0
    assert fake_bench == [True]
    assert "Saturation" in capsys.readouterr().out
    assert list(Path.cwd().iterdir()) == []


def test_bench_writes_its_json_and_plot_only_at_out(
    fake_bench: list[bool], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results" / "bench.json"
    assert main(["bench", "--out", str(out)]) == 0
    assert fake_bench == [False]
    assert json.loads(out.read_text())["saturation"] == RESULTS["saturation"]
    plot = tmp_path / "results" / "bench.svg"
    assert ET.parse(plot).getroot().tag == f"{SVG}svg"
    assert f"written to {out}" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["bench.json", "bench.svg"]
    assert list(Path.cwd().iterdir()) == []


def _burst(
    system: str, round_: int, entries: float, exits: float, cpu: float | None = 4.0
) -> dict[str, Any]:
    return {
        "system": system,
        "round": round_,
        "positions": 1000,
        "refused": 0,
        "entries_per_s": entries,
        "entry_p50_ms": 1900.0,
        "entry_p99_ms": 3800.0 + entries,
        "exits_per_s": exits,
        "exit_p99_ms": 4900.0,
        "worker_cpu_ms": cpu,
        "machine_cpu_ms": None if cpu is None else cpu * 2,
        # the machine's busy fraction while the positions entered, and while they exited
        "entry_busy": None if cpu is None else 0.974,
        "exit_busy": None if cpu is None else 0.885,
    }


EXECUTION: dict[str, Any] = {
    "plan": {"positions": 1000, "workers": [1, 3], "flood": 1000, "neighbour_entries": 50},
    # three rounds, alternating: worker-1's median round is its 250/s one
    "bursts": [
        _burst("worker-1", 1, 250.0, 200.0),
        _burst("worker-3", 1, 300.0, 100.0, cpu=4.4),
        _burst("worker-1", 2, 200.0, 200.0, cpu=None),  # no /proc: left out of the ratio
        _burst("worker-3", 2, 180.0, 300.0, cpu=8.0),
        _burst("worker-1", 3, 260.0, 250.0, cpu=5.0),
        _burst("worker-3", 3, 286.0, 250.0, cpu=6.0),
    ],
    "request_fairness": {
        "requests": 1000,
        "requests_rejected": 3,
        "positions": 100,
        "neighbour_entries": 50,
        "neighbour_refused": 0,
        "neighbour_p50_ms": 70.0,
        "neighbour_p99_ms": 150.0,
        "flood_seconds": 12.25,
    },
    "fairness": {
        "flood": 1000,
        "flood_refused": 7,
        "neighbour_entries": 50,
        "neighbour_refused": 2,
        "neighbour_p50_ms": 120.0,
        "neighbour_p99_ms": 240.0,
        "flood_seconds": 12.5,
        "flood_entries_per_s": 80.0,
    },
}


def test_execution_only_prints_the_bursts_beside_the_ceiling_and_no_plot(
    fake_bench: list[bool], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "exec.json"
    assert main(["bench", "--execution-only", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    ceiling = RUNS[0]["events_per_s"]
    assert f"commit ceiling: {ceiling:,.0f} events/s" in text
    assert f"{250.0 / ceiling:.4f}" in text  # entries/s over the ceiling
    assert "p99 240 ms" in text and "Saturation" not in text
    assert "3 alternating rounds, the median round of each system" in text
    (one,) = [line for line in text.splitlines() if line.startswith("worker-1 ")]
    assert one.split()[1:4] == ["250", "1,900", "4,050"]  # the median round, whole
    # its CPU per position (workers, machine), and how busy the machine was (entry/exit)
    assert one.split()[-3:] == ["4.00", "8.00", "97%/88%"]
    # per round 1.10 and 1.20 (round 2 has no figure for worker-1): median 1.15
    assert (
        "worker-3 / worker-1, CPU per position (entry and exit), median of the rounds:"
        " the workers' 1.15, the machine's 1.15"
    ) in text
    assert (
        "worker-3 / worker-1, per round: entries 1.20, 0.90, 1.10 (median 1.10);"
        " exits 0.50, 1.50, 1.00 (median 1.00)"
    ) in text
    assert "one user asks 1,000 scale-ins at once on 100 positions" in text
    assert (
        "p50 70 ms, p99 150 ms (the requests took 12.25 s; refused: the neighbour's 0, requests 3)"
    ) in text
    # a refusal costs less than a fill: refused work is counted, never passed over
    assert "(the flood took 12.50 s; refused: the neighbour's 2, the flood's 7)" in text
    assert json.loads(out.read_text())["execution"]["fairness"]["neighbour_p99_ms"] == 240.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "exec.json"]


def _texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)  # raises on anything that is not well-formed XML
    assert root.tag == f"{SVG}svg"
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def _bars(svg: str) -> dict[str, float]:
    """Each bar's tooltip -> its drawn height."""
    root = ET.fromstring(svg)
    return {
        (rect.findtext(f"{SVG}title") or ""): float(rect.get("height", "nan"))
        for rect in root.iter(f"{SVG}rect")
        if rect.get("class") == "bar"
    }


def test_the_plot_is_well_formed_svg_with_the_figures() -> None:
    svg = render_svg(
        {**RESULTS, "servers": {"postgresql": "15.20", "redis": "7.0.15", "cpus": "2"}}
    )
    texts = _texts(svg)
    # throughput at saturation: the median run of each system, the bars in proportion
    for label in ("2,000", "1,800", "1,710", "ceiling", "naive", "worker-1"):
        assert label in texts
    bars = _bars(svg)
    ceiling = bars["ceiling, ceiling: 2,000 events/s"]
    assert bars["naive, naive: 1,800 events/s"] == pytest.approx(ceiling * 0.9, abs=0.2)
    # p99 at a fixed offered rate, and the drain beside the prototype (lower medians)
    assert "worker-1, 500 events/s: 3.0 ms" in bars
    assert "3.0" in texts and "500 events/s" in texts
    assert "worker-1, worker-1: 16,000 events/s" in bars
    assert "prototype, prototype: 20,000 events/s" in bars
    assert any("PostgreSQL 15.20" in t and "3 interleaved" in t for t in texts)
    assert len(bars) == 3 + 1 + 2


def test_the_plot_copes_with_gaps_and_escapes_text(tmp_path: Path) -> None:
    quick = {
        "saturation": [_run("naive", 900.0, 1), _run("worker-1", math.nan, 1)],
        "fixed_rate": [{"system": "worker-1", "rate": 500.0, "p99_ms": None}],
        "backlog": {"events": 10_000, "events_per_s": 12_345.6},
        "servers": {"postgresql": "18 <beta> & co"},
    }
    out = tmp_path / "deep" / "quick.svg"
    write_svg(quick, out)
    texts = _texts(out.read_text(encoding="utf-8"))
    assert "900" in texts and "-" in texts  # an unmeasured figure is a dash, not a bar
    assert "12,346" in texts  # without backlog_runs: the worker's drain alone
    assert any("18 <beta> & co" in t for t in texts)
    assert "not measured" in _texts(render_svg({}))  # nothing at all still draws


def test_the_plot_goes_beside_the_json() -> None:
    assert svg_path_for(Path("out/results.json")) == Path("out/results.svg")
    assert svg_path_for(Path("results")) == Path("results.svg")
    assert svg_path_for(Path("plot.svg")) == Path("plot.svg.svg")  # never over the JSON


def test_axis_ticks_are_round_numbers() -> None:
    assert axis_ticks(3476) == (1000, 4)
    assert axis_ticks(6.3) == (2, 4)
    assert axis_ticks(32_704) == (10_000, 4)
    assert axis_ticks(0.0) == (1, 1)


def test_a_burst_without_proc_figures_prints_dashes() -> None:
    bursts = [_burst("worker-1", 1, 250.0, 200.0, cpu=None)]
    text = render_execution({**EXECUTION, "bursts": bursts}, 1000.0)
    (one,) = [line for line in text.splitlines() if line.startswith("worker-1 ")]
    assert one.split()[-3:] == ["-", "-", "-/-"]


def test_busy_is_the_machines_cpu_over_the_spans_seconds_on_every_core() -> None:
    start, end = Reading(10.0, 1.0, 100.0), Reading(12.0, 2.0, 103.0)
    assert busy(start, end, 2) == 0.75  # 3 CPU seconds over 2 s on 2 cores
    assert busy(start, Reading(12.0, 2.0, None), 2) is None  # no /proc
    assert busy(start, end, None) is None  # os.cpu_count() could not tell
