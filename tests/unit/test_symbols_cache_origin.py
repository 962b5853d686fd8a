"""A cached listing serves only the server it was fetched from."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.exchanges.symbols import SymbolSource, read_payload, write_payload

pytestmark = pytest.mark.anyio

MAINNET = "https://api.binance.com"


def cached_from(tmp_path: Path, url: str, now: float) -> None:
    snapshot_file = Path(__file__).parents[2] / "worker/exchanges/data/exchange_info.json.gz"
    payload = read_payload(snapshot_file)
    payload["symbols"] = [s for s in payload["symbols"] if s["symbol"] == "BTCUSDT"]
    payload["source"] = {"url": url + "/api/v3/exchangeInfo", "fetched_at": now}
    write_payload(tmp_path / "exchange_info.json.gz", payload)


async def test_a_cache_of_another_server_is_not_read(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    cached_from(tmp_path, "http://127.0.0.1:9999", now)  # a test's fake, or the testnet
    source = SymbolSource(base_url=None, listing_url=MAINNET, cache_dir=tmp_path, clock=lambda: now)
    table = await source.table()
    assert "DOGEUSDT" in table  # the shipped snapshot, not the one-symbol cache


async def test_a_cache_of_the_same_server_is_read(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    cached_from(tmp_path, MAINNET, now)
    source = SymbolSource(base_url=None, listing_url=MAINNET, cache_dir=tmp_path, clock=lambda: now)
    table = await source.table()
    assert "BTCUSDT" in table and "DOGEUSDT" not in table
