"""``position-worker check``: a health probe. Exit 0 only when the database, Redis and a
LISTEN/NOTIFY round trip all work within the timeout.

The database check applies the guard ``run`` starts with: a database whose schema is not the
one this code needs (never migrated, missing a migration, newer than the code) is not a
failed check but a refusal, raised as ``MigrationError`` before the other checks (one line,
exit 2, as ``run``)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from dataclasses import dataclass

import anyio
import psycopg
import redis.asyncio as aioredis
from psycopg import sql

from worker.db.migrate import require_current_schema
from worker.errors import MigrationError
from worker.settings import Settings


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


async def run_checks(settings: Settings, timeout: float = 5.0) -> list[CheckResult]:
    return [
        await _guard("database", _check_database(settings), timeout),
        await _guard("redis", _check_redis(settings), timeout),
        await _guard("listen_notify", _check_round_trip(settings), timeout),
    ]


async def _guard(name: str, probe: Awaitable[str], timeout: float) -> CheckResult:
    try:
        with anyio.fail_after(timeout):
            detail = await probe
        return CheckResult(name, True, str(detail))
    except TimeoutError:
        return CheckResult(name, False, f"no answer within {timeout:g} s")
    except MigrationError:
        raise
    except Exception as exc:
        return CheckResult(
            name, False, str(exc).strip().splitlines()[0] if str(exc) else type(exc).__name__
        )


async def _check_database(settings: Settings) -> str:
    async with await psycopg.AsyncConnection.connect(settings.database.url) as conn:
        newest = await require_current_schema(conn)
    return f"connected, schema at {newest.version:04d}_{newest.name}"


async def _check_redis(settings: Settings) -> str:
    client = aioredis.Redis.from_url(settings.redis.url, socket_timeout=5)
    try:
        await client.ping()
    finally:
        await client.aclose()
    return "PING ok"


async def _check_round_trip(settings: Settings) -> str:
    channel = f"pw_check_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(settings.listen_url, autocommit=True) as lc:
        await lc.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        async with await psycopg.AsyncConnection.connect(
            settings.database.url, autocommit=True
        ) as nc:
            await nc.execute("SELECT pg_notify(%s, 'ping')", (channel,))
        async for _ in lc.notifies(stop_after=1):
            return "notification received"
    raise RuntimeError("no notification received")
