"""``position-worker demo``: the whole loop on embedded servers, in under a minute.

Starts embedded PostgreSQL and Valkey (or uses DATABASE_URL / REDIS_URL), migrates, runs
the worker in-process, plays a short session and shows, as it happens, what downstream
consumers receive on the streams; ends with a summary per position.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any, TextIO

import anyio
import redis.asyncio as aioredis

from worker.app import App, make_pool
from worker.db.migrate import migrate
from worker.db.paper_store import PgPaperStore
from worker.exchanges.paper import PaperExchange, wall_clock_ms
from worker.exchanges.paper_book import PaperConfig
from worker.exchanges.prices import SyntheticPrices
from worker.execution.routing import ExchangeRouter
from worker.logs import configure_logging
from worker.ops.demo_script import DEMO_BALANCES, DemoSession
from worker.settings import Settings, load_settings
from worker.testing.servers import EmbeddedPostgres, EmbeddedRedis

COLOURS = {"info": "32", "warning": "33", "error": "31", "critical": "1;31"}


@contextlib.contextmanager
def demo_servers(
    keep: bool, say: Callable[[str], None], db_url: str | None, redis_url: str | None
) -> Iterator[tuple[str, str]]:
    """The given URLs, else embedded servers in a temporary directory."""
    pg = None if db_url else EmbeddedPostgres()
    rd = None if redis_url else EmbeddedRedis()
    try:
        if pg:
            say("starting embedded PostgreSQL ...")
            pg.start()
        if rd:
            say("starting embedded Redis-compatible server (Valkey) ...")
            rd.start()
        yield (db_url or (pg.url if pg else ""), redis_url or (rd.url if rd else ""))
    finally:
        if not keep:
            try:  # the second cleanup runs even if a Ctrl-C interrupts the first
                if pg is not None:
                    pg.cleanup()
            finally:
                if rd is not None:
                    rd.cleanup()


class Printer:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.colour = out.isatty()

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour else text

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def say(self, text: str) -> None:
        self.line(self.paint(f"> {text}", "1"))

    def entry(self, stream: str, fields: dict[str, str]) -> None:
        short = stream.split(":")[-1]
        if short == "notifications":
            sev = fields.get("severity", "info")
            text = f"{fields.get('title')}: {fields.get('message')}"
            self.line(f"  {self.paint(f'[{short}]', '36')} {self.paint(sev, COLOURS[sev])} {text}")
            return
        what = fields.get("type", "")
        pos = fields.get("position_id", "")[:8]
        detail = " ".join(
            f"{k}={fields[k]}"
            for k in (
                "side",
                "quantity",
                "price",
                "filled_quantity",
                "fee",
                "fee_asset",
                "realized_pnl",
            )
            if fields.get(k)
        )
        self.line(
            f"  {self.paint(f'[{short}]', '36')} #{fields.get('event_id')} {what} "
            f"position {pos} {detail}".rstrip()
        )


async def follow_streams(settings: Settings, printer: Printer) -> None:
    client = aioredis.Redis.from_url(settings.redis.url, decode_responses=True)
    streams = {
        settings.streams.events: "0-0",
        settings.streams.notifications: "0-0",
        settings.streams.ai_monitoring: "0-0",
    }
    try:
        while True:
            reply: Any = await client.xread(streams, block=1000, count=100)  # type: ignore[arg-type]
            for stream, entries in reply or []:
                for entry_id, fields in entries:
                    streams[stream] = entry_id
                    printer.entry(stream, fields)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, paper: PaperExchange) -> AsyncIterator[App]:
    app = App(settings, handle_signals=False, router=ExchangeRouter(paper=paper))
    async with app.serving():
        yield app


async def play(settings: Settings, printer: Printer) -> list[dict[str, Any]]:
    feed = SyntheticPrices(seed=settings.paper.seed)  # moved only by the session's script
    pool = make_pool(settings)  # the paper book: in PostgreSQL, as the worker keeps it
    await pool.open()
    try:
        paper = PaperExchange(
            feed, clock=wall_clock_ms, config=PaperConfig(partial_fills=2),
            id_prefix=f"D{wall_clock_ms()}-", store=PgPaperStore(pool, DEMO_BALANCES),
        )  # fmt: skip
        async with running_worker(settings, paper), anyio.create_task_group() as tg:
            tg.start_soon(follow_streams, settings, printer)
            session = DemoSession(settings.database.url, paper, feed, printer.say)
            summary = await session.run()
            await anyio.sleep(0.3)  # let the last stream entries reach the screen
            tg.cancel_scope.cancel()
    finally:
        with anyio.move_on_after(5, shield=True):
            await pool.close()
    printer.line("")
    printer.line(session.render_balances())
    return summary


def run_demo(
    keep: bool,
    out: TextIO = sys.stdout,
    db_url: str | None = None,
    redis_url: str | None = None,
) -> list[dict[str, Any]]:
    """Play the session; returns the final position rows (the summary)."""
    printer = Printer(out)
    db_url = db_url or os.environ.get("DATABASE_URL")
    redis_url = redis_url or os.environ.get("REDIS_URL")
    with demo_servers(keep, printer.line, db_url, redis_url) as (db, rd):
        base = load_settings(environ={"DATABASE_URL": db, "REDIS_URL": rd})
        settings = replace(
            base,
            pipeline=replace(base.pipeline, poll_interval=0.5),
            execution=replace(base.execution, reconcile_interval=0.2),
        )
        configure_logging("error", "console")  # the session narrates; errors still show
        printer.line("migrating ...")
        migrate(db)
        printer.line("worker running on the paper exchange; stream entries as consumers see them:")
        summary = anyio.run(play, settings, printer)
        printer.line("")
        printer.line(DemoSession.render_summary(summary))
        if keep:
            printer.line("\nservers left running (try the SQL functions in psql):")
            printer.line(f"  DATABASE_URL={db}\n  REDIS_URL={rd}\n  psql {db}")
            printer.line("  e.g. SELECT * FROM paper_balances; SELECT * FROM paper_orders;")
            printer.line("  e.g. SELECT * FROM paper_balances; SELECT * FROM paper_orders;")
    return summary
