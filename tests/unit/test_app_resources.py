"""What the composition root (worker/app.py) builds it also closes: the exchanges' HTTP
clients, and the metrics server with its thread. No database or Redis needed."""

from __future__ import annotations

import contextlib
import urllib.request
from functools import partial
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
import structlog
from psycopg_pool import AsyncConnectionPool

from worker.app import build_router, serve_metrics
from worker.errors import SettingsError
from worker.exchanges.binance import BinanceClient
from worker.exchanges.market_stream import BinanceMarketStream
from worker.exchanges.paper import PaperExchange
from worker.metrics import Metrics
from worker.settings import AccountSettings, PaperSettings, Settings
from worker.testing.servers import free_port

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("keys", "opt_in"), [(True, True), (True, False), (False, False)])
async def test_the_exchanges_http_clients_close_with_their_owner(
    monkeypatch: pytest.MonkeyPatch, keys: bool, opt_in: bool
) -> None:
    for name in ("BINANCE_API_KEY", "BINANCE_API_SECRET"):
        if keys:
            monkeypatch.setenv(name, "not-a-real-key")
        else:
            monkeypatch.delenv(name, raising=False)
    settings = Settings(
        paper=PaperSettings(feed="binance"),  # the paper exchange's feed is HTTP
        accounts=AccountSettings(operator_account=opt_in),
    )
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool("postgresql://unused", open=False)
    redis = aioredis.Redis()  # never connected: nothing here sends a command
    async with contextlib.AsyncExitStack() as owned:
        router = build_router(settings, owned, pool, redis, structlog.get_logger())
        assert isinstance(router.paper, PaperExchange)
        feed = router.paper.feed
        assert isinstance(feed, BinanceMarketStream)  # public streams, REST over httpx
        clients = [feed._http.client]
        if opt_in:
            assert isinstance(router.operator, BinanceClient)
            clients.append(router.operator._http.client)
        else:
            assert router.operator is None  # the environment's keys trade nothing unless opted in
        assert router.accounts is not None
        assert not any(client.is_closed for client in clients)
    assert all(client.is_closed for client in clients)
    await redis.aclose()


async def test_the_operator_account_needs_keys_when_opted_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("BINANCE_API_KEY", "BINANCE_API_SECRET", "BINANCE_PRIVATE_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(accounts=AccountSettings(operator_account=True))
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool("postgresql://unused", open=False)
    redis = aioredis.Redis()
    async with contextlib.AsyncExitStack() as owned:
        with pytest.raises(SettingsError, match="operator_account is true, but BINANCE_API_KEY"):
            build_router(settings, owned, pool, redis, None)
    await redis.aclose()


async def test_the_metrics_server_stops_with_its_task() -> None:
    port = free_port()
    metrics = Metrics()
    metrics.events_dead.inc()

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())

    async with anyio.create_task_group() as tg:
        await tg.start(partial(serve_metrics, metrics, "127.0.0.1", port))
        text = await anyio.to_thread.run_sync(scrape)
        tg.cancel_scope.cancel()
    assert "position_worker_events_dead_total 1.0" in text
    with pytest.raises(OSError):  # nobody listens any more
        await anyio.to_thread.run_sync(scrape)
