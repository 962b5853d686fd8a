"""The benchmark's printed table (and ratios)."""

from __future__ import annotations

import math
import statistics
from typing import Any

from worker.ops.bench_reconcile import ReconcileRun, render_reconcile


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f}%"


def median_runs(runs: list[dict[str, Any]], key: str = "events_per_s") -> dict[str, dict[str, Any]]:
    """Per system, its run of median throughput (``key``; the lower middle one of an even
    count), in the order the systems first appear."""
    by_system: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_system.setdefault(run["system"], []).append(run)
    chosen = {}
    for system, group in by_system.items():
        ordered = sorted(group, key=lambda r: r[key])
        chosen[system] = ordered[(len(ordered) - 1) // 2]
    return chosen


def round_ratios(
    runs: list[dict[str, Any]], system: str, base: str, key: str = "events_per_s"
) -> list[float]:
    """``system``'s throughput (``key``) over ``base``'s, per round (each pair ran minutes
    apart at most, so the machine's drift cancels out better than across rounds)."""
    per_round: dict[Any, dict[str, float]] = {}
    for run in runs:
        per_round.setdefault(run.get("round", 1), {})[run["system"]] = run[key]
    return [
        rates[system] / rates[base]
        for _, rates in sorted(per_round.items())
        if system in rates and rates.get(base)
    ]


def _median_ratio(runs: list[dict[str, Any]], system: str, base: str, key: str) -> str:
    """The median of :func:`round_ratios` of ``key`` over the rounds where both systems have
    a figure ("-" when none has)."""
    ratios = round_ratios([r for r in runs if r[key] is not None], system, base, key)
    return f"{statistics.median(ratios):.2f}" if ratios else "-"


def render(results: dict[str, Any]) -> str:
    """The whole report: the pipeline's phases (when they ran), the execution phase (when
    it ran), the servers."""
    parts = [render_pipeline(results)] if "fixed_rate" in results else []
    if "execution" in results:
        ceilings = [r["events_per_s"] for r in results["saturation"] if r["system"] == "ceiling"]
        parts.append(render_execution(results["execution"], statistics.median(ceilings)))
    servers = results.get("servers", {})
    parts.append(
        f"\nservers: PostgreSQL {servers.get('postgresql')}, Redis-compatible "
        f"{servers.get('redis')}, {servers.get('cpus')} CPUs."
    )
    return "\n".join(parts)


def render_execution(execution: dict[str, Any], ceiling: float) -> str:
    """Bursts of paper positions (each system's median round, and the ratio of the others
    to the first in each round), and the fairness figures, beside the commit ceiling."""
    plan = execution["plan"]
    bursts = execution["bursts"]
    rounds = len({r.get("round", 1) for r in bursts})
    how = f"; {rounds} alternating rounds, the median round of each system" if rounds > 1 else ""
    lines = [
        "",
        f"Execution (paper; {plan['positions']:,} positions, one per user, committed in one "
        "transaction; times from the events' occurred_at"
        f"{how})",
        f"commit ceiling: {_f(ceiling, 0)} events/s",
        f"{'system':<12}{'entries/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'refused':>9}"
        f"{'exits/s':>9}{'exit p99':>10}{'entries/ceiling':>17}{'CPU ms/pos':>12}"
        f"{'machine':>9}{'busy in/out':>13}",
    ]
    by_system = median_runs(bursts, "entries_per_s")
    for r in by_system.values():
        lines.append(
            f"{r['system']:<12}{_f(r['entries_per_s'], 0):>10}{_f(r['entry_p50_ms'], 0):>9}"
            f"{_f(r['entry_p99_ms'], 0):>9}{_f(r['refused']):>9}{_f(r['exits_per_s'], 0):>9}"
            f"{_f(r['exit_p99_ms'], 0):>10}{r['entries_per_s'] / ceiling:>17.4f}"
            f"{_f(r['worker_cpu_ms'], 2):>12}{_f(r['machine_cpu_ms'], 2):>9}"
            f"{_percent(r['entry_busy']) + '/' + _percent(r['exit_busy']):>13}"
        )
    systems = list(by_system)
    for system in systems[1:]:
        entries = round_ratios(bursts, system, systems[0], "entries_per_s")
        exits = round_ratios(bursts, system, systems[0], "exits_per_s")
        lines.append(
            f"{system} / {systems[0]}, per round: entries "
            + ", ".join(f"{x:.2f}" for x in entries)
            + f" (median {statistics.median(entries):.2f}); exits "
            + ", ".join(f"{x:.2f}" for x in exits)
            + f" (median {statistics.median(exits):.2f})"
        )
        workers_cpu = _median_ratio(bursts, system, systems[0], "worker_cpu_ms")
        machine_cpu = _median_ratio(bursts, system, systems[0], "machine_cpu_ms")
        lines.append(
            f"{system} / {systems[0]}, CPU per position (entry and exit), median of the "
            f"rounds: the workers' {workers_cpu}, the machine's {machine_cpu}"
        )
    f = execution["fairness"]
    lines.append(
        f"fairness: one user commits {f['flood']:,} positions at once, another then enters "
        f"{f['neighbour_entries']} one after the other: the neighbour's created->entry p50 "
        f"{_f(f['neighbour_p50_ms'], 0)} ms, p99 {_f(f['neighbour_p99_ms'], 0)} ms "
        f"(the flood took {_f(f['flood_seconds'], 2)} s; refused: the neighbour's "
        f"{f['neighbour_refused']}, the flood's {f['flood_refused']})"
    )
    q = execution.get("request_fairness")
    if q is not None:
        lines.append(
            f"request fairness: one user asks {q['requests']:,} scale-ins at once on "
            f"{q['positions']:,} positions, another then enters {q['neighbour_entries']} one "
            f"after the other: the neighbour's created->entry p50 "
            f"{_f(q['neighbour_p50_ms'], 0)} ms, p99 {_f(q['neighbour_p99_ms'], 0)} ms "
            f"(the requests took {_f(q['flood_seconds'], 2)} s; refused: the neighbour's "
            f"{q['neighbour_refused']}, requests {q['requests_rejected']})"
        )
    if "reconciliation" in execution:
        runs = [ReconcileRun(**run) for run in execution["reconciliation"]]
        lines += ["", *render_reconcile(runs)]
    return "\n".join(lines)


def render_pipeline(results: dict[str, Any]) -> str:
    runs = results["saturation"]
    rounds = len({r.get("round", 1) for r in runs})
    lines = [
        "",
        "Saturation (8 load clients, as fast as they can commit"
        + (f"; {rounds} interleaved rounds, the median run of each system)" if rounds > 1 else ")"),
        f"{'system':<18}{'events':>8}{'events/s':>11}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'p99 ms':>9}{'lost':>6}{'CPU s/1k':>10}{'RSS MB':>14}",
    ]
    by_name = median_runs(runs)
    for r in by_name.values():
        rss = (
            f"{_f(r.get('rss_mb_start'))}->{_f(r.get('rss_mb_end'))}" if "rss_mb_end" in r else "-"
        )
        lines.append(
            f"{r['system']:<18}{_f(r['events']):>8}{_f(r['events_per_s'], 0):>11}"
            f"{_f(r.get('p50_ms')):>9}{_f(r.get('p95_ms')):>9}{_f(r.get('p99_ms')):>9}"
            f"{_f(r.get('missing', '-')):>6}{_f(r.get('cpu_s_per_1k'), 3):>10}{rss:>14}"
        )
    if rounds > 1:
        lines.append("events/s per round: " + "; ".join(
            f"{name} " + " ".join(_f(r["events_per_s"], 0) for r in runs if r["system"] == name)
            for name in by_name
        ))  # fmt: skip
        lost = sum(int(r.get("missing") or 0) for r in runs)
        lines.append(f"lost in all saturation runs: {lost}")
    lines += [
        "",
        "Fixed offered rate (commit-to-stream latency)",
        f"{'system':<18}{'rate/s':>8}{'events':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'lost':>6}",
    ]
    for r in results["fixed_rate"]:
        lines.append(
            f"{r['system']:<18}{_f(int(r['rate'])):>8}{_f(r['events']):>8}"
            f"{_f(r['p50_ms']):>9}{_f(r['p95_ms']):>9}{_f(r['p99_ms']):>9}"
            f"{_f(r['missing']):>6}"
        )
    b = results["backlog"]
    lines += [
        "",
        f"Backlog drain: {_f(b['events'])} events in the outbox, one worker: "
        f"{_f(b['events_per_s'], 0)} events/s",
    ]
    drains = results.get("backlog_runs", [])
    to_prototype = round_ratios(drains, "worker-1", "prototype")
    if to_prototype:
        bare = median_runs(drains)["prototype"]
        each = " ".join(f"{x:.2f}" for x in to_prototype)
        lines += [
            f"  the bare prototype (claim, XADD, mark; no order check, dedupe, handlers or "
            f"audit line): {_f(bare['events_per_s'], 0)} events/s",
            f"  worker-1/prototype = {statistics.median(to_prototype):.2f}   (rounds: {each})",
        ]
    lines += ["", "Ratios (throughput at saturation; median of the per-round ratios)"]
    for name in ("worker-1", "worker-3"):
        to_naive = round_ratios(runs, name, "naive")
        to_ceiling = round_ratios(runs, name, "ceiling")
        if to_naive and to_ceiling:
            each = f"   (rounds: {' '.join(f'{x:.2f}' for x in to_naive)})" if rounds > 1 else ""
            lines.append(
                f"  {name}/naive = {statistics.median(to_naive):.2f}   "
                f"{name}/ceiling = {statistics.median(to_ceiling):.2f}{each}"
            )
    lines += [
        "",
        "Latency = stream entry id time (1 ms resolution) - time the load generator's COMMIT"
        " returned.",
    ]
    return "\n".join(lines)
