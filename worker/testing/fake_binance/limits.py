"""Rate limits as rest-api.md "LIMITS" describes them.

* REQUEST_WEIGHT per IP (the fake has one client IP: loopback), counted with each route's
  documented weight; every answer carries ``X-MBX-USED-WEIGHT-(intervalNum)(intervalLetter)``
  ("IP Limits"). Over the limit: HTTP 429, -1003, ``Retry-After``; a request sent while a
  429 window is open earns a 418 ban ("Repeatedly violating rate limits and/or failing to
  back off after receiving 429s will result in an automated IP ban").
* ORDERS per account ("Unfilled Order Count"): accepted orders carry
  ``X-MBX-ORDER-COUNT-(intervalNum)(intervalLetter)``; over the limit: 429, -1015.
  faqs/order_count_decrement.md (filled orders give their count back) is not modelled.

Windows are fixed, aligned on the interval (a minute window starts at :00); the docs do
not say how they are aligned. The limits are exchangeInfo's ``rateLimits``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from worker.testing.fake_binance.orders import ApiError

_SECONDS = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400}


class RateLimited(ApiError):
    def __init__(self, status: int, code: int, msg: str, retry_after: int) -> None:
        super().__init__(status, code, msg)
        self.retry_after = retry_after


def _seconds(left: float) -> int:
    """``Retry-After`` in whole seconds, rounded up."""
    return max(1, math.ceil(left))


def _suffix(limit: Mapping[str, Any]) -> str:
    return f"{limit['intervalNum']}{limit['interval'][0]}"


def _window(limit: Mapping[str, Any], now: float) -> tuple[int, float]:
    """(window index, seconds until the window ends)."""
    length = _SECONDS[limit["interval"]] * int(limit["intervalNum"])
    index = int(now // length)
    return index, (index + 1) * length - now


class Limits:
    """The counters; ``rate_limits`` is the live exchangeInfo list (changes apply at once)."""

    def __init__(self, rate_limits: list[dict[str, Any]], clock: Callable[[], float]) -> None:
        self.rate_limits = rate_limits
        self.clock = clock
        self.ban_after_limit_s = 120  # a request during a 429 window earns a 418 this long
        self.limited_until = 0.0
        self.banned_until = 0.0
        self._weight: dict[str, tuple[int, int]] = {}  # suffix -> (window, used)

    def _of(self, kind: str) -> Iterable[dict[str, Any]]:
        return [r for r in self.rate_limits if r["rateLimitType"] == kind]

    def gate(self) -> None:
        """Binance's answer to a client that keeps going after a 429: a 418 ban."""
        now = self.clock()
        if now < self.limited_until and now >= self.banned_until:
            self.banned_until = now + self.ban_after_limit_s
        if now < self.banned_until:
            wait = int(self.banned_until - now) + 1
            raise RateLimited(
                418, -1003, "Way too much request weight used; IP banned until "
                f"{int(self.banned_until * 1000)}. Please use WebSocket Streams for live "
                "updates to avoid bans.", wait,
            )  # fmt: skip

    def used_weight(self) -> dict[str, int]:
        now = self.clock()
        used = {}
        for limit in self._of("REQUEST_WEIGHT"):
            window, _ = _window(limit, now)
            held = self._weight.get(_suffix(limit), (window, 0))
            used[_suffix(limit)] = held[1] if held[0] == window else 0
        return used

    def charge(self, weight: int) -> None:
        """Count ``weight``; 429 when a REQUEST_WEIGHT limit is passed."""
        now = self.clock()
        for limit in self._of("REQUEST_WEIGHT"):
            window, left = _window(limit, now)
            held = self._weight.get(_suffix(limit), (window, 0))
            used = (held[1] if held[0] == window else 0) + weight
            self._weight[_suffix(limit)] = (window, used)
            if used > int(limit["limit"]):
                self.limited_until = max(self.limited_until, now + left)
                raise RateLimited(
                    429, -1003, f"Too much request weight used; current limit is "
                    f"{limit['limit']} request weight per {limit['intervalNum']} "
                    f"{limit['interval']}. Please use WebSocket Streams for live updates to "
                    "avoid polling the API.", _seconds(left),
                )  # fmt: skip

    def order_counts(self, times: list[float]) -> dict[str, int]:
        now = self.clock()
        counts = {}
        for limit in self._of("ORDERS"):
            window, _ = _window(limit, now)
            counts[_suffix(limit)] = sum(1 for t in times if _window(limit, t)[0] == window)
        return counts

    def count_orders(self, times: list[float], orders: int) -> None:
        """Count ``orders`` new orders of one account; 429 -1015 over an ORDERS limit."""
        now = self.clock()
        counts = self.order_counts(times)
        for limit in self._of("ORDERS"):
            if counts[_suffix(limit)] + orders > int(limit["limit"]):
                _, left = _window(limit, now)
                raise RateLimited(
                    429, -1015, f"Too many new orders; current limit is {limit['limit']} "
                    f"orders per {limit['intervalNum']} {limit['interval']}.", _seconds(left),
                )  # fmt: skip
        times.extend([now] * orders)

    def weight_headers(self) -> list[tuple[str, str]]:
        return [(f"X-MBX-USED-WEIGHT-{k}", str(v)) for k, v in self.used_weight().items()]

    def order_headers(self, times: list[float]) -> list[tuple[str, str]]:
        return [(f"X-MBX-ORDER-COUNT-{k}", str(v)) for k, v in self.order_counts(times).items()]
