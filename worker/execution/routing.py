"""Which exchange a position trades on: the paper exchange or Binance spot."""

from __future__ import annotations

from worker.errors import WorkerError
from worker.exchanges.base import Exchange
from worker.execution.rows import Position


class NotConfigured(WorkerError):
    """The position needs an exchange this worker has not been given."""


class ExchangeRouter:
    def __init__(self, paper: Exchange | None, live: Exchange | None) -> None:
        self.paper, self.live = paper, live

    def for_position(self, position: Position) -> Exchange:
        if position.is_paper_trade:
            if self.paper is None:
                raise NotConfigured("paper trading is not configured in this worker")
            return self.paper
        if self.live is None:
            raise NotConfigured(
                "live trading is not configured: set BINANCE_API_KEY and BINANCE_API_SECRET"
            )
        return self.live
