"""The request-weight budget: which requests may still leave in this minute, by priority.

Binance counts request weight per IP in fixed windows and reports what was used on every
answer (``X-MBX-USED-WEIGHT-1M``, rest-api.md "LIMITS"; the limit is exchangeInfo's
``rateLimits`` REQUEST_WEIGHT, 6,000 per minute in the docs). Passing it answers 429, and
then every request waits, exits too. So the client spends the last part of each window on
what matters most: exits and cancels are always sent (only a 429 stops them); entries stop
at :data:`ENTRY_SHARE` of the limit, lookups at :data:`LOOKUP_SHARE`. A low budget delays
lookups, never exits. The same shares apply to an account's new orders against its ORDERS
limit per 10 seconds (``X-MBX-ORDER-COUNT-10S``): a burst of entries leaves room for the
exits and protective orders that follow them.

The priority of a request is the caller's (:func:`urgent`: an exit, a protective order, a
cancel, the price that decides a worker-side exit), else its method's: DELETE is a cancel,
POST an entry, GET a lookup. Pure but for the context variable that carries the priority
across awaits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from enum import IntEnum
from typing import Final


class Priority(IntEnum):
    EXIT = 0  # exits, protective orders, cancels
    ENTRY = 1
    LOOKUP = 2


ENTRY_SHARE: Final = 0.9
LOOKUP_SHARE: Final = 0.7
ORDERS_ENTRY_SHARE: Final = 0.8  # of an account's ORDERS per 10 s: a fifth left for exits
DEFAULT_WEIGHT_LIMIT: Final = 6_000  # rest-api.md: REQUEST_WEIGHT 6000 per MINUTE
DEFAULT_ORDERS_LIMIT: Final = 50  # rest-api.md: ORDERS 50 per 10 SECOND (per account)
WINDOW_S: Final = 60.0

_priority: ContextVar[Priority | None] = ContextVar("request_priority", default=None)


@contextmanager
def urgent(priority: Priority = Priority.EXIT) -> Iterator[None]:
    """Every request made inside (in this task) has ``priority``."""
    token = _priority.set(priority)
    try:
        yield
    finally:
        _priority.reset(token)


def priority_of(method: str) -> Priority:
    """The priority of a request: the caller's (:func:`urgent`), else its method's."""
    chosen = _priority.get()
    if chosen is not None:
        return chosen
    if method == "DELETE":
        return Priority.EXIT
    return Priority.ENTRY if method == "POST" else Priority.LOOKUP


def used_now(used: int, read_at: float, now: float, window_s: float = WINDOW_S) -> int:
    """The weight used in the current window, from the last counter read: none once the
    window it was read in has ended (fixed windows aligned on the interval)."""
    return used if int(read_at // window_s) == int(now // window_s) else 0


def admits(priority: Priority, used: int, limit: int, entry_share: float = ENTRY_SHARE) -> bool:
    """Whether a request of ``priority`` may leave with ``used`` of ``limit`` spent."""
    if priority == Priority.EXIT or limit <= 0:
        return True
    share = entry_share if priority == Priority.ENTRY else LOOKUP_SHARE
    return used < limit * share


def window_left(now: float, window_s: float = WINDOW_S) -> float:
    """Seconds until the current window ends."""
    return window_s - now % window_s
