"""Shared by the chaos scenarios: background load, worker fleets, and the invariant checks.

The invariants, each returned as a count or a list so that a scenario can print
its summary line *before* asserting:

* every committed event exactly once in ``positions:events`` (:func:`delivery`);
* every position's figures equal the fold of its fills (:func:`figure_mismatches`);
* exactly one exchange order per intent (:func:`duplicate_orders`);
* no position stuck in ``submitting``/``closing`` once faults stop (:func:`stuck_positions`).
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import psycopg
from anyio.abc import TaskStatus
from psycopg.rows import dict_row

from tests.execution_support import KEY, SECRET
from tests.pipeline_support import burst, eventually, stream_entries
from worker.accounting import (
    Fill,
    Market,
    fold,
    quantize_money,
    quantize_percent,
)
from worker.app import App
from worker.exchanges.binance import BinanceClient
from worker.execution.routing import ExchangeRouter
from worker.settings import Settings
from worker.testing.fake_binance import DEFAULT_SYMBOLS, FakeBinance
from worker.testing.processes import WorkerProcess

# -- load ------------------------------------------------------------------------------------


class Load:
    """Commit position events from a background thread, paced at ``rate`` events/s, until
    :meth:`stop` (or ``limit`` events, or ``max_seconds``: every run is bounded)."""

    def __init__(
        self,
        db_url: str,
        *,
        rate: float = 400.0,
        limit: int = 20_000,
        max_seconds: float = 90.0,
        chunk: int = 20,
        seed: int = 1,
    ) -> None:
        self.db_url, self.rate, self.limit = db_url, rate, limit
        self.max_seconds, self.chunk, self.seed = max_seconds, chunk, seed
        self.committed = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        rounds = 0
        try:
            while not self._stop.is_set() and self.committed < self.limit:
                if time.monotonic() - started > self.max_seconds:
                    break
                self.committed += burst(self.db_url, self.chunk, seed=self.seed * 100_000 + rounds)
                rounds += 1
                ahead = self.committed / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    self._stop.wait(ahead)  # pacing the offered rate, not waiting for a state
        except BaseException as exc:  # reported by stop(), in the test's thread
            self.error = exc

    def stop(self, timeout: float = 30.0) -> int:
        """Stop committing; how many events were committed."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the load generator did not stop")
        if self.error is not None:
            raise self.error
        return self.committed


# -- worker processes --------------------------------------------------------------------------


class Fleet:
    """``position-worker run`` processes started by a scenario; all SIGKILLed at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[WorkerProcess] = []

    def start(self, env: dict[str, str]) -> WorkerProcess:
        proc = WorkerProcess(env, self.log_dir / f"worker-{len(self.started)}.log").start()
        self.started.append(proc)
        return proc

    def alive(self, proc: WorkerProcess) -> bool:
        return proc.process is not None and proc.process.poll() is None

    def kill_all(self) -> None:
        for proc in self.started:
            proc.kill()


def with_app_name(url: str, name: str) -> str:
    """The same database URL with ``application_name`` set (to find its backends)."""
    return urlsplit(url)._replace(query=f"application_name={name}").geturl()


def terminate_backends(admin_url: str, db_url: str, app_names: Iterable[str]) -> Counter[str]:
    """``pg_terminate_backend`` every connection to ``db_url`` with one of these names; how
    many were terminated, per name."""
    dbname = urlsplit(db_url).path.lstrip("/")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = ANY(%s) AND pid <> pg_backend_pid()",
            (dbname, list(app_names)),
        ).fetchall()
    return Counter(str(name) for name, ok in rows if ok)


class Crashes(list[BaseException]):
    """What took an in-process worker down (empty while it runs)."""

    def describe(self) -> str:
        return "".join(line for exc in self for line in traceback.format_exception(exc))


@asynccontextmanager
async def engine_worker(settings: Settings, fake: FakeBinance) -> AsyncIterator[Crashes]:
    """The worker in-process with the engine on the fake Binance, as
    ``tests.execution_support.live_worker`` runs it (fills pushed over the fake's user data
    stream), except that a crash of the worker is recorded rather than raised into the
    scenario, which then reports it."""
    crashes = Crashes()
    client = BinanceClient(
        KEY, SECRET, base_url=fake.base_url, timeout_s=2.0, ws_api_url=fake.ws_api_url
    )
    async with client:
        app = App(settings, handle_signals=False, router=ExchangeRouter(None, client))

        async def run(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                await app.run(task_status=task_status)
            except Exception as exc:
                crashes.append(exc)

        async with anyio.create_task_group() as tg:
            await tg.start(run)
            try:
                yield crashes
            finally:
                app.stop()


async def settle(check: Callable[[], object], crashes: Crashes, timeout: float) -> float:
    """Seconds until ``check()`` holds, or the worker crashed (then: no wait, it is reported)."""
    started = time.monotonic()
    await eventually(lambda: crashes or check(), timeout=timeout)
    return time.monotonic() - started


# -- the outbox and the stream -----------------------------------------------------------------


def outbox_counts(db_url: str) -> tuple[int, int]:
    """(pending, dead) events in the outbox."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE processed_at IS NULL AND dead_at IS NULL),"
            " count(*) FILTER (WHERE dead_at IS NOT NULL AND processed_at IS NULL)"
            " FROM position_events"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def pending(db_url: str) -> int:
    return outbox_counts(db_url)[0]


