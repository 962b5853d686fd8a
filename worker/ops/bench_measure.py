"""Measurements for the benchmark: process CPU and memory, latency matching, percentiles."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis


@dataclass(frozen=True, slots=True)
class ProcSample:
    cpu_seconds: float
    rss_mb: float
    peak_rss_mb: float


def sample_process(pid: int) -> ProcSample:
    """CPU seconds (user + system) and memory of a live process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    mem = {k: v for k, v in (line.split(":", 1) for line in status.splitlines() if ":" in line)}
    rss = int(mem.get("VmRSS", "0 kB").split()[0]) / 1024
    peak = int(mem.get("VmHWM", "0 kB").split()[0]) / 1024
    return ProcSample(cpu, rss, peak)


def machine_cpu_seconds() -> float | None:
    """CPU seconds every core of the machine spent busy since boot (``/proc/stat``: user,
    nice, system, irq, softirq, steal; not idle or iowait), or None where there is no
    /proc (not Linux). Over a span it counts every process: workers, PostgreSQL, Redis,
    the bench itself, and anything else the machine runs."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def read_commits(path: Path) -> list[tuple[str, float]]:
    with path.open(encoding="utf-8") as f:
        return [(str(pid), float(t)) for pid, t in (json.loads(line) for line in f)]


def read_stream(client: redis.Redis, stream: str) -> list[tuple[float, str]]:
    """(entry time in epoch seconds from the entry id, position_id) in stream order."""
    out: list[tuple[float, str]] = []
    last = "-"
    while True:
        batch: list[Any] = list(client.xrange(stream, min=last, count=10_000) or [])
        if last != "-":
            batch = batch[1:]
        if not batch:
            return out
        for entry_id, fields in batch:
            ms = int(entry_id.decode().split("-")[0])
            out.append((ms / 1000, fields[b"position_id"].decode()))
        last = batch[-1][0].decode()


def match_latencies(
    commits: list[tuple[str, float]], entries: list[tuple[float, str]]
) -> tuple[list[float], int]:
    """Per position, the k-th commit matches the k-th stream entry (both are in commit order).

    Returns latencies in ms (entry time - commit return time, floored at 0; entry ids have
    1 ms resolution) and how many commits have no entry.
    """
    by_position: dict[str, list[float]] = defaultdict(list)
    for pid, t in commits:
        by_position[pid].append(t)
    seen: dict[str, int] = defaultdict(int)
    latencies: list[float] = []
    for t_entry, pid in entries:
        k = seen[pid]
        seen[pid] += 1
        times = by_position.get(pid, [])
        if k < len(times):
            latencies.append(max(0.0, (t_entry - times[k]) * 1000))
    missing = sum(max(0, len(ts) - seen[p]) for p, ts in by_position.items())
    return latencies, missing


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]
