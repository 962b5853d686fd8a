"""Every Binance spot symbol's trading rules, for the paper exchange: one table, from the
freshest source that answers.

1. the on-disk cache, while younger than its TTL;
2. Binance's public ``GET /api/v3/exchangeInfo`` (no key; short timeout), which refreshes
   the cache;
3. the cache even when older than its TTL (a list Binance gave is better than an older one);
4. the snapshot shipped in the package (``data/exchange_info.json.gz``, see its README).

The table serves until its data is older than the TTL; after a failed fetch, the table in
hand (cache or snapshot) serves for ``retry_s`` before the next try, so no order waits on a
timeout twice. Without a URL the snapshot (or cache) is read again every ``retry_s``.
Nothing is read or fetched before the first lookup, unless :meth:`SymbolSource.keep` runs
(the worker runs it): it loads the table at once and reloads it as it expires, and while
it runs a lookup never waits for a reload (the table in hand serves until the new one is
there).

Rules are read by :func:`~worker.exchanges.filters.rules_from_symbol_info`, the parser the live
client uses, so a paper order is checked as a live one is. Only symbols whose status is
``TRADING`` are listed; any other is refused as Binance refuses it: ``OrderRejected(-1121)``.

:func:`reference_price` gives the synthetic feed a starting price for any symbol: Binance's
exchangeInfo has no prices, so it is derived from the filters (see there) and is synthetic.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import anyio
import httpx

from worker.errors import WorkerError
from worker.exchanges.filters import (
    SymbolRules,
    round_price,
    rules_from_symbol_info,
    unknown_symbol,
)

__all__ = [
    "EXCHANGE_INFO_PATH",
    "RulesSource",
    "StaticSymbols",
    "SymbolSource",
    "SymbolTable",
    "SymbolsUnavailable",
    "default_cache_dir",
    "fetch_exchange_info",
    "reference_price",
    "reference_prices",
    "snapshot",
    "trimmed",
]

EXCHANGE_INFO_PATH: Final = "/api/v3/exchangeInfo"
CACHE_FILE: Final = "exchange_info.json.gz"
SNAPSHOT: Final = "exchange_info.json.gz"  # in worker/exchanges/data/, with its README
# What the snapshot (and the cache) keep of each symbol: what a client reads, nothing more.
KEPT_FIELDS: Final = (
    "symbol",
    "status",
    "baseAsset",
    "baseAssetPrecision",
    "quoteAsset",
    "quotePrecision",
    "quoteAssetPrecision",
    "baseCommissionPrecision",
    "quoteCommissionPrecision",
    "orderTypes",
    "ocoAllowed",
    "quoteOrderQtyMarketAllowed",
    "isSpotTradingAllowed",
    "permissions",
    "permissionSets",
    "filters",
)
REFERENCE_STEPS: Final = 10  # a synthetic price makes minNotional this many LOT_SIZE steps
MIN_REFERENCE_TICKS: Final = 1_000  # and is at least this many ticks (the walk needs room)

Clock = Callable[[], float]


@runtime_checkable
class RulesSource(Protocol):
    """Where a symbol's rules come from: :class:`SymbolSource`, :class:`StaticSymbols`."""

    async def rules(self, symbol: str) -> SymbolRules:
        """``symbol``'s rules; ``OrderRejected(-1121)`` when it is not listed."""
        ...

    async def table(self) -> SymbolTable:
        """Every listed symbol."""
        ...


class SymbolsUnavailable(WorkerError):
    """Binance's exchangeInfo could not be fetched or read (offline, refused, unreadable)."""


@dataclass(frozen=True)
class SymbolTable:
    """The TRADING symbols of one exchangeInfo answer, and where that answer came from."""

    rules: Mapping[str, SymbolRules]
    source: str  # "binance", "cache" or "snapshot"
    origin: Mapping[str, Any] = field(default_factory=dict)  # the file's "source" metadata

    def __contains__(self, symbol: object) -> bool:
        return symbol in self.rules

    def __iter__(self) -> Iterator[str]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def get(self, symbol: str) -> SymbolRules:
        """``symbol``'s rules; ``OrderRejected(-1121)`` for one not listed (or not TRADING)."""
        try:
            return self.rules[symbol]
        except KeyError:
            raise unknown_symbol(symbol) from None

    @classmethod
    def of(cls, payload: Mapping[str, Any], source: str) -> SymbolTable:
        """The table of an exchangeInfo answer (whole, or as :func:`trimmed` keeps it)."""
        listed = (s for s in payload["symbols"] if s.get("status") == "TRADING")
        rules = {str(s["symbol"]): rules_from_symbol_info(s) for s in listed}
        return cls(rules, source, dict(payload.get("source") or {}))


