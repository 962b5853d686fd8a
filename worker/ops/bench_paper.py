"""``position-worker bench --paper-only``: 10,000 paper orders through the paper exchange with
its PostgreSQL store (the worker's), then the same through the in-memory store; memory (RSS)
and cost (wall and CPU time) per block of 1,000 orders, first block against last.

The orders come in rounds of four per user (10 users, BTCUSDT): a market buy and a market
sell that fill at once, a limit sell above and a limit buy below the price that rest; the
price then moves up and down through both and every resting order is looked up, as the
engine's reconcile pass does (``get_order``: it matches at the feed's price first). So the
book always holds resting orders while the order tables grow by 10,000 rows.

Memory is this process's resident set (``/proc/self/statm``, else ``ru_maxrss``): the
PostgreSQL server's memory is not in it. The server: ``worker.ops.bench.run_paper_only``
(embedded PostgreSQL with fsync on, unless DATABASE_URL names one); this bench creates and
drops its own database there.
"""

from __future__ import annotations

import os
import resource
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

from worker.db.migrate import migrate
from worker.db.paper_store import PgPaperStore
from worker.exchanges.base import OrderRequest
from worker.exchanges.paper import PaperExchange
from worker.exchanges.paper_store import MemoryPaperStore, PaperStore
from worker.exchanges.prices import FixedPrices

ORDERS = 10_000
BLOCK = 1_000
USERS = 10
START = {"USDT": Decimal("1000000"), "BTC": Decimal("100")}
D = Decimal


@dataclass(frozen=True)
class Block:
    orders: int  # orders placed so far
    seconds: float  # wall time of this block
    cpu_seconds: float  # this process's CPU time in this block
    rss_mb: float  # resident memory at the end of the block

    def line(self) -> str:
        return (
            f"{self.orders:>6} orders  {self.seconds * 1000:8.0f} ms/1000  "
            f"cpu {self.cpu_seconds * 1000:7.0f} ms/1000  rss {self.rss_mb:6.1f} MB"
        )


def rss_mb() -> float:
    """This process's resident memory now (Linux), else its peak."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drive(
    store: PaperStore, users: list[str], orders: int = ORDERS, block: int = BLOCK
) -> list[Block]:
    """Place ``orders`` paper orders in rounds (module notes); one Block per ``block``."""
    feed = FixedPrices({"BTCUSDT": D("100")})
    paper = PaperExchange(feed, clock=lambda: time.time_ns() // 1_000_000, store=store)
    blocks: list[Block] = []
    placed, wall, cpu = 0, time.perf_counter(), cpu_seconds()
    while placed < orders:
        account = paper.for_account(users[(placed // 4) % len(users)])
        await _round(account, feed, f"{placed}")
        placed += 4
        if placed % block == 0:
            now_wall, now_cpu = time.perf_counter(), cpu_seconds()
            blocks.append(Block(placed, now_wall - wall, now_cpu - cpu, rss_mb()))
            wall, cpu = now_wall, now_cpu
    return blocks


async def _round(account: PaperExchange, feed: FixedPrices, tag: str) -> None:
    qty = D("0.1")
    await account.place_order(OrderRequest("BTCUSDT", "buy", "market", f"mb{tag}", qty))
    await account.place_order(OrderRequest("BTCUSDT", "sell", "market", f"ms{tag}", qty))
    await account.place_order(
        OrderRequest("BTCUSDT", "sell", "limit", f"ls{tag}", qty, price=D("101"))
    )
    await account.place_order(
        OrderRequest("BTCUSDT", "buy", "limit", f"lb{tag}", qty, price=D("99"))
    )
    for price, cid in ((D("102"), f"ls{tag}"), (D("98"), f"lb{tag}")):
        feed.set("BTCUSDT", price)
        state = await account.get_order("BTCUSDT", cid)  # matches first, like reconcile
        assert state is not None and state.status == "FILLED", state
    feed.set("BTCUSDT", D("100"))


async def _pg_run(db_url: str, users: list[str]) -> list[Block]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db_url, min_size=2, max_size=4, kwargs={"autocommit": True}, open=False
    )
    await pool.open()
    try:
        return await drive(PgPaperStore(pool, START), users)
    finally:
        await pool.close()


def _seed_users(db_url: str) -> list[str]:
    users = [str(uuid.uuid4()) for _ in range(USERS)]
    with psycopg.connect(db_url, autocommit=True) as conn:
        for user in users:
            conn.execute(
                "INSERT INTO auth.users (id, email) VALUES (%s, %s)", (user, f"{user}@bench")
            )
    return users


def run_paper_bench(admin_url: str, say: Callable[[str], None]) -> str:
    """Both runs, in a database of their own on the server of ``admin_url``; the report."""
    name = f"pw_bench_paper_{os.getpid()}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    try:
        migrate(db_url)
        users = _seed_users(db_url)
        say(f"{ORDERS} paper orders, PostgreSQL store ...")
        pg_blocks = anyio.run(_pg_run, db_url, users)
        say(f"{ORDERS} paper orders, in-memory store ...")
        memory_blocks = anyio.run(drive, MemoryPaperStore(START), users)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return render(pg_blocks, memory_blocks)


def render(pg_blocks: list[Block], memory_blocks: list[Block]) -> str:
    lines = [f"Paper orders: {ORDERS} through the paper exchange ({os.cpu_count()} CPUs)"]
    for title, blocks in (("PostgreSQL store", pg_blocks), ("in-memory store", memory_blocks)):
        first, last = blocks[0], blocks[-1]
        lines += [f"\n{title}:", *(b.line() for b in blocks)]
        lines.append(
            f"last/first block: time x{last.seconds / first.seconds:.2f}, "
            f"cpu x{last.cpu_seconds / max(first.cpu_seconds, 1e-9):.2f}, "
            f"rss {last.rss_mb - first.rss_mb:+.1f} MB"
        )
    return "\n".join(lines)
