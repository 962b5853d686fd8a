"""Scripted faults for :class:`~worker.testing.fake_binance.FakeBinance`.

``fake.faults.push(Fault.drop_after_apply())`` arms one fault for the next request that
matches its method and path (``None`` matches any) and, when it names one, its client order
id (``origClientOrderId`` or ``newClientOrderId``); faults fire once each, in push order.
Kinds that *apply* the request first (the order exists on the exchange) and then misbehave
are the dangerous ones: the client must reconcile by client order id, never re-send blindly.

========================  ==========================================  =========
kind                      what the client sees                        applied?
========================  ==========================================  =========
DROP_AFTER_APPLY          connection closed, no answer                yes
DROP_BEFORE_APPLY         connection closed, no answer                no
TIMEOUT_AFTER_APPLY       -1007 "Timeout waiting for response ..."    yes
HANG                      no answer until released: client timeout    yes
SERVER_ERROR              HTTP 503 (``status``), not JSON             no
SERVER_ERROR_AFTER_APPLY  the same, after carrying the request out    yes
RATE_LIMIT                HTTP 429 + Retry-After (a request inside    no
                          the window then earns a 418 ban)
BAN                       HTTP 418 + Retry-After                      no
CLOCK_SKEW                -1021 timestamp outside recvWindow          no
INSUFFICIENT_BALANCE      -2010 insufficient balance                  no
FILTER_FAILURE            -1013 Filter failure (``msg``)              no
CANCEL_RACE               the order fills, then the cancel gets       fill: yes
                          -2011 "Unknown order sent."
HIDDEN                    normal answer; ``GET /api/v3/order`` says   yes
                          -2013 for the next ``lookups`` lookups
TESTNET_RESET             the spot testnet's periodic wipe, just      yes
                          before the request: every account's
                          orders, trades and balances are gone
                          (keys stay); old orders answer -2013
========================  ==========================================  =========

``lookups`` works with every applying kind: ``Fault.drop_after_apply(lookups=2)`` is an
order that was filled, whose answer was lost, and that the exchange only shows on the third
lookup.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

_ORDER = "/api/v3/order"
_CLIENT_ID_NAMES = ("orig", "new", "above", "below")  # <name>ClientOrderId: which order


class FaultKind(StrEnum):
    DROP_AFTER_APPLY = "drop_after_apply"
    DROP_BEFORE_APPLY = "drop_before_apply"
    TIMEOUT_AFTER_APPLY = "timeout_after_apply"
    HANG = "hang"
    SERVER_ERROR = "server_error"
    SERVER_ERROR_AFTER_APPLY = "server_error_after_apply"
    RATE_LIMIT = "rate_limit"
    BAN = "ban"
    CLOCK_SKEW = "clock_skew"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    FILTER_FAILURE = "filter_failure"
    CANCEL_RACE = "cancel_race"
    HIDDEN = "hidden"
    TESTNET_RESET = "testnet_reset"


_APPLYING = frozenset(
    {
        FaultKind.DROP_AFTER_APPLY,
        FaultKind.SERVER_ERROR_AFTER_APPLY,
        FaultKind.TIMEOUT_AFTER_APPLY,
        FaultKind.HANG,
        FaultKind.CANCEL_RACE,
        FaultKind.HIDDEN,
        FaultKind.TESTNET_RESET,
    }
)
_ERRORS: dict[FaultKind, tuple[int, int, str]] = {
    FaultKind.TIMEOUT_AFTER_APPLY: (
        400,
        -1007,
        "Timeout waiting for response from backend "
        "server. Send status unknown; execution status unknown.",
    ),
    FaultKind.RATE_LIMIT: (
        429,
        -1003,
        "Too many requests; current limit of IP is 6000 request weight per 1 MINUTE.",
    ),
    FaultKind.BAN: (418, -1003, "Way too many requests; IP banned."),
    FaultKind.CLOCK_SKEW: (400, -1021, "Timestamp for this request is outside of the recvWindow."),
    FaultKind.INSUFFICIENT_BALANCE: (
        400,
        -2010,
        "Account has insufficient balance for requested action.",
    ),
    FaultKind.FILTER_FAILURE: (400, -1013, "Filter failure: NOTIONAL"),
}


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour. Prefer the constructors below, which set the usual target."""

    kind: FaultKind
    method: str | None = "POST"
    path: str | None = _ORDER
    retry_after: int = 2  # RATE_LIMIT / BAN: seconds in the Retry-After header
    lookups: int = 0  # applying kinds: GET order answers -2013 this many times first
    status: int = 503  # SERVER_ERROR
    msg: str | None = None  # overrides the Binance message of error kinds
    client_order_id: str | None = None  # only a request about this order (None: any)
    fills: str | None = None  # CANCEL_RACE: the order that fills (None: the one cancelled)

    @property
    def applies(self) -> bool:
        """Whether the request is carried out before the fault shows."""
        return self.kind in _APPLYING

    def matches(self, method: str, path: str, params: Mapping[str, str] | None = None) -> bool:
        if self.method not in (None, method) or self.path not in (None, path):
            return False
        if self.client_order_id is None:
            return True
        p = params or {}
        return self.client_order_id in {p.get(f"{n}ClientOrderId") for n in _CLIENT_ID_NAMES}

    def error_reply(self) -> tuple[int | None, Any]:
        """(HTTP status or None to drop the connection, body) of an error kind."""
        if self.kind in (FaultKind.DROP_BEFORE_APPLY, FaultKind.DROP_AFTER_APPLY):
            return None, None
        if self.kind in (FaultKind.SERVER_ERROR, FaultKind.SERVER_ERROR_AFTER_APPLY):
            return self.status, b"<html><body><h1>503 Service Unavailable</h1></body></html>"
        status, code, msg = _ERRORS[self.kind]
        return status, {"code": code, "msg": self.msg or msg}

    # -- constructors --------------------------------------------------------------------------

    @classmethod
    def drop_after_apply(
        cls, *, method: str = "POST", path: str = _ORDER, lookups: int = 0
    ) -> Fault:
        return cls(FaultKind.DROP_AFTER_APPLY, method, path, lookups=lookups)

    @classmethod
    def drop_before_apply(cls, *, method: str = "POST", path: str = _ORDER) -> Fault:
        return cls(FaultKind.DROP_BEFORE_APPLY, method, path)

    @classmethod
    def timeout_after_apply(cls, *, lookups: int = 0) -> Fault:
        return cls(FaultKind.TIMEOUT_AFTER_APPLY, lookups=lookups)

    @classmethod
    def hang(cls, *, lookups: int = 0) -> Fault:
        return cls(FaultKind.HANG, lookups=lookups)

    @classmethod
    def server_error(
        cls,
        *,
        status: int = 503,
        after_apply: bool = False,
        method: str | None = "POST",
        path: str | None = _ORDER,
    ) -> Fault:
        kind = FaultKind.SERVER_ERROR_AFTER_APPLY if after_apply else FaultKind.SERVER_ERROR
        return cls(kind, method, path, status=status)

    @classmethod
    def rate_limited(
        cls, retry_after: int = 2, *, method: str | None = None, path: str | None = None
    ) -> Fault:
        return cls(FaultKind.RATE_LIMIT, method, path, retry_after=retry_after)

    @classmethod
    def banned(
        cls, retry_after: int = 60, *, method: str | None = None, path: str | None = None
    ) -> Fault:
        return cls(FaultKind.BAN, method, path, retry_after=retry_after)

    @classmethod
    def clock_skew(cls, *, method: str | None = "POST", path: str | None = _ORDER) -> Fault:
        return cls(FaultKind.CLOCK_SKEW, method, path)

    @classmethod
    def insufficient_balance(cls) -> Fault:
        return cls(FaultKind.INSUFFICIENT_BALANCE)

    @classmethod
    def filter_failure(cls, msg: str = "Filter failure: NOTIONAL") -> Fault:
        return cls(FaultKind.FILTER_FAILURE, msg=msg)

    @classmethod
    def cancel_race(cls, client_order_id: str | None = None, *, fills: str | None = None) -> Fault:
        """The next cancel (of ``client_order_id``, or any) finds the order filling; with
        ``fills``, that order fills instead (another leg of the same OCO list: the cancel of
        one leg meets the list done because the other leg filled)."""
        return cls(
            FaultKind.CANCEL_RACE, "DELETE", _ORDER, client_order_id=client_order_id, fills=fills
        )

    @classmethod
    def hidden(cls, lookups: int) -> Fault:
        return cls(FaultKind.HIDDEN, lookups=lookups)

    @classmethod
    def testnet_reset(cls, *, method: str | None = None, path: str | None = None) -> Fault:
        """The testnet wipes itself just before the next matching request (any, by
        default), which is then served on the empty exchange (REFERENCE: the spot testnet
        "is wiped from time to time"; testnet/README of binance-spot-api-docs)."""
        return cls(FaultKind.TESTNET_RESET, method, path)


class FaultQueue:
    """Armed faults, oldest first; each fires once on the first request it matches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Fault] = []

    def push(self, *faults: Fault) -> None:
        with self._lock:
            self._items.extend(faults)

    def take(self, method: str, path: str, params: Mapping[str, str] | None = None) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self._items):
                if fault.matches(method, path, params):
                    return self._items.pop(i)
        return None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
