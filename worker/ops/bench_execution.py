"""The execution phase of ``position-worker bench`` (``--execution``, ``--execution-only``).

A signal fanned out to many users is one transaction committing a position per user. Here,
on paper (the synthetic feed), against the same servers as the commit ceiling:

* **bursts**: ``positions`` market entries, one per user, committed in one transaction, with
  1 and 3 worker processes: entries/s (from the first commit to the last entry), p50/p99
  created -> entry; then one transaction asks every position to exit: exits/s;
* **fairness**: one user commits ``flood`` positions at once, then another user commits
  ``neighbour_entries`` plain market entries one after the other (each once the one before
  it has entered) while the flood is handled: the neighbour's created -> entry, p50/p99.

Every time comes from the database (the events' ``occurred_at``), so the bench's own
polling does not count. The users' risk limits are lifted (a thousand positions would be
refused by the defaults). See docs/benchmarks.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from worker.ops.bench_measure import percentile

EXECUTION_ENV: Final = {
    "POSITION_WORKER__STREAMS__EVENTS": "bench:positions:events",
    "POSITION_WORKER__STREAMS__NOTIFICATIONS": "bench:positions:notifications",
    "POSITION_WORKER__STREAMS__AI_MONITORING": "bench:positions:ai-monitoring",
    "POSITION_WORKER__EXECUTION__ENABLED": "true",
    # a thousand positions: the users' risk limits would refuse them
    "POSITION_WORKER__RISK__MAX_POSITION_NOTIONAL": "0",
    "POSITION_WORKER__RISK__MAX_OPEN_POSITIONS": "0",
    "POSITION_WORKER__RISK__MAX_OPEN_NOTIONAL": "0",
}
ENTERED: Final = ("open", "monitoring", "failed", "closing", "closed")
WAIT_SECONDS: Final = 600.0


@dataclass(frozen=True)
class ExecutionPlan:
    positions: int = 1000
    workers: tuple[int, ...] = (1, 3)
    flood: int = 1000
    neighbour_entries: int = 20  # each committed once the one before it has entered

    @classmethod
    def for_mode(cls, quick: bool) -> ExecutionPlan:
        return cls(200, (1,), 200, 10) if quick else cls()


_USERS = """
WITH u AS (INSERT INTO auth.users (id) SELECT gen_random_uuid() FROM generate_series(1, %(n)s)
           RETURNING id),
     t AS (INSERT INTO traders (id, user_id) SELECT gen_random_uuid(), id FROM u
           RETURNING id, user_id)
INSERT INTO signals (id, user_id, trader_id) SELECT gen_random_uuid(), user_id, id FROM t
RETURNING user_id, trader_id, id
"""
_POSITIONS = """
INSERT INTO positions (user_id, trader_id, signal_id, symbol, side, status,
                       requested_quantity, is_paper_trade)
SELECT u, t, s, 'BTCUSDT', 'long', 'created', 0.01, true
FROM unnest(%(u)s::uuid[], %(t)s::uuid[], %(s)s::uuid[]) AS x(u, t, s)
RETURNING id
"""
# per position: when it was created, and when it opened (NULL: not yet, or refused)
_ENTRY_TIMES = """
SELECT extract(epoch FROM c.occurred_at)::float8,
       extract(epoch FROM (SELECT min(o.occurred_at) FROM position_events o
                           WHERE o.position_id = c.position_id AND o.kind = 'position'
                             AND o.new_status = 'open'))::float8
FROM position_events c
WHERE c.kind = 'position' AND c.old_status IS NULL AND c.position_id = ANY(%(ids)s)
"""
_EXIT_TIMES = """
SELECT extract(epoch FROM (SELECT min(r.occurred_at) FROM position_events r
                           WHERE r.position_id = p.id AND r.kind = 'request'))::float8,
       extract(epoch FROM (SELECT min(c.occurred_at) FROM position_events c
                           WHERE c.position_id = p.id AND c.kind = 'position'
                             AND c.new_status = 'closed'))::float8
