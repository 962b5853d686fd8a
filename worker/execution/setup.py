"""Build the exchanges a worker trades on, from the settings and the environment."""

from __future__ import annotations

import importlib
import os

from worker.exchanges.base import Exchange
from worker.execution.exchanges import ExchangeRouter
from worker.settings import Settings


def build_router(settings: Settings) -> ExchangeRouter:
    """Paper always; Binance spot when BINANCE_API_KEY and BINANCE_API_SECRET are set."""
    return ExchangeRouter(paper=build_paper(settings), live=build_binance(settings))


def build_binance(settings: Settings) -> Exchange | None:
    key, secret = os.environ.get("BINANCE_API_KEY"), os.environ.get("BINANCE_API_SECRET")
    if not key or not secret:
        return None
    from worker.exchanges.binance import BinanceClient

    return BinanceClient(
        key,
        secret,
        base_url=settings.binance.base_url,
        recv_window_ms=settings.binance.recv_window_ms,
        timeout_s=settings.binance.timeout_seconds,
    )


def build_paper(settings: Settings) -> Exchange | None:
    try:
        paper = importlib.import_module("worker.exchanges.paper")
    except ImportError:  # pragma: no cover - the paper exchange ships with the package
        return None
    builder = getattr(paper, "from_settings", None)
    return builder(settings) if builder is not None else None
