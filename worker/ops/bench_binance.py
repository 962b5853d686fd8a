"""``position-worker bench --binance-only``: what protected positions cost on Binance.

Runs the worker in-process against the fake Binance (``worker.testing.fake_binance``, at
its documented defaults: MAX_NUM_ALGO_ORDERS 5 and MAX_NUM_ORDER_LISTS 20 per symbol,
REQUEST_WEIGHT 6,000 per minute), opens ``positions`` long positions on one symbol, each
with a stop-loss and a take-profit, on one account, and reports

* how many of them the exchange protects before protection goes worker-side (the caps);
* the REST request weight per protected position per minute at steady state (every
  request the fake received in the window, weighed as rest-api.md weighs it), by route;
* the highest ``X-MBX-USED-WEIGHT-1M`` seen and any 429/418;
* the fill-to-database latency of resting orders that fill (``bench_fills.py``), over the
  user data stream and, in the same run, with the stream off: the fills then found by the
  reconcile pass alone, at the shipped ``reconcile_interval`` and ``open_orders_interval``.

The figures are the fake's: the latency of a real network is not in them.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import anyio
import psycopg

from worker.app import App
from worker.db.migrate import migrate
from worker.exchanges.binance import BinanceClient
from worker.execution.routing import ExchangeRouter
from worker.ops.bench_fills import FillLatency, measure_fills
from worker.settings import Settings, load_settings
from worker.testing.fake_binance import FakeBinance
from worker.testing.fake_binance.table import ROUTES

KEY, SECRET = "bench-key", "bench-secret"
WEIGHT_HEADER = "x-mbx-used-weight-1m"
POLLED_PACE_S = 0.5  # stream off: one fill every half second, each timed to its own row
POLLED_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class BinanceBench:
    positions: int
    exchange_protected: int
    worker_protected: int
    unprotected: int
    steady_seconds: float
    weight: int  # in the steady window
    weight_by_route: dict[str, int] = field(default_factory=dict)
    max_used_weight_1m: int = 0
    rate_limited: int = 0  # 429 and 418 answers
    fills: tuple[FillLatency, ...] = ()  # over the stream, then with the stream off

    @property
    def weight_per_position_minute(self) -> Decimal:
        minutes = Decimal(str(self.steady_seconds)) / 60
        return (Decimal(self.weight) / self.positions / minutes).quantize(Decimal("0.01"))

    def render(self) -> str:
        routes = ", ".join(f"{r} {w}" for r, w in sorted(self.weight_by_route.items()))
        return "\n".join(
            [
                f"Binance (fake, documented defaults): {self.positions} protected positions,"
                " one symbol, one account",
                f"  exchange-protected before going worker-side: {self.exchange_protected}"
                f" (worker-side {self.worker_protected}, unprotected {self.unprotected})",
                f"  REST weight per protected position per minute at steady state:"
                f" {self.weight_per_position_minute} ({self.weight} over"
                f" {self.steady_seconds:.0f} s: {routes or 'nothing'})",
                f"  highest X-MBX-USED-WEIGHT-1M: {self.max_used_weight_1m} of 6000;"
                f" 429/418 answers: {self.rate_limited}",
                *self._fill_lines(),
            ]
        )

    def _fill_lines(self) -> list[str]:
        if not self.fills:
            return []
        lines = ["  fill-to-database of a resting order that fills:"]
        lines += [f"    {f.line()}" for f in self.fills]
        if len(self.fills) == 2 and self.fills[0].p50 > 0:
            stream, polled = self.fills
            lines.append(
                f"    stream off / over the stream: p50 x{polled.p50 / stream.p50:.0f},"
                f" p99 x{polled.p99 / stream.p99:.0f}"
            )
        return lines


def _seed(db_url: str, positions: int) -> list[uuid.UUID]:
    """One user with ``positions`` live long positions of 0.5 BTCUSDT, stop 90, take 130."""
    user, trader, signal = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO auth.users (id) VALUES (%s)", (user,))
        conn.execute("INSERT INTO traders (id, user_id) VALUES (%s, %s)", (trader, user))
        conn.execute(
            "INSERT INTO signals (id, user_id, trader_id) VALUES (%s, %s, %s)",
            (signal, user, trader),
        )
        rows = conn.execute(
            "INSERT INTO positions (user_id, trader_id, signal_id, symbol, side, status,"
            " requested_quantity, stop_loss_price, take_profit_price, is_paper_trade)"
            " SELECT %s, %s, %s, 'BTCUSDT', 'long', 'created', 0.5, 90, 130, false"
            " FROM generate_series(1, %s) RETURNING id",
            (user, trader, signal, positions),
        ).fetchall()
    return [r[0] for r in rows]


def _modes(db_url: str) -> Counter[str]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT coalesce(protection, 'none') FROM positions WHERE status = 'monitoring'"
        ).fetchall()
    return Counter(str(r[0]) for r in rows)


def _protected(modes: Counter[str]) -> int:
    return modes["exchange"] + modes["worker"]


def _weigh(fake: FakeBinance, since: int) -> Counter[str]:
    by_route: Counter[str] = Counter()
    for request in fake.requests[since:]:
        route = ROUTES.get((request.method, request.path))
        if route is not None:
            by_route[f"{request.method} {request.path}"] += route.weight(request.params)
    return by_route


async def measure(
    settings: Settings,
    positions: int,
    steady_s: float,
    say: Callable[[str], None],
    *,
    settle_timeout_s: float = 120.0,
) -> BinanceBench:
    """Open the positions with the worker running on a fresh fake Binance; once every one
    is protected (exchange or worker side), count the weight over ``steady_s``."""
    with FakeBinance(api_key=KEY, api_secret=SECRET) as fake:
        fake.set_price("BTCUSDT", "100")
        fake.set_commission("0.001", "quote")
        async with BinanceClient(KEY, SECRET, base_url=fake.base_url) as client:
            app = App(settings, handle_signals=False, router=ExchangeRouter(None, client))
            async with app.serving():
                _seed(settings.database.url, positions)
                say(f"{positions} protected positions opening on the fake Binance ...")
                with anyio.fail_after(settle_timeout_s):
                    while _protected(_modes(settings.database.url)) < positions:
                        await anyio.sleep(0.2)
                await anyio.sleep(2 * settings.execution.reconcile_interval)  # settle
                since, used = len(fake.requests), client.used.get(WEIGHT_HEADER, 0)
                say(f"steady state: counting request weight for {steady_s:.0f} s ...")
                started, peak = time.monotonic(), used
                while time.monotonic() - started < steady_s:
                    await anyio.sleep(0.5)
                    peak = max(peak, client.used.get(WEIGHT_HEADER, 0))
                elapsed = time.monotonic() - started
                by_route = _weigh(fake, since)
                modes = _modes(settings.database.url)
        limited = sum(1 for r in fake.requests if r.status in (418, 429))
    return BinanceBench(
        positions=positions,
        exchange_protected=modes["exchange"],
        worker_protected=modes["worker"],
        unprotected=modes["none"],
        steady_seconds=elapsed,
        weight=sum(by_route.values()),
        weight_by_route=dict(by_route),
        max_used_weight_1m=peak,
        rate_limited=limited,
    )


def bench_settings(base: Settings) -> Settings:
    """The shipped execution settings (reconcile passes, the REST safety net's interval),
    no per-user limit on open positions, ``bench:`` streams."""
    return replace(
        base,
        execution=replace(base.execution, enabled=True),
        pipeline=replace(base.pipeline, poll_interval=0.5),
        risk=replace(base.risk, max_open_positions=0, max_open_notional=Decimal(0)),
        streams=replace(
            base.streams,
            events="bench:binance:events",
            notifications="bench:binance:notifications",
            ai_monitoring="bench:binance:ai-monitoring",
        ),
    )


@contextmanager
def bench_database(admin_url: str, phase: str = "protection") -> Iterator[str]:
    """A fresh, migrated database of its own on the server of ``admin_url``."""
    name = f"pw_bench_binance_{phase}_{os.getpid()}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlsplit(admin_url)._replace(path=f"/{name}").geturl()
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_binance_bench(
    admin_url: str,
    redis_url: str,
    positions: int,
    steady_s: float,
    say: Callable[[str], None],
    fills: int = 0,
) -> BinanceBench:
    """The protection phase, then (``fills`` > 0) the fill latency over the user data stream
    and with the stream off: each on a fresh fake Binance and a database of its own."""

    def settings_for(db_url: str) -> Settings:
        environ = {"DATABASE_URL": db_url, "REDIS_URL": redis_url}
        return bench_settings(load_settings(environ=environ))

    with bench_database(admin_url) as db_url:
        result: Any = anyio.run(measure, settings_for(db_url), positions, steady_s, say)
    assert isinstance(result, BinanceBench)
    latencies = []
    for stream in (True, False) if fills else ():
        with bench_database(admin_url, "stream" if stream else "polled") as db_url:
            options: dict[str, Any] = {"user_stream": stream, "say": say}
            if not stream:
                options |= {"pace_s": POLLED_PACE_S, "timeout_s": POLLED_TIMEOUT_S}
            run = partial(measure_fills, settings_for(db_url), fills, **options)
            latencies.append(anyio.run(run))
    return replace(result, fills=tuple(latencies))
