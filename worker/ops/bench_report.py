"""The benchmark's printed table (and ratios)."""

from __future__ import annotations

import math
from typing import Any


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render(results: dict[str, Any]) -> str:
    lines = [
        "",
        "Saturation (8 load clients, as fast as they can commit)",
        f"{'system':<18}{'events':>8}{'events/s':>11}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'p99 ms':>9}{'lost':>6}{'CPU s/1k':>10}{'RSS MB':>14}",
    ]
    by_name = {r["system"]: r for r in results["saturation"]}
    for r in results["saturation"]:
        rss = (
            f"{_f(r.get('rss_mb_start'))}->{_f(r.get('rss_mb_end'))}" if "rss_mb_end" in r else "-"
        )
        lines.append(
            f"{r['system']:<18}{_f(r['events']):>8}{_f(r['events_per_s'], 0):>11}"
            f"{_f(r.get('p50_ms')):>9}{_f(r.get('p95_ms')):>9}{_f(r.get('p99_ms')):>9}"
            f"{_f(r.get('missing', '-')):>6}{_f(r.get('cpu_s_per_1k'), 3):>10}{rss:>14}"
        )
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
    lines += ["", "Ratios (throughput at saturation)"]
    naive, ceiling = by_name.get("naive"), by_name.get("ceiling")
    for name in ("worker-1", "worker-3"):
        r = by_name.get(name)
        if r and naive and ceiling:
            lines.append(
                f"  {name}/naive = {r['events_per_s'] / naive['events_per_s']:.2f}   "
                f"{name}/ceiling = {r['events_per_s'] / ceiling['events_per_s']:.2f}"
            )
    servers = results.get("servers", {})
    lines += [
        "",
        f"servers: PostgreSQL {servers.get('postgresql')}, Redis-compatible "
        f"{servers.get('redis')}, {servers.get('cpus')} CPUs. Latency = stream entry id "
        "time (1 ms resolution) - time the load generator's COMMIT returned.",
    ]
    return "\n".join(lines)
