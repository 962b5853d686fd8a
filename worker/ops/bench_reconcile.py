"""The reconciliation phase of ``position-worker bench`` (with ``--execution`` and
``--execution-only``): what a reconcile pass costs while one user's paper orders rest, and
how soon another user's paper fill is recorded meanwhile.

The worker runs in-process with the shipped execution settings (a pass every
``execution.reconcile_interval``, 2 s; a listing every ``execution.open_orders_interval``,
10 s) on a paper exchange whose orders live in PostgreSQL, as a deployed worker's do, over a
price the bench sets. One user (the flooder) enters ``resting`` paper positions by limit
orders far below the price; another user (the neighbour) one just below it. Once every
entry rests, the worker's passes are timed over ``PASSES`` passes
(``position_worker_reconcile_pass_seconds``) and the orders they read from the database
counted (``position_worker_reconcile_orders_read_total``); then the price crosses the
neighbour's limit and no other: the time from that move to the neighbour's trade row, which
the next pass records (up to one pass interval, plus the pass).

It runs twice, side by side: with the flood, and with none (the neighbour alone). A pass
that costs what changed, not what rests, costs about the same in both.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Final

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

from worker.app import App
from worker.db.paper_store import PgPaperStore
from worker.exchanges.paper import PaperExchange, wall_clock_ms
from worker.exchanges.prices import FixedPrices
from worker.execution.routing import ExchangeRouter
from worker.ops.bench_binance import bench_database
from worker.ops.bench_fills import SYMBOL, seed_resting_entries, wait_resting
from worker.settings import Settings, load_settings

PRICE: Final = Decimal("100")
FLOOD_LIMIT: Final = Decimal("50")  # never reached
NEIGHBOUR_LIMIT: Final = Decimal("95")
CROSSED: Final = Decimal("94")  # below the neighbour's limit, far above the flooder's
PASSES: Final = 5
PASS_SECONDS: Final = "position_worker_reconcile_pass_seconds"
ORDERS_READ: Final = "position_worker_reconcile_orders_read_total"
POLL_S: Final = 0.001


@dataclass(frozen=True)
class ReconcileRun:
    """One run: the orders resting; over ``PASSES`` passes (one of them lists), the median
    and the longest pass and the orders they read; the neighbour's fill, from the price
    move to its trade row."""

    resting: int
    pass_p50_ms: float
    pass_max_ms: float
    read_p50: float
    read_max: float
    fill_recorded_ms: float


def reconcile_settings(base: Settings) -> Settings:
    """The shipped execution settings; the flooder's positions and their held funds are
    not refused by the risk limits or the paper balances."""
    return replace(
        base,
        execution=replace(base.execution, enabled=True),
        risk=replace(
            base.risk,
            max_open_positions=0,
            max_open_notional=Decimal(0),
            max_position_notional=Decimal(0),
        ),
        paper=replace(base.paper, starting_balances={"USDT": Decimal("100000000")}),
        streams=replace(
            base.streams,
            events="bench:reconcile:events",
            notifications="bench:reconcile:notifications",
            ai_monitoring="bench:reconcile:ai-monitoring",
        ),
    )


async def measure_reconcile(
    settings: Settings, resting: int, say: Callable[[str], None]
) -> ReconcileRun:
    """One run on an empty database (module notes)."""
    db_url = settings.database.url
    prices = FixedPrices({SYMBOL: PRICE})
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db_url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
    )
    await pool.open()
    try:
        store = PgPaperStore(pool, settings.paper.starting_balances)
        paper = PaperExchange(prices, clock=wall_clock_ms, store=store)
        app = App(settings, handle_signals=False, router=ExchangeRouter(paper))
        async with app.serving():
            say(f"reconciliation: {resting} resting paper entries of one user, one of another ...")
            flood = seed_resting_entries(db_url, [FLOOD_LIMIT] * resting, paper=True)
            [neighbour] = seed_resting_entries(db_url, [NEIGHBOUR_LIMIT], paper=True)
            *_, order_id = await wait_resting(db_url, [*flood, neighbour], 120 + resting / 10)
            watcher = app.watcher
            assert watcher is not None
            registry = app.metrics.registry

            def sample(name: str) -> float:
                return registry.get_sample_value(name) or 0.0

            await _passes(app, 1)  # a whole pass after the last entry rested
            spent, read = [], []
            for _ in range(PASSES):  # each pass's time and reads, from the metrics
                before = (sample(f"{PASS_SECONDS}_sum"), sample(ORDERS_READ))
                await _passes(app, 1)
                spent.append(sample(f"{PASS_SECONDS}_sum") - before[0])
                read.append(sample(ORDERS_READ) - before[1])
            say(f"reconciliation: the price crosses the neighbour's limit ({resting} resting) ...")
            seconds = await anyio.to_thread.run_sync(
                lambda: _time_fill(db_url, prices, order_id), abandon_on_cancel=True
            )
    finally:
        await pool.close()
    return ReconcileRun(
        resting,
        statistics.median(spent) * 1000,
        max(spent) * 1000,
        statistics.median(read),
        max(read),
        seconds * 1000,
    )


async def _passes(app: App, count: int) -> None:
    """Until the watcher has finished ``count`` more passes (the bench polls its counter)."""
    assert app.watcher is not None
    until = app.watcher.passes + count
    with anyio.fail_after(30 * count):
        while app.watcher.passes < until:
            await anyio.sleep(0.01)


def _time_fill(db_url: str, prices: FixedPrices, order_id: uuid.UUID) -> float:
    """In a thread: cross the neighbour's limit; the seconds until its trade row is
    visible to another connection."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        started = time.perf_counter()
        prices.set(SYMBOL, CROSSED)
        query = "SELECT 1 FROM trades WHERE order_id = %s"
        while conn.execute(query, (order_id,)).fetchone() is None:
            if time.perf_counter() - started > 60:
                raise TimeoutError("the neighbour's fill never reached the database")
            time.sleep(POLL_S)
        return time.perf_counter() - started


def run_reconcile_bench(
    admin_url: str, redis_url: str, resting: int, say: Callable[[str], None]
) -> list[ReconcileRun]:
    """Both runs, each on a database of its own: ``resting`` orders, then none."""
    runs = []
    for count in (resting, 0):
        with bench_database(admin_url, f"reconcile{count}") as db_url:
            environ = {"DATABASE_URL": db_url, "REDIS_URL": redis_url}
            settings = reconcile_settings(load_settings(environ=environ))
            runs.append(anyio.run(measure_reconcile, settings, count, say))
    return runs


def render_reconcile(runs: list[ReconcileRun]) -> list[str]:
    """The report's lines: each run, and the pass's time with the flood against without."""
    lines = [
        "Reconciliation (paper, the shipped intervals: a pass every 2 s, a listing every 10 s;"
        " one user's resting entries, another's fill)",
        f"{'resting':>8}{'pass p50 ms':>13}{'pass max ms':>13}{'read p50':>10}{'read max':>10}"
        f"{'fill recorded ms':>18}",
    ]
    lines += [
        f"{r.resting:>8,}{r.pass_p50_ms:>13.1f}{r.pass_max_ms:>13.1f}{r.read_p50:>10,.0f}"
        f"{r.read_max:>10,.0f}{r.fill_recorded_ms:>18,.0f}"
        for r in runs
    ]
    flooded, alone = runs[0], runs[-1]
    if len(runs) > 1 and alone.pass_p50_ms > 0:
        lines.append(
            f"a pass between listings with {flooded.resting:,} resting / with none: "
            f"x{flooded.pass_p50_ms / alone.pass_p50_ms:.2f}"
        )
    return lines
