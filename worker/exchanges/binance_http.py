"""Binance REST transport: one request at a time, the rate-limit gate, error classification.

Shared by the signed :class:`~worker.exchanges.binance.BinanceClient` and the public price
feed. Before a request leaves, the gate's weight budget admits it by priority
(:mod:`worker.exchanges.budget`): a request the budget defers raises
:class:`BudgetExhausted` (nothing was sent). Every failure leaves here as an
:class:`~worker.exchanges.base.ExchangeError`
(Binance spot API docs, "Error codes" and "LIMITS"): 429/418 -> RateLimited (and the gate
closes for ``Retry-After``); 5xx, 408, -1006, -1007, timeouts and dropped connections ->
OutcomeUnknown; -1021 -> ClockSkew; -1022/-2014/-2015 -> CredentialsRejected; -2011/-2013 ->
UnknownOrder; "Duplicate order sent." -> DuplicateOrder; any other code -> OrderRejected
with Binance's code and message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlencode

import httpx

from worker.exchanges.budget import (
    DEFAULT_ORDERS_LIMIT,
    DEFAULT_WEIGHT_LIMIT,
    ENTRY_SHARE,
    ORDERS_ENTRY_SHARE,
    WINDOW_S,
    Priority,
    admits,
    priority_of,
    used_now,
    window_left,
)
from worker.exchanges.errors import (
    ClockSkew,
    CredentialsRejected,
    DuplicateOrder,
    ExchangeError,
    OrderRejected,
    OutcomeUnknown,
    RateLimited,
    UnknownOrder,
)
from worker.logs import get_logger

DEFAULT_RETRY_AFTER_S: Final = 60.0
_OUTCOME_UNKNOWN_CODES: Final = frozenset({-1006, -1007})
_UNKNOWN_ORDER_CODES: Final = frozenset({-2011, -2013})
# errors.md: -1022 INVALID_SIGNATURE, -2014 BAD_API_KEY_FMT, -2015 REJECTED_MBX_KEY
_CREDENTIAL_CODES: Final = frozenset({-1022, -2014, -2015})
TOO_MANY_ORDERS: Final = -1015  # an ORDERS limit: per account, not per IP

Clock = Callable[[], float]


WEIGHT_1M: Final = "x-mbx-used-weight-1m"
ORDERS_10S: Final = "x-mbx-order-count-10s"


class BudgetExhausted(RateLimited):
    """The weight budget keeps this request for the next window (a lookup or an entry
    while the minute's weight is mostly spent); nothing was sent."""

    def __init__(self, retry_after_s: float, priority: Priority, used: int, limit: int) -> None:
        super().__init__(retry_after_s, banned=False)
        self.args = (
            f"weight budget: {priority.name.lower()} deferred ({used} of {limit} used this"
            f" minute), retry after {retry_after_s:.1f}s",
        )


class RateLimitGate:
    """The instant before which no request may leave. Share one between clients of one IP
    (request weight is per IP); each account's client has its own for new orders (the
    ORDERS limits are per account). ``used`` keeps the last ``X-MBX-*`` counters read
    (``read_at``: when). The budget (:meth:`admit`) reads the counter ``counter`` against
    ``limit`` per ``window_s``: exchangeInfo's REQUEST_WEIGHT per minute for the IP's gate,
    its ORDERS per 10 seconds for an account's."""

    def __init__(
        self,
        clock: Clock = time.time,
        *,
        counter: str = WEIGHT_1M,
        window_s: float = WINDOW_S,
        limit: int = DEFAULT_WEIGHT_LIMIT,
        entry_share: float = ENTRY_SHARE,
    ) -> None:
        self._clock = clock
        self._until = 0.0
        self._banned = False
        self.used: dict[str, int] = {}
        self.read_at = 0.0
        self.counter, self.window_s, self.limit = counter, window_s, limit
        self.entry_share = entry_share

    def admit(self, priority: Priority) -> None:
        """Raise BudgetExhausted when the budget keeps a request of ``priority`` for the
        next window."""
        now = self._clock()
        used = used_now(self.used.get(self.counter, 0), self.read_at, now, self.window_s)
        if not admits(priority, used, self.limit, self.entry_share):
            left = window_left(now, self.window_s)
            raise BudgetExhausted(left, priority, used, self.limit)

    def clock(self) -> float:
        return self._clock()

    def check(self) -> None:
        """Raise RateLimited, without touching the network, while blocked."""
        remaining = self._until - self._clock()
        if remaining > 0:
            raise RateLimited(remaining, self._banned)

    def block(self, retry_after_s: float, banned: bool) -> None:
        until = self._clock() + retry_after_s
        if until > self._until:
            self._until, self._banned = until, banned


def classify_error(status: int, body: Any, retry_after_s: float) -> ExchangeError:
    """Map a non-2xx Binance answer to the project's exception."""
    code, msg = _code_and_msg(body)
    if status in (418, 429):
        return RateLimited(retry_after_s, banned=status == 418)
    if status >= 500 or status == 408 or code in _OUTCOME_UNKNOWN_CODES:
        return OutcomeUnknown(f"HTTP {status} ({code}): {msg}", code)
    if code == -1021:
        return ClockSkew(msg)
    if code in _CREDENTIAL_CODES:
        return CredentialsRejected(code, msg)
    if code in _UNKNOWN_ORDER_CODES:
        return UnknownOrder(code, msg)
    if code == -2010 and "duplicate" in msg.lower():
        return DuplicateOrder(msg, code)
    return OrderRejected(code, msg or f"HTTP {status}")


def _code_and_msg(body: Any) -> tuple[int | None, str]:
    if isinstance(body, Mapping) and "code" in body:
        return int(body["code"]), str(body.get("msg", ""))
    return None, ""


def _retry_after(headers: httpx.Headers) -> float:
    try:
        return float(headers.get("Retry-After", DEFAULT_RETRY_AFTER_S))
    except ValueError:
        return DEFAULT_RETRY_AFTER_S


class BinanceHttp:
    """Sends one request, honours the gate, and turns every failure into an ExchangeError."""

    def __init__(
        self,
        base_url: str,
        gate: RateLimitGate,
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.gate = gate
        # this account's own ORDERS limits (rest-api.md: 50 per 10 s in exchangeInfo's example)
        self.orders_gate = RateLimitGate(
            gate.clock,
            counter=ORDERS_10S,
            window_s=10.0,
            limit=DEFAULT_ORDERS_LIMIT,
            entry_share=ORDERS_ENTRY_SHARE,
        )
        self.client = httpx.AsyncClient(timeout=timeout_s, transport=transport)
        self.log = get_logger("worker.exchanges.binance")

    async def send(
        self,
        method: str,
        path: str,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        *,
        new_order: bool = False,
    ) -> Any:
        self.gate.check()
        self.gate.admit(priority_of(method))
        if new_order:
            self.orders_gate.check()
            self.orders_gate.admit(priority_of(method))
        url = f"{self.base_url}{path}" + (f"?{query}" if query else "")
        try:
            response = await self.client.request(method, url, headers=headers)
        except httpx.TransportError as exc:  # timeouts, refused and dropped connections
            self.log.warning("exchange_outcome_unknown", method=method, path=path, error=repr(exc))
            raise OutcomeUnknown(f"{method} {path}: {type(exc).__name__}") from exc
        return self._decode(method, path, response)

    def _decode(self, method: str, path: str, response: httpx.Response) -> Any:
        _count(self.gate, response.headers, "x-mbx-used-weight-")
        _count(self.orders_gate, response.headers, "x-mbx-order-count-")
        try:
            body = json.loads(response.content, parse_float=Decimal) if response.content else None
        except ValueError:
            body = None
        if response.is_success:
            if body is None:
                raise OutcomeUnknown(f"{method} {path}: HTTP {response.status_code}, no JSON")
            return body
        error = classify_error(response.status_code, body, _retry_after(response.headers))
        if isinstance(error, RateLimited):
            orders_only = _code_and_msg(body)[0] == TOO_MANY_ORDERS and not error.banned
            (self.orders_gate if orders_only else self.gate).block(
                error.retry_after_s, error.banned
            )
            self.log.warning(
                "exchange_rate_limited",
                path=path,
                retry_after_s=error.retry_after_s,
                banned=error.banned,
            )
        elif isinstance(error, OutcomeUnknown):
            self.log.warning(
                "exchange_outcome_unknown", method=method, path=path, reason=error.reason
            )
        raise error


def _count(gate: RateLimitGate, headers: httpx.Headers, prefix: str) -> None:
    """Keep the ``X-MBX-USED-WEIGHT-(n)(unit)`` / ``X-MBX-ORDER-COUNT-(n)(unit)`` counters
    (rest-api.md, "LIMITS") an answer carries."""
    for name, value in headers.items():
        if name.lower().startswith(prefix) and value.isdigit():
            gate.used[name.lower()] = int(value)
            gate.read_at = gate.clock()


class HttpOwner:
    """``aclose()`` and ``async with`` for an adapter that owns a :class:`BinanceHttp`."""

    _http: BinanceHttp

    async def aclose(self) -> None:
        await self._http.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def ticker_price(http: BinanceHttp, symbol: str) -> Decimal:
    body = await http.send("GET", "/api/v3/ticker/price", urlencode({"symbol": symbol}))
    return Decimal(str(body["price"]))