FROM positions p WHERE p.id = ANY(%(ids)s)
"""


@dataclass(frozen=True, slots=True)
class Users:
    user_ids: list[Any]
    trader_ids: list[Any]
    signal_ids: list[Any]

    def one(self, i: int, times: int = 1) -> Users:
        """User ``i`` alone, ``times`` over (one user's many positions)."""
        pick = slice(i, i + 1)
        return Users(
            self.user_ids[pick] * times,
            self.trader_ids[pick] * times,
            self.signal_ids[pick] * times,
        )


def make_users(conn: psycopg.Connection[Any], n: int) -> Users:
    rows = conn.execute(_USERS, {"n": n}).fetchall()
    return Users([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


def commit_positions(conn: psycopg.Connection[Any], users: Users) -> list[Any]:
    """One position per entry of ``users``, all in one transaction."""
    with conn.transaction():
        rows = conn.execute(
            _POSITIONS, {"u": users.user_ids, "t": users.trader_ids, "s": users.signal_ids}
        ).fetchall()
    return [r[0] for r in rows]


def wait_for(
    conn: psycopg.Connection[Any],
    sql: str,
    ids: list[Any],
    statuses: tuple[str, ...],
    every: float = 0.05,
) -> None:
    """Until every position of ``ids`` is in one of ``statuses`` (polling the database: the
    times measured are the events', not this loop's)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        row = conn.execute(sql, {"ids": ids, "statuses": list(statuses)}).fetchone()
        if row is not None and int(row[0]) >= len(ids):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{row[0] if row else 0} of {len(ids)} positions in {statuses}")
        time.sleep(every)  # a bench process polling the database: nothing to wait on


_COUNT_IN = "SELECT count(*) FROM positions WHERE id = ANY(%(ids)s) AND status = ANY(%(statuses)s)"


def spans(pairs: list[tuple[float, float | None]]) -> dict[str, Any]:
    """Throughput (from the first start to the last finish) and latency of (start, end)."""
    done = [(a, b) for a, b in pairs if b is not None]
    if not done:
        return {"done": 0, "per_s": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan")}
    first, last = min(a for a, _ in pairs), max(b for _, b in done)
    latencies = [1000 * (b - a) for a, b in done]
    return {
        "done": len(done),
        "per_s": len(done) / max(1e-9, last - first),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "seconds": last - first,
    }


class ExecutionBench:
    """The execution phases, on the servers, databases and workers of a
    :class:`worker.ops.bench.Bench` (``bench``)."""

    def __init__(self, bench: Any, plan: ExecutionPlan) -> None:
        self.bench, self.plan = bench, plan

    @contextmanager
    def workers(self, db_url: str, count: int) -> Iterator[None]:
        env = {**EXECUTION_ENV, "DATABASE_URL": db_url, "REDIS_URL": self.bench.redis_url}
        procs = [self.bench.worker_process(env, f"exec-{db_url[-6:]}-{i}") for i in range(count)]
        for proc in procs:
            proc.start(args=("run",))
        try:
            yield
        finally:
            for proc in procs:
                proc.signal(15)
            for proc in procs:
                proc.wait(60)

    def burst(self, workers: int) -> dict[str, Any]:
        """``positions`` entries in one transaction, then their exits in another."""
        db = self.bench.empty_db()
        with psycopg.connect(db, autocommit=True) as conn:
            users = make_users(conn, self.plan.positions)
            self.bench.checkpoint()
            with self.workers(db, workers):
                ids = commit_positions(conn, users)
                wait_for(conn, _COUNT_IN, ids, ENTERED)
                entries = conn.execute(_ENTRY_TIMES, {"ids": ids}).fetchall()
                with conn.transaction():
                    conn.execute(
                        "SELECT request_position_exit(id) FROM positions"
                        " WHERE id = ANY(%(ids)s) AND status IN ('open', 'monitoring')",
                        {"ids": ids},
                    )
                opened = [p for p, (_, o) in zip(ids, entries, strict=True) if o is not None]
                wait_for(conn, _COUNT_IN, opened, ("closed",))
                exits = conn.execute(_EXIT_TIMES, {"ids": opened}).fetchall()
        entry = spans([(a, b) for a, b in entries])
        out = spans([(a, b) for a, b in exits])
        return {
            "system": f"worker-{workers}",
            "positions": len(ids),
            "refused": len(ids) - entry["done"],
            "entries_per_s": entry["per_s"],
            "entry_p50_ms": entry["p50_ms"],
            "entry_p99_ms": entry["p99_ms"],
            "exits_per_s": out["per_s"],
            "exit_p99_ms": out["p99_ms"],
        }

    def fairness(self) -> dict[str, Any]:
        """One user's flood of positions; another user's entries meanwhile, one by one."""
        db = self.bench.empty_db()
        with psycopg.connect(db, autocommit=True) as conn:
            users = make_users(conn, 2)
            neighbour = users.one(1)
            self.bench.checkpoint()
            with self.workers(db, 1):
                flood = commit_positions(conn, users.one(0, self.plan.flood))
                mine: list[Any] = []
                for _ in range(self.plan.neighbour_entries):  # one after the other
                    entry = commit_positions(conn, neighbour)
                    wait_for(conn, _COUNT_IN, entry, ENTERED, every=0.005)
                    mine += entry
                neighbour_times = conn.execute(_ENTRY_TIMES, {"ids": mine}).fetchall()
                wait_for(conn, _COUNT_IN, flood, ENTERED)
                flood_times = conn.execute(_ENTRY_TIMES, {"ids": flood}).fetchall()
        near = spans([(a, b) for a, b in neighbour_times])
        far = spans([(a, b) for a, b in flood_times])
        return {
            "flood": len(flood),
            "neighbour_entries": len(mine),
            "neighbour_p50_ms": near["p50_ms"],
            "neighbour_p99_ms": near["p99_ms"],
            "flood_seconds": far.get("seconds", float("nan")),
            "flood_entries_per_s": far["per_s"],
        }

    def run(self) -> dict[str, Any]:
        results: dict[str, Any] = {"plan": self.plan.__dict__, "bursts": []}
        for workers in self.plan.workers:
            self.bench.say(f"execution: burst of {self.plan.positions}, {workers} worker(s) ...")
            results["bursts"].append(self.burst(workers))
        self.bench.say(f"execution: one user floods {self.plan.flood}, a neighbour enters ...")
        results["fairness"] = self.fairness()
        return results
