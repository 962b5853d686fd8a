"""Fill-to-database latency of resting orders, measured against the fake Binance.

Resting limit entries of one account on BTCUSDT, each at its own price below the market;
the price then walks down through them. Each fill is timed from just before the fake makes
it (``set_price``) to the moment its ``trades`` row is visible to another connection
(polled every 0.5 ms from a thread of its own, so the worker's event loop is not slowed by
the measuring). Used by ``position-worker bench --binance-only`` (``bench_binance.py``)
and by ``tests/integration/test_user_stream_latency.py``.

Over the user data stream the fills are made one at a time: the next once the last is
recorded. With the stream off a fill waits for the reconcile pass that lists the open
orders (every ``execution.open_orders_interval``), seconds rather than milliseconds: those
fills are made at a fixed pace instead, each still timed to its own row, so that the run
does not last one listing interval per fill.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import anyio
import psycopg

from worker.app import App
from worker.exchanges.binance import BinanceClient
from worker.execution.routing import ExchangeRouter
from worker.ops.bench_measure import percentile
from worker.settings import Settings
from worker.testing.fake_binance import DEFAULT_SYMBOLS, FakeBinance

KEY, SECRET = "bench-key", "bench-secret"
SYMBOL = "BTCUSDT"
POLL_S = 0.0005
QUANTITY = Decimal("0.1")


@dataclass(frozen=True)
class FillLatency:
    """Fill-to-database latencies of one run, in ms, in the order the fills were made."""

    label: str
    latencies_ms: tuple[float, ...]
    reconcile_passes: int = 0  # the worker's reconcile passes while it ran

    @property
    def p50(self) -> float:
        return percentile(list(self.latencies_ms), 50)

    @property
    def p99(self) -> float:
        return percentile(list(self.latencies_ms), 99)

    @property
    def max(self) -> float:
        return max(self.latencies_ms, default=float("nan"))

    def line(self) -> str:
        return (
            f"{self.label}, {len(self.latencies_ms)} fills: p50 {self.p50:.1f} ms,"
            f" p99 {self.p99:.1f} ms, max {self.max:.1f} ms"
        )


def entry_prices(count: int, top: Decimal = Decimal("99")) -> list[Decimal]:
    """``count`` limit prices 0.1 apart from ``top`` down: a walk down fills one at a time."""
    return [top - Decimal("0.1") * i for i in range(count)]


def roomy_symbols(max_orders: int) -> tuple[dict[str, Any], ...]:
    """The fake's symbols with room for ``max_orders`` open orders per symbol (filters.md
    MAX_NUM_ORDERS), copies: the module's defaults are left as they are."""

    def roomy(f: dict[str, Any]) -> dict[str, Any]:
        wanted = f["filterType"] == "MAX_NUM_ORDERS"
        return {**f, "maxNumOrders": max(max_orders, f["maxNumOrders"])} if wanted else f

    return tuple({**s, "filters": [roomy(f) for f in s["filters"]]} for s in DEFAULT_SYMBOLS)


def make_room(fake: FakeBinance) -> None:
    """The setup places every entry at once: room for them (the measure is of the fills)."""
    fake.set_rate_limit("ORDERS", "SECOND", 10, 10_000)


def seed_resting_entries(
    db_url: str, prices: Sequence[Decimal], *, paper: bool = False
) -> list[uuid.UUID]:
    """One user with a long position of 0.1 BTCUSDT per price (live, or ``paper``), each
    entered by a limit order at that price (no stop-loss or take-profit: the fills alone
    are measured)."""
    user, trader, signal = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO auth.users (id) VALUES (%s)", (user,))
        conn.execute("INSERT INTO traders (id, user_id) VALUES (%s, %s)", (trader, user))
        conn.execute(
            "INSERT INTO signals (id, user_id, trader_id) VALUES (%s, %s, %s)",
            (signal, user, trader),
        )
        ids = []
        for price in prices:
            row = conn.execute(
                "INSERT INTO positions (user_id, trader_id, signal_id, symbol, side, status,"
                " requested_quantity, limit_price, is_paper_trade)"
                " VALUES (%s, %s, %s, %s, 'long', 'created', %s, %s, %s) RETURNING id",
                (user, trader, signal, SYMBOL, QUANTITY, price, paper),
            ).fetchone()
            assert row is not None
            ids.append(row[0])
    return ids


