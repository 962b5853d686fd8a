"""Load generator for the benchmark: commits position state changes, one per transaction.

Runs as its own process (``python -m worker.ops.loadgen``) so it never shares a CPU
scheduler slot or an event loop with what it measures. Each client owns a slice of the
positions (no lock contention between clients) and toggles them ``monitoring <-> closing``,
both legal transitions that no handler reacts to. With ``--rate`` the changes are spread
evenly over time (offered load); without it every client commits as fast as it can.
Writes one JSON line per commit: ``[position_id, commit_returned_epoch_seconds]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections.abc import Sequence

import psycopg

TOGGLE = "UPDATE positions SET status = %s WHERE id = %s"


async def run_load(
    db_url: str, events: int, clients: int, rate: float | None
) -> list[tuple[str, float]]:
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cur = await conn.execute(
            "SELECT id::text, status FROM positions"
            " WHERE status IN ('monitoring', 'closing') ORDER BY id"
        )
        rows = await cur.fetchall()
    if len(rows) < clients:
        raise SystemExit("loadgen: not enough positions in monitoring/closing")
    counter = itertools.count()
    start = time.perf_counter() + 0.05
    slices = [rows[i::clients] for i in range(clients)]
    results = await asyncio.gather(
        *(_client(db_url, s, counter, events, start, rate) for s in slices)
    )
    return sorted((r for chunk in results for r in chunk), key=lambda r: r[1])


async def _client(
    db_url: str,
    positions: Sequence[tuple[str, str]],
    counter: itertools.count[int],
    events: int,
    start: float,
    rate: float | None,
) -> list[tuple[str, float]]:
    status = dict(positions)
    ids = itertools.cycle([p for p, _ in positions])
    done: list[tuple[str, float]] = []
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        while (n := next(counter)) < events:
            if rate:
                delay = start + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            pid = next(ids)
            new = "closing" if status[pid] == "monitoring" else "monitoring"
            await conn.execute(TOGGLE, (new, pid))
            status[pid] = new
            done.append((pid, time.time()))
    return done


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.ops.loadgen")
    parser.add_argument("db_url")
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=float, default=None, help="changes per second (all)")
    parser.add_argument("--out", required=True, help="JSON lines: position_id, commit time")
    args = parser.parse_args(argv)
    commits = asyncio.run(run_load(args.db_url, args.events, args.clients, args.rate))
    with open(args.out, "w", encoding="utf-8") as out:
        for record in commits:
            out.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