def trimmed(payload: Mapping[str, Any], origin: Mapping[str, Any]) -> dict[str, Any]:
    """An exchangeInfo answer cut to what a client needs (TRADING symbols, :data:`KEPT_FIELDS`),
    with ``origin`` (where and when it was taken) under ``"source"``."""
    symbols = [
        {k: s[k] for k in KEPT_FIELDS if k in s}
        for s in payload["symbols"]
        if s.get("status") == "TRADING"
    ]
    return {"source": dict(origin), "serverTime": payload.get("serverTime"), "symbols": symbols}


def reference_price(rules: SymbolRules) -> Decimal:
    """A plausible, synthetic starting price for ``rules.symbol``: the price at which an order
    of minNotional is :data:`REFERENCE_STEPS` LOT_SIZE steps (Binance sizes a symbol's steps to
    its price), at least :data:`MIN_REFERENCE_TICKS` ticks, on the tick grid. Not a market
    price: the synthetic feed starts there and walks."""
    price = Decimal(1)
    if rules.min_notional > 0 and rules.step_size > 0:
        price = rules.min_notional / (REFERENCE_STEPS * rules.step_size)
    if rules.tick_size > 0:
        price = max(price, rules.tick_size * MIN_REFERENCE_TICKS)
    return round_price(rules, price, ROUND_HALF_UP)


# -- files -------------------------------------------------------------------------------------


def read_payload(path: Path) -> dict[str, Any]:
    """An exchangeInfo file: gzip-compressed when its name ends in ``.gz``."""
    data = path.read_bytes()
    loaded = json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)
    if not isinstance(loaded, dict) or not isinstance(loaded.get("symbols"), list):
        raise ValueError(f"{path}: not an exchangeInfo answer (no symbols list)")
    return loaded


def write_payload(path: Path, payload: Mapping[str, Any]) -> None:
    """Write atomically (a temporary file renamed over ``path``); gzip for ``.gz``."""
    text = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    data = gzip.compress(text, mtime=0) if path.suffix == ".gz" else text
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_bytes(data)
    partial.replace(path)


@cache
def snapshot() -> SymbolTable:
    """The shipped snapshot's table (read once, on first use)."""
    data = resources.files("worker.exchanges").joinpath("data", SNAPSHOT).read_bytes()
    return SymbolTable.of(json.loads(gzip.decompress(data)), "snapshot")


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/position-worker``, else ``~/.cache/position-worker``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "position-worker"


async def fetch_exchange_info(
    base_url: str, *, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None
) -> dict[str, Any]:
    """``GET {base_url}/api/v3/exchangeInfo`` (public, weight 20), as JSON; SymbolsUnavailable
    with one line when it cannot be had."""
    url = base_url.rstrip("/") + EXCHANGE_INFO_PATH
    try:
        async with httpx.AsyncClient(timeout=timeout_s, transport=transport) as client:
            # permissions=SPOT: spot symbols only (rest-api.md, "Exchange information")
            response = await client.get(url, params={"permissions": "SPOT"})
            response.raise_for_status()
            payload = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
        raise SymbolsUnavailable(f"cannot fetch {url} ({reason})") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("symbols"), list):
        raise SymbolsUnavailable(f"{url}: not an exchangeInfo answer")
    return payload


# -- the source ----------------------------------------------------------------------------------