def entry_order_ids(db_url: str, pids: Sequence[uuid.UUID]) -> list[uuid.UUID] | None:
    """The entry order of each position, in the same order, once every one rests on the
    exchange (``submitted``); None before."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT position_id, id, status FROM orders WHERE position_id = ANY(%s)",
            (list(pids),),
        ).fetchall()
    by_position: dict[uuid.UUID, list[tuple[uuid.UUID, str]]] = {}
    for pid, order_id, status in rows:
        by_position.setdefault(pid, []).append((order_id, status))
    ids = []
    for pid in pids:
        entries = by_position.get(pid, [])
        if len(entries) != 1 or entries[0][1] != "submitted":
            return None
        ids.append(entries[0][0])
    return ids


async def wait_resting(db_url: str, pids: Sequence[uuid.UUID], timeout_s: float) -> list[uuid.UUID]:
    with anyio.fail_after(timeout_s):
        while (ids := entry_order_ids(db_url, pids)) is None:
            await anyio.sleep(0.2)
    return ids


def time_fills(
    db_url: str,
    fake: FakeBinance,
    prices: Sequence[Decimal],
    ids: Sequence[uuid.UUID],
    *,
    pace_s: float | None = None,
    timeout_s: float = 5.0,
) -> list[float]:
    """In a thread: walk the price down through ``prices``, filling ``ids`` in turn; the
    seconds from each fill to its trade being visible, in the same order. ``pace_s`` None:
    the next fill once the last is recorded; else one fill every ``pace_s``."""
    made: list[float] = []  # when each fill was made
    seen: dict[uuid.UUID, float] = {}  # when each trade was seen
    with psycopg.connect(db_url, autocommit=True) as conn:
        while len(seen) < len(ids):
            if _next_fill_due(len(made), len(ids), len(seen), made[:1], pace_s):
                made.append(time.perf_counter())
                fake.set_price(SYMBOL, prices[len(made) - 1])
            pending = [x for x in ids[: len(made)] if x not in seen]
            rows = conn.execute(
                "SELECT DISTINCT order_id FROM trades WHERE order_id = ANY(%s)", (pending,)
            ).fetchall()
            now = time.perf_counter()
            seen.update((row[0], now) for row in rows)
            for order_id, at in zip(ids, made, strict=False):
                if order_id not in seen and now - at > timeout_s:
                    raise TimeoutError(f"the fill of {order_id} never reached the database")
            time.sleep(POLL_S)
    return [seen[x] - t for x, t in zip(ids, made, strict=True)]


def _next_fill_due(
    made: int, total: int, recorded: int, first: list[float], pace_s: float | None
) -> bool:
    if made == total:
        return False
    if not first or pace_s is None:
        return recorded == made
    return time.perf_counter() >= first[0] + made * pace_s


def time_burst(db_url: str, fake: FakeBinance, price: Decimal, count: int) -> float:
    """In a thread: one price move that fills ``count`` resting orders at once; the seconds
    until the last of their trades is visible."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        started = time.perf_counter()
        fake.set_price(SYMBOL, price)
        while (conn.execute("SELECT count(*) FROM trades").fetchone() or [0])[0] < count:
            if time.perf_counter() - started > 10:
                raise TimeoutError("the burst never reached the database")
            time.sleep(POLL_S)
        return time.perf_counter() - started


async def measure_fills(
    settings: Settings,
    fills: int,
    *,
    user_stream: bool,
    say: Callable[[str], None],
    pace_s: float | None = None,
    timeout_s: float = 5.0,
) -> FillLatency:
    """The worker in-process on a fresh fake Binance with ``fills`` resting entries of one
    account; their fills timed (``time_fills``), fills pushed over the user data stream or,
    ``user_stream`` False, found by the reconcile pass alone. The database must be empty."""
    binance = replace(settings.binance, user_stream=user_stream)
    settings = replace(settings, binance=binance)
    with FakeBinance(api_key=KEY, api_secret=SECRET, symbols=roomy_symbols(fills)) as fake:
        fake.set_price(SYMBOL, "100")
        fake.set_commission("0.001", "quote")
        make_room(fake)
        ws = fake.ws_api_url if user_stream else None
        async with BinanceClient(KEY, SECRET, base_url=fake.base_url, ws_api_url=ws) as client:
            app = App(settings, handle_signals=False, router=ExchangeRouter(None, client))
            async with app.serving():
                prices = entry_prices(fills)
                pids = seed_resting_entries(settings.database.url, prices)
                say(f"{fills} resting entries on the fake Binance ...")
                ids = await wait_resting(settings.database.url, pids, 120)
                how = "one at a time" if pace_s is None else f"one every {pace_s:g} s"
                where = "over the user data stream" if user_stream else "by the reconcile pass"
                say(f"filling them {how}, fills recorded {where} ...")
                seconds = await anyio.to_thread.run_sync(
                    lambda: time_fills(
                        settings.database.url, fake, prices, ids, pace_s=pace_s, timeout_s=timeout_s
                    )
                )
                passes = app.watcher.passes if app.watcher is not None else 0
    label = "user data stream" if user_stream else "reconcile pass alone (stream off)"
    return FillLatency(label, tuple(s * 1000 for s in seconds), passes)
