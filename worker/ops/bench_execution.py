"""The execution phase of ``position-worker bench`` (``--execution``, ``--execution-only``).

A signal fanned out to many users is one transaction committing a position per user. Here,
on paper (the synthetic feed), against the same servers as the commit ceiling:

* **bursts**: ``positions`` market entries, one per user, committed in one transaction, with
  1 and 3 worker processes: entries/s (from the first commit to the last entry), p50/p99
  created -> entry; then one transaction asks every position to exit: exits/s. The bursts
  run ``rounds`` times, 1 and 3 workers alternating (and which goes first in a round), so
  that the machine's drift falls on both alike: the report gives each system's median
  round and the ratio of 3 workers to 1 in each round. Each burst also counts the CPU it
  cost per position (its entry and its exit), of the workers and of the whole machine
  (``/proc``, Linux): the same cost with 3 workers as with 1 means the replicas do no work
  twice, so on a machine with the cores for it their rate is bounded by the database, not
  by one another (what 2 cores cannot show directly). And how busy the machine was while
  the positions entered and while they exited: a phase that keeps every core busy with
  one worker leaves no room for more workers to go faster on this machine;
* **fairness**: one user commits ``flood`` positions at once, then another user commits
  ``neighbour_entries`` plain market entries one after the other (each once the one before
  it has entered) while the flood is handled: the neighbour's created -> entry, p50/p99,
  and how many of the neighbour's entries and of the flood were refused (none should be:
  the users can pay for all of them);
* **request fairness**: the same neighbour, while one user's ``flood`` scale-in requests,
  committed at once on ``request_positions`` open positions of theirs, are handled (and
  how many of the requests were rejected);
* **reconciliation**: a reconcile pass's time while one user's ``resting`` paper orders
  rest, against none, and another user's fill meanwhile (worker/ops/bench_reconcile.py;
  the worker in this process, this checkout's code even with ``--worker-python``).

Every time comes from the database (the events' ``occurred_at``), so the bench's own
polling does not count. The users' risk limits are lifted (a thousand positions would be
refused by the defaults). See docs/benchmarks.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Final

import psycopg

from worker.ops.bench_measure import machine_cpu_seconds, percentile, sample_process
from worker.ops.bench_reconcile import run_reconcile_bench

EXECUTION_ENV: Final = {
    "POSITION_WORKER__STREAMS__EVENTS": "bench:positions:events",
    "POSITION_WORKER__STREAMS__NOTIFICATIONS": "bench:positions:notifications",
    "POSITION_WORKER__STREAMS__AI_MONITORING": "bench:positions:ai-monitoring",
    "POSITION_WORKER__EXECUTION__ENABLED": "true",
    # a thousand positions: the users' risk limits would refuse them
    "POSITION_WORKER__RISK__MAX_POSITION_NOTIONAL": "0",
    "POSITION_WORKER__RISK__MAX_OPEN_POSITIONS": "0",
    "POSITION_WORKER__RISK__MAX_OPEN_NOTIONAL": "0",
    # ... and so would the paper balances: the positions flood buys 10 BTC, about 500,000 USDT
    # at the synthetic feed's price, the request flood 0.22 BTC and the neighbour 0.2 BTC,
    # against the default 10,000 USDT. A refusal costs the worker less than a fill, so
    # refused work would flatter the figures; the phases count what was refused all the same
    "POSITION_WORKER__PAPER__STARTING_BALANCES": "USDT=1000000000",
}
ENTERED: Final = ("open", "monitoring", "failed", "closing", "closed")
WAIT_SECONDS: Final = 600.0


@dataclass(frozen=True)
class ExecutionPlan:
    positions: int = 1000
    workers: tuple[int, ...] = (1, 3)
    flood: int = 1000
    neighbour_entries: int = 20  # each committed once the one before it has entered
    rounds: int = 5
    request_positions: int = 100  # the request flood's positions (flood / this requests each)
    resting: int = 1000  # the reconciliation phase's resting orders (worker/ops/bench_reconcile.py)

    @classmethod
    def for_mode(cls, quick: bool) -> ExecutionPlan:
        return cls(200, (1,), 200, 10, 1, 20, 100) if quick else cls()


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
SELECT u, t, s, 'BTCUSDT', 'long', 'created', %(quantity)s, true
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


def commit_positions(
    conn: psycopg.Connection[Any], users: Users, quantity: str = "0.01"
) -> list[Any]:
    """One position per entry of ``users`` (``quantity`` BTC each), all in one transaction."""
    with conn.transaction():
        params = {"u": users.user_ids, "t": users.trader_ids, "s": users.signal_ids}
        rows = conn.execute(_POSITIONS, {**params, "quantity": quantity}).fetchall()
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


# every opened position asked to exit, in one transaction (autocommit: one statement)
_EXITS = (
    "SELECT request_position_exit(id) FROM positions"
    " WHERE id = ANY(%(ids)s) AND status IN ('open', 'monitoring')"
)
_COUNT_IN = "SELECT count(*) FROM positions WHERE id = ANY(%(ids)s) AND status = ANY(%(statuses)s)"
# ``each`` scale-ins on every position of ``ids``, one round over them after another; the
# request flood's positions and scale-ins are small (0.0002 BTC, 10 USDT at the synthetic
# feed's 50,000): the paper account's 10,000 USDT pays for all of them
FLOOD_QUANTITY: Final = "0.0002"
_SCALE_INS = """
SELECT request_position_scale_in(x.id, %(quantity)s)
FROM generate_series(1, %(each)s) AS g(n), unnest(%(ids)s::uuid[]) WITH ORDINALITY AS x(id, i)
ORDER BY g.n, x.i
"""
# how many of the positions' requests are settled (done or rejected), and the span from
# the first request to the last settled one
_REQUESTS_SETTLED = """
SELECT count(*) FILTER (WHERE status <> 'pending'),
       extract(epoch FROM max(updated_at) FILTER (WHERE status <> 'pending') - min(created_at)),
       count(*) FILTER (WHERE status = 'rejected')
