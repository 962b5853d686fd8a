"""``position-worker bench``: ceiling vs naive listener vs the worker, side by side.

Everything runs in one invocation on the same servers (embedded PostgreSQL with fsync on
and embedded Valkey, or the servers named by DATABASE_URL / REDIS_URL). The bench creates
its own databases (``pw_bench_*``) and uses ``bench:``-prefixed streams, so it never touches
the configured database or streams. Load comes from a separate process
(``worker.ops.loadgen``, 8 clients like pgbench). See docs/benchmarks.md.

Over 300 lines on purpose: the bench's phases share one set of servers, one load generator
and one report, and run in one invocation so their figures compare.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import redis

from worker.db.migrate import migrate
from worker.ops.bench_execution import ExecutionBench, ExecutionPlan
from worker.ops.bench_measure import (
    match_latencies,
    percentile,
    read_commits,
    read_stream,
    sample_process,
)
from worker.ops.bench_report import median_runs
from worker.ops.bench_setup import backlog, prepare_database
from worker.testing.processes import WorkerProcess
from worker.testing.servers import EmbeddedPostgres, EmbeddedRedis

STREAM = "bench:positions:events"
NAIVE_STREAM = "bench:naive"
PROTOTYPE_STREAM = "bench:prototype"


@dataclass(frozen=True)
class Plan:
    positions: int
    saturation_events: int
    rates: tuple[int, ...]
    seconds_per_rate: float
    backlog_events: int
    clients: int = 8
    # Saturation runs come in interleaved rounds (ceiling, naive, worker-1, worker-3, then
    # again): a shared machine's speed drifts between minutes, so one pair of runs can
    # differ by a tenth for nothing. The report gives medians and per-round ratios.
    saturation_rounds: int = 1
    backlog_rounds: int = 1  # each round: the worker's drain, then the prototype's

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls(400, 3000, (500,), 2.0, 10_000)
        return cls(
            2000, 20_000, (200, 500, 1000), 10.0, 100_000, saturation_rounds=3, backlog_rounds=2
        )


class Bench:
    def __init__(
        self,
        admin_url: str,
        redis_url: str,
        plan: Plan,
        say: Callable[[str], None],
        worker_python: str | None = None,
    ):
        self.admin_url, self.redis_url, self.plan, self.say = admin_url, redis_url, plan, say
        # another checkout's interpreter (``bench --worker-python``): its workers are measured,
        # on databases its own ``migrate`` made
        # absolute, not resolved: the workers run in the bench's own directory, and a venv's
        # python is a symlink that must stay the venv's
        self.worker_python = os.path.abspath(worker_python) if worker_python else None
        self.redis = redis.Redis.from_url(redis_url)
        self.tmp = Path(tempfile.mkdtemp(prefix="pw-bench-"))
        self._n = 0

    # -- databases and streams ---------------------------------------------------------
    def fresh_db(self) -> str:
        url = self.empty_db()
        prepare_database(url, self.plan.positions)
        self._clear_streams()
        self._checkpoint()
        return url

    def empty_db(self) -> str:
        """A new database with the schema of the workers under test, nothing in it."""
        self._n += 1
        name = f"pw_bench_{os.getpid()}_{self._n}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        url = urlsplit(self.admin_url)._replace(path=f"/{name}").geturl()
        if self.worker_python is None:
            migrate(url)
        else:
            cmd = [self.worker_python, "-m", "worker", "migrate"]
            env = {**os.environ, "DATABASE_URL": url}
            subprocess.run(cmd, check=True, env=env, cwd=self.tmp, capture_output=True)
        return url

    def checkpoint(self) -> None:
        self._clear_streams()
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Start every phase from a fresh checkpoint: the earlier phases write gigabytes of
        WAL, and the checkpoints they trigger (their writes, the full-page images after
        them) would otherwise land in whichever phase runs then, by chance."""
        with (
            contextlib.suppress(psycopg.errors.InsufficientPrivilege),
            psycopg.connect(self.admin_url, autocommit=True) as conn,
        ):
            conn.execute("CHECKPOINT")

    def drop_dbs(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for i in range(1, self._n + 1):
                conn.execute(f'DROP DATABASE IF EXISTS "pw_bench_{os.getpid()}_{i}" WITH (FORCE)')

    def _clear_streams(self) -> None:
        for pattern in ("bench:*", "pw:published:bench:*"):
            keys = list(self.redis.scan_iter(match=pattern, count=1000))
            if keys:
                self.redis.delete(*keys)

    # -- load ---------------------------------------------------------------------------
    def load(self, db_url: str, events: int, rate: float | None) -> list[tuple[str, float]]:
        out = self.tmp / f"commits-{time.monotonic_ns()}.jsonl"
        cmd = [
            sys.executable,
            "-m",
            "worker.ops.loadgen",
            db_url,
            "--events",
            str(events),
            "--clients",
            str(self.plan.clients),
            "--out",
            str(out),
        ]
        if rate:
            cmd += ["--rate", str(rate)]
        subprocess.run(cmd, check=True, timeout=600)
        return read_commits(out)

    def wait_stream(self, stream: str, count: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while int(self.redis.xlen(stream)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{stream}: {self.redis.xlen(stream)} of {count} entries")
            time.sleep(0.02)

    # -- systems under test -------------------------------------------------------------
    @contextmanager
    def naive(self, db_url: str) -> Iterator[list[int]]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.ops.naive", db_url, self.redis_url, NAIVE_STREAM],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # naive_listener_ready
        try:
            yield [proc.pid]
        finally:
            proc.terminate()
            proc.wait(30)
            proc.stdout.close()

    @contextmanager
    def workers(self, db_url: str, count: int) -> Iterator[list[int]]:
        env = {
            "DATABASE_URL": db_url,
            "REDIS_URL": self.redis_url,
            "POSITION_WORKER__STREAMS__EVENTS": STREAM,
            "POSITION_WORKER__STREAMS__NOTIFICATIONS": "bench:positions:notifications",
            "POSITION_WORKER__STREAMS__AI_MONITORING": "bench:positions:ai-monitoring",
            # the bench measures the event pipeline; its positions are driven by the load
            "POSITION_WORKER__EXECUTION__ENABLED": "false",
        }
        procs = [self.worker_process(env, f"worker-{self._n}-{i}") for i in range(count)]
        for proc in procs:
            proc.start(args=("run",))
        try:
            yield [p.pid for p in procs]
        finally:
            for proc in procs:
                proc.signal(15)
                proc.wait(60)

    def worker_process(self, env: dict[str, str], name: str) -> WorkerProcess:
        """A worker of the checkout under test, logging to a file of the bench's."""
        log = self.tmp / f"{name}.log"
        if self.worker_python is None:
            return WorkerProcess(env, log, keep_lines=False)
        return WorkerProcess(env, log, keep_lines=False, python=self.worker_python, cwd=self.tmp)

    # -- phases -------------------------------------------------------------------------
    def ceiling(self) -> dict[str, Any]:
        db = self.fresh_db()
        commits = self.load(db, self.plan.saturation_events, None)
        span = commits[-1][1] - commits[0][1]
        return {"system": "ceiling", "events": len(commits), "events_per_s": len(commits) / span}

    def end_to_end(self, system: str, rate: float | None, events: int) -> dict[str, Any]:
        db = self.fresh_db()
        stream = NAIVE_STREAM if system == "naive" else STREAM
        runner = self.naive(db) if system == "naive" else self.workers(db, int(system[-1]))
        with runner as pids:
            before = [sample_process(p) for p in pids]
            started = time.time()
            commits = self.load(db, events, rate)
            self.wait_stream(stream, len(commits))
            finished = time.time()
            after = [sample_process(p) for p in pids]
        entries = read_stream(self.redis, stream)
        latencies, missing = match_latencies(commits, entries)
        last_entry = max(t for t, _ in entries) if entries else finished
        cpu = sum(a.cpu_seconds - b.cpu_seconds for a, b in zip(after, before, strict=True))
        return {
            "system": system,
            "rate": rate,
            "events": len(commits),
            "stream_entries": len(entries),
            "missing": missing,
            "events_per_s": len(commits) / max(1e-9, last_entry - started),
            "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95),
            "p99_ms": percentile(latencies, 99),
            "cpu_s_per_1k": 1000 * cpu / max(1, len(commits)),
            "rss_mb_start": round(sum(b.rss_mb for b in before), 1),
            "rss_mb_end": round(sum(a.rss_mb for a in after), 1),
            "peak_rss_mb": round(max(a.peak_rss_mb for a in after), 1),
        }

    def _backlog_db(self) -> tuple[str, int]:
        """A fresh database holding the plan's backlog; (its URL, events committed)."""
        db = self.fresh_db()
        return db, backlog(db, self.plan.backlog_events)

    def drain(self) -> dict[str, Any]:
        db, committed = self._backlog_db()
        with self.workers(db, 1):
            started = time.time()
            self.wait_stream(STREAM, committed, timeout=600)
            elapsed = time.time() - started
        return {"system": "worker-1", "events": committed, "events_per_s": committed / elapsed}

    def drain_prototype(self) -> dict[str, Any]:
        """The same backlog drained by the bare design (worker/ops/prototype.py)."""
        db, committed = self._backlog_db()
        cmd = [sys.executable, "-m", "worker.ops.prototype", db, self.redis_url, PROTOTYPE_STREAM]
        out = subprocess.run(cmd, check=True, timeout=600, capture_output=True, text=True)
        published, seconds = out.stdout.split()[-2:]
        if int(published) != committed:
            raise RuntimeError(f"prototype drained {published} of {committed} events")
        return {
            "system": "prototype",
            "events": committed,
            "events_per_s": committed / float(seconds),
        }

    def run(self) -> dict[str, Any]:
        p = self.plan
        results: dict[str, Any] = {"plan": p.__dict__, "saturation": [], "fixed_rate": []}
        for round_ in range(1, p.saturation_rounds + 1):
            of = f" (round {round_} of {p.saturation_rounds})" if p.saturation_rounds > 1 else ""
            self.say(f"ceiling: commits with the NOTIFY trigger, nobody listening{of} ...")
            results["saturation"].append({**self.ceiling(), "round": round_})
            for system in ("naive", "worker-1", "worker-3"):
                self.say(f"saturation: {system}{of} ...")
                run = self.end_to_end(system, None, p.saturation_events)
                results["saturation"].append({**run, "round": round_})
        for rate in p.rates:
            for system in ("naive", "worker-1"):
                self.say(f"fixed rate {rate}/s: {system} ...")
                events = int(rate * p.seconds_per_rate)
                results["fixed_rate"].append(self.end_to_end(system, rate, events))
        drains: list[dict[str, Any]] = []
        for round_ in range(1, p.backlog_rounds + 1):
            of = f" (round {round_} of {p.backlog_rounds})" if p.backlog_rounds > 1 else ""
            self.say(f"backlog drain: {p.backlog_events} events, then one worker{of} ...")
            drains.append({**self.drain(), "round": round_})
            self.say(f"backlog drain: the same, by the bare prototype{of} ...")
            drains.append({**self.drain_prototype(), "round": round_})
        results["backlog_runs"] = drains
        results["backlog"] = median_runs(drains)["worker-1"]
        return results


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
    """Run every phase; start embedded servers for whatever URL is not given.
    ``execution``: ``off``, ``also`` (the execution phase after the others) or ``only``
    (the commit ceiling and the execution phase); ``worker_python``: measure the workers
    of the checkout whose interpreter this is; ``keep_logs``: leave the workers' logs (and
    the load generator's commit times) in the bench's directory, else it is removed."""
    pg = None if database_url else EmbeddedPostgres(durable=True).start()
    rd = None if redis_url else EmbeddedRedis().start()
    try:
        admin = database_url or (pg.url if pg else "")
        plan = Plan.for_mode(quick)
        bench = Bench(admin, redis_url or (rd.url if rd else ""), plan, say, worker_python)
        try:
            if execution == "only":
                say("ceiling: commits with the NOTIFY trigger, nobody listening ...")
                results: dict[str, Any] = {"plan": plan.__dict__, "saturation": [bench.ceiling()]}
            else:
                results = bench.run()
            if execution != "off":
                runner = ExecutionBench(bench, ExecutionPlan.for_mode(quick))
                results["execution"] = runner.run()
        finally:
            bench.drop_dbs()
            if keep_logs:
                say(f"the workers' logs: {bench.tmp}")
            else:
                shutil.rmtree(bench.tmp, ignore_errors=True)
        results["servers"] = _server_versions(admin, bench.redis)
        return results
    finally:
        if pg:
            pg.cleanup()
        if rd:
            rd.cleanup()


def run_paper_only(database_url: str | None, say: Callable[[str], None]) -> str:
    """``bench --paper-only``: the paper orders bench (``bench_paper.py``) on the server of
    ``database_url``, else on an embedded PostgreSQL; its report."""
    from worker.ops.bench_paper import run_paper_bench

    pg = None if database_url else EmbeddedPostgres(durable=True).start()
    try:
        return run_paper_bench(database_url or (pg.url if pg else ""), say)
    finally:
        if pg:
            pg.cleanup()


def _server_versions(admin_url: str, client: redis.Redis) -> dict[str, str]:
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    info = client.info("server")
    return {
        "postgresql": str(row[0]) if row else "?",
        "redis": str(info.get("valkey_version") or info.get("redis_version")),
        "cpus": str(os.cpu_count()),
    }


def write_json(results: dict[str, Any], path: Path) -> None:
    """The results as JSON at ``path`` (``bench --out``), its directory created if missing.
    Nothing else writes a results file: without ``--out`` the bench only prints."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