class SymbolSource:
    """The rules of every listed symbol, from cache, Binance, or the snapshot (module notes).

    ``base_url`` None never fetches (cache, else snapshot); ``cache_dir`` None keeps no cache.
    ``listing_url``: whose listing the cache must hold (default ``base_url``): a cache written
    from another server (testnet, a test's fake) is ignored, never taken for this one's.
    ``clock`` is epoch seconds (cache ages, the retry pause)."""

    def __init__(
        self,
        *,
        base_url: str | None,
        cache_dir: Path | None,
        ttl_s: float = 86_400.0,
        timeout_s: float = 5.0,
        retry_s: float = 300.0,
        clock: Clock = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
        listing_url: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self._base_url, self._cache_dir = base_url, cache_dir
        listing = listing_url or base_url
        self._cache_origin = None if listing is None else listing.rstrip("/") + EXCHANGE_INFO_PATH
        self._ttl_s, self._timeout_s, self._retry_s = ttl_s, timeout_s, retry_s
        self._clock, self._transport, self._sleep = clock, transport, sleep
        self._table: SymbolTable | None = None
        self._expires_at = 0.0
        self._lock = anyio.Lock()
        self._kept = False  # keep() runs: it reloads the table, lookups never do
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"SymbolSource(base_url={self._base_url!r}, cache_dir={self._cache_dir!r})"

    @property
    def cache_file(self) -> Path | None:
        return None if self._cache_dir is None else self._cache_dir / CACHE_FILE

    async def rules(self, symbol: str) -> SymbolRules:
        return (await self.table()).get(symbol)

    async def table(self) -> SymbolTable:
        """The table in hand, reloaded once its data is older than the TTL (or, after a
        failed fetch, once ``retry_s`` passed)."""
        if self._table is not None and (self._kept or self._clock() < self._expires_at):
            return self._table
        async with self._lock:
            if self._table is None or self._clock() >= self._expires_at:
                self._table, self._expires_at = await self._load()
        return self._table

    async def keep(self) -> None:
        """Load the table now, then reload it each time it expires, for as long as this
        runs; meanwhile lookups take the table in hand and never wait for a fetch."""
        load: Callable[[], Awaitable[SymbolTable]] = self.table  # first: unless one is fresh
        try:
            while True:
                try:
                    await load()
                except Exception as exc:  # e.g. an unreadable snapshot: lookups load alone
                    self._kept = False
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    await self._sleep(self._retry_s)
                    continue
                self._kept, load = True, self._reload
                await self._sleep(max(self._expires_at - self._clock(), 1.0))
        finally:
            self._kept = False

    async def _reload(self) -> SymbolTable:
        async with self._lock:
            self._table, self._expires_at = await self._load()
        return self._table

    async def refresh(self, out: Path | None = None) -> SymbolTable:
        """Fetch from Binance now and write the cache (or ``out``: a new snapshot file);
        SymbolsUnavailable when Binance cannot be reached."""
        if self._base_url is None:
            raise SymbolsUnavailable("no exchangeInfo URL configured")
        payload = await fetch_exchange_info(
            self._base_url, timeout_s=self._timeout_s, transport=self._transport
        )
        origin = {"url": self._base_url.rstrip("/") + EXCHANGE_INFO_PATH}
        kept = trimmed(payload, {**origin, "fetched_at": round(self._clock())})
        path = out or self.cache_file
        if path is not None:
            await anyio.to_thread.run_sync(write_payload, path, kept)
        return SymbolTable.of(kept, "binance")

    async def _load(self) -> tuple[SymbolTable, float]:
        """The freshest table, and until when it serves."""
        cached, age = await anyio.to_thread.run_sync(self._read_cache)  # files off the loop
        now = self._clock()
        if cached is not None and age < self._ttl_s:
            return cached, now - age + self._ttl_s
        if self._base_url is not None:
            try:
                table = await self.refresh()
            except (SymbolsUnavailable, OSError) as exc:
                self.last_error = str(exc)
            else:
                self.last_error = None
                return table, now + self._ttl_s
        table = cached if cached is not None else await anyio.to_thread.run_sync(snapshot)
        return table, now + self._retry_s

    def _read_cache(self) -> tuple[SymbolTable | None, float]:
        """The cached table and its age in seconds (None when absent or unreadable)."""
        path = self.cache_file
        if path is None:
            return None, 0.0
        try:
            payload = read_payload(path)
            source = payload.get("source") or {}
            fetched = float(source.get("fetched_at") or 0)
            table = SymbolTable.of(payload, "cache")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None, 0.0
        if self._cache_origin is not None and source.get("url") != self._cache_origin:
            return None, 0.0  # another server's listing
        return table, max(self._clock() - fetched, 0.0)


class StaticSymbols:
    """A fixed list of rules (tests, the demo): the same interface as :class:`SymbolSource`."""

    def __init__(self, rules: Iterable[SymbolRules]) -> None:
        self._table = SymbolTable({r.symbol: r for r in rules}, "static")

    async def rules(self, symbol: str) -> SymbolRules:
        return self._table.get(symbol)

    async def table(self) -> SymbolTable:
        return self._table


def reference_prices(table: SymbolTable) -> dict[str, Decimal]:
    """:func:`reference_price` of every symbol in ``table``."""
    return {symbol: reference_price(rules) for symbol, rules in table.rules.items()}
