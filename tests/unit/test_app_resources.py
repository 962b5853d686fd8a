"""What the composition root (worker/app.py) builds it also closes: the exchanges' HTTP
clients, and the metrics server with its thread. No database or Redis needed."""

from __future__ import annotations

import contextlib
import urllib.request
from functools import partial

import anyio
import pytest

from worker.app import build_router, serve_metrics
from worker.exchanges.binance import BinanceClient, BinancePublicPrices
from worker.exchanges.paper import PaperExchange
from worker.metrics import Metrics
from worker.settings import PaperSettings, Settings
from worker.testing.servers import free_port

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("keys", [True, False])
async def test_the_exchanges_http_clients_close_with_their_owner(
    monkeypatch: pytest.MonkeyPatch, keys: bool
) -> None:
    for name in ("BINANCE_API_KEY", "BINANCE_API_SECRET"):
        if keys:
            monkeypatch.setenv(name, "not-a-real-key")
        else:
            monkeypatch.delenv(name, raising=False)
    settings = Settings(paper=PaperSettings(feed="binance"))  # the paper exchange's feed is HTTP
    async with contextlib.AsyncExitStack() as owned:
        router = build_router(settings, owned)
        assert isinstance(router.paper, PaperExchange)
        feed = router.paper.feed
        assert isinstance(feed, BinancePublicPrices)
        clients = [feed._http.client]
        if keys:
            assert isinstance(router.live, BinanceClient)
            clients.append(router.live._http.client)
        else:
            assert router.live is None
        assert not any(client.is_closed for client in clients)
    assert all(client.is_closed for client in clients)


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