def max_event_id(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM position_events").fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class Delivery:
    events: int  # committed events (position_events rows) considered
    published: int  # entries of positions:events for them
    lost: int  # committed, not in the stream
    duplicated: int  # in the stream more than once (extra copies)
    foreign: int  # in the stream, never committed (must be 0)


def delivery(db_url: str, redis_url: str, after_id: int = 0) -> Delivery:
    """Committed events (id > ``after_id``) against the entries of ``positions:events``."""
    with psycopg.connect(db_url) as conn:
        committed = {
            int(r[0])
            for r in conn.execute("SELECT id FROM position_events WHERE id > %s", (after_id,))
        }
    seen = Counter(
        int(e["event_id"]) for e in stream_entries(redis_url) if int(e["event_id"]) > after_id
    )
    return Delivery(
        events=len(committed),
        published=sum(seen.values()),
        lost=len(committed - seen.keys()),
        duplicated=sum(n - 1 for n in seen.values()),
        foreign=len(seen.keys() - committed),
    )


# -- positions, orders and fills -----------------------------------------------------------------

_MARKETS = {s["symbol"]: Market(s["baseAsset"], s["quoteAsset"]) for s in DEFAULT_SYMBOLS}
# The recorder's order (worker/db/execution.sql, exec_fills_of_position): by execution time.
_FILLS = """
SELECT t.position_id, t.side, t.price, t.quantity, t.fee, t.fee_asset, t.fee_quote,
       t.binance_trade_id
FROM trades t JOIN orders o ON o.id = t.order_id
ORDER BY t.position_id, t.executed_at, o.created_at, t.binance_trade_id
"""
_EXIT_COLUMNS = (
    "exit_quantity",
    "exit_value",
    "exit_price",
    "realized_pnl",
    "realized_pnl_percent",
)


def figure_mismatches(db_url: str) -> list[str]:
    """Positions whose stored figures differ from ``worker.accounting.fold`` of the fills in
    ``trades``, as ``"<id> <column>: stored X, fold Y"`` (an empty list when all agree)."""
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        positions = {str(p["id"]): p for p in conn.execute("SELECT * FROM positions").fetchall()}
        fills: dict[str, list[Fill]] = {}
        for r in conn.execute(_FILLS).fetchall():
            market = _MARKETS[positions[str(r["position_id"])]["symbol"]]
            fills.setdefault(str(r["position_id"]), []).append(
                Fill(
                    side=r["side"],
                    price=r["price"],
                    quantity=r["quantity"],
                    fee=r["fee"] or Decimal(0),
                    fee_asset=r["fee_asset"] or market.quote_asset,
                    fee_quote=r["fee_quote"] or Decimal(0),
                    trade_id=r["binance_trade_id"],
                )
            )
    problems: list[str] = []
    for pid, position in positions.items():
        problems += _compare(pid, position, fills.get(pid, []))
    return problems


def _compare(pid: str, position: dict[str, Any], fills: list[Fill]) -> list[str]:
    if not fills:
        held = position["held_quantity"]
        return [] if not held else [f"{pid} held_quantity: stored {held}, no fills"]
    f = fold(position["side"], _MARKETS[position["symbol"]], fills)
    expected: dict[str, Decimal | None] = {
        "held_quantity": quantize_money(f.held_quantity),
        "entry_quantity": quantize_money(f.entry_quantity),
        "entry_value": quantize_money(f.entry_value),
        "entry_price": quantize_money(f.entry_price),
        "fees_paid": quantize_money(f.fees_paid),
        "entry_cost": quantize_money(f.entry_cost),
    }
    if f.exit_quantity:
        expected.update(
            exit_quantity=quantize_money(f.exit_quantity),
            exit_value=quantize_money(f.exit_value),
            exit_price=quantize_money(f.exit_price),
            realized_pnl=quantize_money(f.realized_pnl),
            realized_pnl_percent=quantize_percent(f.realized_pnl_percent),
        )
    else:
        expected.update(dict.fromkeys(_EXIT_COLUMNS))
    return [
        f"{pid} {column}: stored {position[column]}, fold {value}"
        for column, value in expected.items()
        if position[column] != value
    ]


def duplicate_orders(db_url: str, fake: FakeBinance) -> list[str]:
    """Order rows whose client order id does not match exactly one order on the exchange."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT client_order_id, purpose, status FROM orders"
            " WHERE client_order_id IS NOT NULL ORDER BY created_at"
        ).fetchall()
    return [
        f"{cid} ({purpose}, {status}): {n} on the exchange"
        for cid, purpose, status in rows
        if (n := fake.order_count(cid)) != 1
    ]


def stuck_positions(db_url: str) -> list[tuple[uuid.UUID, str]]:
    """Positions still waiting for the worker (created, submitting or closing)."""
    with psycopg.connect(db_url) as conn:
        return [
            (r[0], r[1])
            for r in conn.execute(
                "SELECT id, status FROM positions"
                " WHERE status IN ('created', 'submitting', 'closing') ORDER BY id"
            )
        ]


def statuses(db_url: str) -> Counter[str]:
    with psycopg.connect(db_url) as conn:
        return Counter(
            {
                str(s): int(n)
                for s, n in conn.execute("SELECT status, count(*) FROM positions GROUP BY 1")
            }
        )
