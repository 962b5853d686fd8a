"""The errors every exchange adapter raises: its driver's failures translated, so the engine
decides on meaning, not on HTTP codes.

* :class:`OrderRejected` - definitive: the exchange refused, nothing happened. Record the
  order failed with ``code`` and ``msg``. :class:`FilterViolation` is the local pre-check
  flavour (nothing was sent).
* :class:`OutcomeUnknown` - the request may or may not have been applied (timeout, dropped
  connection, 5xx, -1006, -1007, duplicate client id). Reconcile with
  ``Exchange.get_order`` by client order id; never re-send blindly.
* :class:`RateLimited` - nothing was applied; wait ``retry_after_s`` before any request.
* :class:`UnknownOrder` - the exchange has no (open) order with that id.
* :class:`CredentialsRejected` - the account's key was refused (-1022 bad signature, -2014
  bad key format, -2015 invalid key, IP or permissions). Nothing was applied, and it says
  nothing about the order: the *account* is unusable until its key is fixed. Never record
  an order rejection for it.
* :class:`ClockSkew` - timestamp outside recvWindow; adapters resync and retry once, it only
  escapes when the retry failed too (nothing was applied).

The port (:mod:`worker.exchanges.base`) re-exports them.
"""

from __future__ import annotations

from worker.errors import WorkerError


class ExchangeError(WorkerError):
    """Base of every error an exchange adapter raises."""


class OrderRejected(ExchangeError):
    """The exchange (or the local pre-check) refused the request. Nothing was applied."""

    def __init__(self, code: int | None, msg: str) -> None:
        self.code, self.msg = code, msg
        super().__init__(f"rejected ({code}): {msg}" if code is not None else msg)


class FilterViolation(OrderRejected):
    """The order breaks a symbol filter; caught locally, nothing was sent."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(None, f"filter: {reason}")


class OutcomeUnknown(ExchangeError):
    """The request may have been applied. Reconcile by client order id, never re-send blindly."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        self.reason, self.code = reason, code
        super().__init__(f"outcome unknown: {reason}")


class DuplicateOrder(OutcomeUnknown):
    """An open order already has this client id: an earlier send did arrive. Reconcile."""


class RateLimited(ExchangeError):
    """HTTP 429 (or 418: banned). No request may be sent for ``retry_after_s`` seconds."""

    def __init__(self, retry_after_s: float, banned: bool) -> None:
        self.retry_after_s, self.banned = retry_after_s, banned
        what = "IP banned" if banned else "rate limited"
        super().__init__(f"{what}: retry after {retry_after_s:.1f}s")


class UnknownOrder(ExchangeError):
    """The exchange does not know the order (-2013), or it is no longer open (-2011)."""

    def __init__(self, code: int | None, msg: str) -> None:
        self.code, self.msg = code, msg
        super().__init__(f"unknown order ({code}): {msg}")


class CredentialsRejected(ExchangeError):
    """The exchange refused the account's credentials; nothing was applied."""

    def __init__(self, code: int | None, msg: str) -> None:
        self.code, self.msg = code, msg
        super().__init__(f"credentials rejected ({code}): {msg}")


class ClockSkew(ExchangeError):
    """Request timestamp outside recvWindow (-1021). Nothing was applied; resync and retry."""