FROM position_requests WHERE position_id = ANY(%(ids)s)
"""


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


@dataclass(frozen=True)
class Reading:
    """A moment of a burst: when (``time.monotonic()``), and the CPU seconds so far of the
    worker processes (summed) and of the machine; None where /proc cannot say (not Linux)."""

    at: float
    workers: float | None
    machine: float | None

    @classmethod
    def now(cls, pids: list[int]) -> Reading:
        try:
            workers: float | None = sum(sample_process(pid).cpu_seconds for pid in pids)
        except OSError:
            workers = None
        return cls(time.monotonic(), workers, machine_cpu_seconds())


def _per_position(before: float | None, after: float | None, positions: int) -> float | None:
    """CPU milliseconds per position between two readings (None: no reading)."""
    if before is None or after is None or not positions:
        return None
    return (after - before) * 1000 / positions


def busy(start: Reading, end: Reading, cpus: int | None) -> float | None:
    """How busy the machine was from ``start`` to ``end``: its CPU seconds over the span's
    seconds on every core (1.0: every core busy throughout), or None without a reading.
    The span ends when the bench's polling sees the phase done, up to one poll late, so a
    phase that kept every core busy reads a little under 1."""
    if start.machine is None or end.machine is None or not cpus or end.at <= start.at:
        return None
    return (end.machine - start.machine) / ((end.at - start.at) * cpus)


class ExecutionBench:
    """The execution phases, on the servers, databases and workers of a
    :class:`worker.ops.bench.Bench` (``bench``)."""

    def __init__(self, bench: Any, plan: ExecutionPlan) -> None:
        self.bench, self.plan = bench, plan

    @contextmanager
    def workers(self, db_url: str, count: int) -> Iterator[list[int]]:
        """``count`` workers on ``db_url``, running until the block ends; their pids."""
        env = {**EXECUTION_ENV, "DATABASE_URL": db_url, "REDIS_URL": self.bench.redis_url}
        procs = [self.bench.worker_process(env, f"exec-{db_url[-6:]}-{i}") for i in range(count)]
        for proc in procs:
            proc.start(args=("run",))
        try:
            yield [proc.pid for proc in procs]
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
            with self.workers(db, workers) as pids:
                start = Reading.now(pids)
                ids = commit_positions(conn, users)
                wait_for(conn, _COUNT_IN, ids, ENTERED)
                entered = Reading.now(pids)
                entries = conn.execute(_ENTRY_TIMES, {"ids": ids}).fetchall()
                opened = [p for p, (_, o) in zip(ids, entries, strict=True) if o is not None]
                asked = Reading.now(pids)
                conn.execute(_EXITS, {"ids": opened})
                wait_for(conn, _COUNT_IN, opened, ("closed",))
                end = Reading.now(pids)
                exits = conn.execute(_EXIT_TIMES, {"ids": opened}).fetchall()
        entry = spans([(a, b) for a, b in entries])
        out = spans([(a, b) for a, b in exits])
        cpus = os.cpu_count()
        return {
            "system": f"worker-{workers}",
            "positions": len(ids),
            "refused": len(ids) - entry["done"],
            "entries_per_s": entry["per_s"],
            "entry_p50_ms": entry["p50_ms"],
            "entry_p99_ms": entry["p99_ms"],
            "exits_per_s": out["per_s"],
            "exit_p99_ms": out["p99_ms"],
            "worker_cpu_ms": _per_position(start.workers, end.workers, len(ids)),
            "machine_cpu_ms": _per_position(start.machine, end.machine, len(ids)),
            "entry_busy": busy(start, entered, cpus),
            "exit_busy": busy(asked, end, cpus),
        }

    def fairness(self) -> dict[str, Any]:
        """One user's flood of positions; another user's entries meanwhile, one by one."""
        db = self.bench.empty_db()
        with psycopg.connect(db, autocommit=True) as conn:
            users = make_users(conn, 2)
            self.bench.checkpoint()
            with self.workers(db, 1):
                flood = commit_positions(conn, users.one(0, self.plan.flood))
                neighbour_times = self._neighbour_enters(conn, users.one(1))
                wait_for(conn, _COUNT_IN, flood, ENTERED)
                flood_times = conn.execute(_ENTRY_TIMES, {"ids": flood}).fetchall()
        near = spans([(a, b) for a, b in neighbour_times])
        far = spans([(a, b) for a, b in flood_times])
        return {
            "flood": len(flood),
            "flood_refused": len(flood_times) - far["done"],
            "neighbour_entries": len(neighbour_times),
            "neighbour_refused": len(neighbour_times) - near["done"],
            "neighbour_p50_ms": near["p50_ms"],
            "neighbour_p99_ms": near["p99_ms"],
            "flood_seconds": far.get("seconds", float("nan")),
            "flood_entries_per_s": far["per_s"],
        }

    def request_fairness(self) -> dict[str, Any]:
        """One user's flood of scale-in requests on their open positions; another user's
        entries meanwhile, one by one."""
        db = self.bench.empty_db()
        each = max(1, self.plan.flood // self.plan.request_positions)
        with psycopg.connect(db, autocommit=True) as conn:
            users = make_users(conn, 2)
            self.bench.checkpoint()
            with self.workers(db, 1):
                owner = users.one(0, self.plan.request_positions)
                held = commit_positions(conn, owner, FLOOD_QUANTITY)
                wait_for(conn, _COUNT_IN, held, ENTERED)
                with conn.transaction():
                    params = {"ids": held, "each": each, "quantity": FLOOD_QUANTITY}
                    conn.execute(_SCALE_INS, params)
                neighbour_times = self._neighbour_enters(conn, users.one(1))
                settled, rejected = self._wait_requests(conn, held, each * len(held))
        near = spans([(a, b) for a, b in neighbour_times])
        return {
            "requests": each * len(held),
            "requests_rejected": rejected,
            "positions": len(held),
            "neighbour_entries": len(neighbour_times),
            "neighbour_refused": len(neighbour_times) - near["done"],
            "neighbour_p50_ms": near["p50_ms"],
            "neighbour_p99_ms": near["p99_ms"],
            "flood_seconds": settled,
        }

    def _neighbour_enters(
        self, conn: psycopg.Connection[Any], neighbour: Users
    ) -> list[tuple[float, float | None]]:
        """``neighbour_entries`` entries, each committed once the one before it entered;
        their (created, entered) times."""
        mine: list[Any] = []
        for _ in range(self.plan.neighbour_entries):
            entry = commit_positions(conn, neighbour)
            wait_for(conn, _COUNT_IN, entry, ENTERED, every=0.005)
            mine += entry
        return [(a, b) for a, b in conn.execute(_ENTRY_TIMES, {"ids": mine}).fetchall()]

    @staticmethod
    def _wait_requests(
        conn: psycopg.Connection[Any], ids: list[Any], count: int
    ) -> tuple[float, int]:
        """Until ``count`` requests of the positions ``ids`` are settled; how long they took
        (from the first request's commit to the last one settled, the database's times), and
        how many were rejected."""
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            row = conn.execute(_REQUESTS_SETTLED, {"ids": ids}).fetchone()
            if row is not None and int(row[0]) >= count:
                return float(row[1]), int(row[2])
            if time.monotonic() > deadline:
                raise TimeoutError(f"{row[0] if row else 0} of {count} requests settled")
            time.sleep(0.05)  # a bench process polling the database: nothing to wait on

    def run(self) -> dict[str, Any]:
        results: dict[str, Any] = {"plan": self.plan.__dict__, "bursts": []}
        rounds = self.plan.rounds
        for r in range(1, rounds + 1):
            # which system goes first alternates too: neither always meets the machine
            # right after the other's burst (its vacuum, its dropped database)
            order = self.plan.workers if r % 2 else self.plan.workers[::-1]
            for workers in order:
                self.bench.say(
                    f"execution: round {r}/{rounds}: burst of {self.plan.positions},"
                    f" {workers} worker(s) ..."
                )
                results["bursts"].append({**self.burst(workers), "round": r})
        self.bench.say(f"execution: one user floods {self.plan.flood}, a neighbour enters ...")
        results["fairness"] = self.fairness()
        self.bench.say(
            f"execution: one user asks {self.plan.flood} scale-ins at once, a neighbour enters ..."
        )
        results["request_fairness"] = self.request_fairness()
        # in this process, on this checkout's code (even with --worker-python)
        runs = run_reconcile_bench(
            self.bench.admin_url, self.bench.redis_url, self.plan.resting, self.bench.say
        )
        results["reconciliation"] = [asdict(run) for run in runs]
        return results
