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

from worker.app import App
from worker.db.migrate import migrate
from worker.logs import configure_logging
from worker.ops.demo_script import DemoSession
from worker.settings import Settings, load_settings
from worker.testing.servers import EmbeddedPostgres, EmbeddedRedis

COLOURS = {"info": "32", "warning": "33", "error": "31", "critical": "1;31"}


@contextlib.contextmanager
def demo_servers(keep: bool, say: Callable[[str], None]) -> Iterator[tuple[str, str]]:
    """URLs from the environment, else embedded servers in a temporary directory."""
    pg = None if os.environ.get("DATABASE_URL") else EmbeddedPostgres()
    rd = None if os.environ.get("REDIS_URL") else EmbeddedRedis()
    try:
        if pg:
            say("starting embedded PostgreSQL ...")
            pg.start()
        if rd:
            say("starting embedded Redis-compatible server (Valkey) ...")
            rd.start()
        yield (
            os.environ.get("DATABASE_URL") or (pg.url if pg else ""),
            os.environ.get("REDIS_URL") or (rd.url if rd else ""),
        )
    finally:
        if not keep:
            for server in (pg, rd):
                if server is not None:
                    server.cleanup()


class Printer:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.colour = out.isatty()

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour else text

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

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
async def running_worker(settings: Settings) -> AsyncIterator[App]:
    app = App(settings, handle_signals=False)
    async with anyio.create_task_group() as tg:
        await tg.start(app.run)
        try:
            yield app
        finally:
            app.stop()


async def play(settings: Settings, printer: Printer) -> list[dict[str, Any]]:
    async with running_worker(settings), anyio.create_task_group() as tg:
        tg.start_soon(follow_streams, settings, printer)
        session = DemoSession(settings.database.url, printer.line)
        summary = await session.run()
        tg.cancel_scope.cancel()
    return summary


def run_demo(keep: bool, out: TextIO = sys.stdout) -> int:
    printer = Printer(out)
    with demo_servers(keep, printer.line) as (db_url, redis_url):
        base = load_settings(environ={"DATABASE_URL": db_url, "REDIS_URL": redis_url})
        settings = replace(
            base,
            pipeline=replace(base.pipeline, poll_interval=0.5),
            execution=replace(base.execution, enabled=False),
        )
        configure_logging("warning", "console")
        printer.line("migrating ...")
        migrate(db_url)
        printer.line("worker running; playing the session (stream entries as consumers see them):")
        summary = anyio.run(play, settings, printer)
        printer.line("")
        printer.line(DemoSession.render_summary(summary))
        if keep:
            printer.line(
                f"\nservers left running:\n  DATABASE_URL={db_url}\n  REDIS_URL={redis_url}"
            )
            printer.line(f"  psql {db_url}")
    return 0
