"""Events: outbox rows <-> typed events <-> stream entries. Pure: no I/O, no clock.

An event is one row of ``position_events`` (the audit trail that doubles as the outbox),
written by a trigger in the same transaction as the change it records. Its ``event_id`` is
the row's bigint id: unique, and for one position increasing in commit order (every trigger
that writes an event holds the position's row lock; see schema/0003_lifecycle.sql).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal

import orjson

KINDS: Final = frozenset({"position", "order", "trade", "request", "protection"})
NOTIFY_KEYS: Final = frozenset({"position_id", "old_status", "new_status", "user_id", "symbol"})
Severity = Literal["info", "warning", "error", "critical"]


class MalformedEvent(ValueError):
    """A payload or row that cannot be understood. The message says what is wrong."""


@dataclass(slots=True)
class Event:
    """One position event. Treat it as read-only: handlers share it. (Not ``frozen``: a
    frozen dataclass's ``__init__`` costs ~3 us more per event on the dispatcher's hot path,
    a sixth of what the whole drain may spend.)"""

    event_id: int
    kind: str
    position_id: str
    user_id: str
    symbol: str
    occurred_at: datetime
    old_status: str | None = None
    new_status: str | None = None
    order_id: str | None = None
    actor_role: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    attempts: int = 0
    occurred_iso: str = field(default="", repr=False, compare=False)  # rendered once

    def __post_init__(self) -> None:
        if not self.occurred_iso:
            self.occurred_iso = self.occurred_at.isoformat()

    @property
    def type(self) -> str:
        """``position.created``, ``position.open``, ``order.filled``, ``trade.recorded``..."""
        if self.kind == "trade":
            return "trade.recorded"
        if self.kind == "request":
            return f"request.{self.new_status}"  # request.exit, request.scale_in
        if self.kind == "protection":
            return f"protection.{self.new_status}"  # protection.exchange, protection.worker
        if self.old_status is None:
            return f"{self.kind}.created"
        return f"{self.kind}.{self.new_status}"

    def amount(self, key: str) -> Decimal | None:
        """A decimal amount from the event's data (stored as decimal strings), or None."""
        raw = self.data.get(key)
        if raw is None:
            return None
        try:
            return Decimal(str(raw))
        except InvalidOperation:
            raise MalformedEvent(
                f"event {self.event_id}: {key} is not a decimal: {raw!r}"
            ) from None


def event_from_row(row: Mapping[str, Any]) -> Event:
    """Build an :class:`Event` from a ``position_events`` row (dict row).

    ``occurred_at`` may be a datetime or the text of the UTC time, as the claim reads it
    (``2026-12-01 11:14:09.632581``): parsing that is several times cheaper than printing
    a datetime in ISO form.
    """
    kind = row["kind"]
    if kind not in KINDS:
        raise MalformedEvent(f"event {row.get('id')}: unknown event kind {kind!r}")
    data = row["data"] or {}
    if isinstance(data, str):  # the claim reads it as text
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise MalformedEvent(f"event {row.get('id')}: data is not JSON: {exc}") from None
    if data.__class__ is not dict and not isinstance(data, Mapping):  # the ABC check is slow
        raise MalformedEvent(f"event {row.get('id')}: data is not an object")
    occurred, iso = row["occurred_at"], ""
    if isinstance(occurred, str):
        iso = occurred_iso_from_text(occurred)
        occurred = datetime.fromisoformat(iso)
    order_id = row.get("order_id")
    return Event(
        int(row["id"]),
        kind,
        str(row["position_id"]),
        str(row["user_id"]),
        str(row["symbol"]),
        occurred,
        row.get("old_status"),
        row.get("new_status"),
        str(order_id) if order_id else None,
        str(row.get("actor_role") or ""),
        data,
        int(row.get("attempts") or 0),
        iso,
    )


def occurred_iso_from_text(text: str) -> str:
    """``2026-12-01 11:14:09.63258`` (``occurred_at AT TIME ZONE 'UTC'`` as text, ISO
    DateStyle) in the form ``datetime.isoformat()`` gives for a UTC time:
    ``2026-12-01T11:14:09.632580+00:00``. PostgreSQL drops the fraction's trailing zeros
    (and the fraction itself when it is zero); isoformat writes six digits or none."""
    if len(text) < 19 or text[10] != " ":
        raise MalformedEvent(f"occurred_at is not an ISO timestamp: {text!r}")
    if len(text) == 19 or len(text) == 26:  # no fraction, or all six digits
        return f"{text[:10]}T{text[11:]}+00:00"
    return f"{text[:10]}T{text[11:20]}{text[20:]:0<6}+00:00"


def parse_notification(payload: str) -> dict[str, str | None]:
    """Validate a ``position_state_change`` payload (the spec's five keys).

    Notifications are only wake-ups (the outbox is the truth), so a malformed one is
    reported and otherwise ignored by the listener.
    """
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"notification is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedEvent("notification is not a JSON object")
    missing = NOTIFY_KEYS - doc.keys()
    if missing:
        raise MalformedEvent(f"notification lacks {', '.join(sorted(missing))}")
    return {key: None if doc[key] is None else str(doc[key]) for key in sorted(NOTIFY_KEYS)}


def stream_fields(event: Event) -> dict[str, str]:
    """The entry written to ``positions:events``: flat strings, amounts as decimal strings."""
    fields = {
        "event_id": str(event.event_id),
        "type": event.type,
        "kind": event.kind,
        "position_id": event.position_id,
        "user_id": event.user_id,
        "symbol": event.symbol,
        "old_status": event.old_status or "",
        "new_status": event.new_status or "",
        "occurred_at": event.occurred_iso,
        "actor_role": event.actor_role,
    }
    if event.order_id:
        fields["order_id"] = event.order_id
    data = event.data
    for key in sorted(data):
        value = data[key]
        if value is not None and key not in fields:
            fields[key] = value if value.__class__ is str else _text(value)
    return fields


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def notification_for(event: Event) -> dict[str, str] | None:
    """A user-facing notification for the events users care about, or None."""
    if event.kind == "protection":
        return _protection_notification(event)
    if event.kind == "order":
        return _lost_order_notification(event)
    if event.kind != "position" or event.old_status is None:
        return None
    exit_failed = event.old_status == "closing" and event.new_status in ("open", "monitoring")
    if not exit_failed and event.new_status not in _NOTIFICATION:
        return None  # most events (the hot path of a backlog drain)
    side, qty = event.data.get("side", ""), event.data.get("entry_quantity", "")
    title, message, severity = _NOTIFICATION.get(event.new_status or "", (None, "", "info"))
    if exit_failed:
        title, severity = "Exit failed: position still held", "critical"
        message = f"{event.symbol}: the exit order failed ({event.data.get('failure_reason', '')})"
        message += "; the position is open again. Request the exit again or close it by hand."
    if title is None:
        return None
    values = {**event.data, "symbol": event.symbol, "side": side, "quantity": qty}
    return _notice(event, severity, title, message.format_map(_Missing(values)))


def _notice(event: Event, severity: str, title: str, message: str) -> dict[str, str]:
    """A notification about ``event``'s position, of the event's own type."""
    return {
        "event_id": str(event.event_id),
        "type": event.type,
        "position_id": event.position_id,
        "user_id": event.user_id,
        "symbol": event.symbol,
        "severity": severity,
        "title": title,
        "message": message,
        "occurred_at": event.occurred_iso,
    }


def _lost_order_notification(event: Event) -> dict[str, str] | None:
    """An order the exchange acknowledged, then forgot (its error begins ``lost:``,
    worker/execution/orders.py): the position it belonged to is managed again."""
    error = event.data.get("error_message")
    if (
        event.new_status != "cancelled"
        or not isinstance(error, str)
        or not error.startswith("lost:")
    ):
        return None
    purpose = event.data.get("purpose", "")
    return {
        "event_id": str(event.event_id),
        "type": "order.lost",
        "position_id": event.position_id,
        "user_id": event.user_id,
        "symbol": event.symbol,
        "order_id": event.order_id or "",
        "severity": "critical",
        "title": "Order lost by the exchange",
        "message": (
            f"{event.symbol}: the exchange no longer knows the position's {purpose} order"
            f" ({error[5:].strip()}). It is recorded as lost with what it filled; the"
            " position's protection is placed again, or watched by the worker."
        ),
        "occurred_at": event.occurred_iso,
    }


def _protection_notification(event: Event) -> dict[str, str] | None:
    """A live position's protection moved to the worker (the exchange had no room for its
    stop-loss / take-profit orders, or refused them), or back to the exchange."""
    if event.new_status == "worker":
        title, severity = "Stop-loss / take-profit watched by the worker", "warning"
        message = (
            f"{event.symbol}: {event.data.get('protection_reason', 'the exchange holds no order')}."
            " The worker watches the price and exits with a market order when a level is"
            " crossed; it moves the orders back to the exchange when there is room."
        )
    elif event.new_status == "exchange" and event.old_status == "worker":
        title, severity = "Stop-loss / take-profit back on the exchange", "info"
        message = f"{event.symbol}: the exchange holds the position's protective orders again."
    else:
        return None  # protected on the exchange from the start: nothing to tell
    return _notice(event, severity, title, message)


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


_NOTIFICATION: Final[dict[str, tuple[str | None, str, Severity]]] = {
    "open": ("Position opened", "{side} {quantity} {symbol} at {entry_price}", "info"),
    "closed": (
        "Position closed",
        "{symbol} closed at {exit_price}: PnL {realized_pnl} USDT ({realized_pnl_percent} %)",
        "info",
    ),
    "failed": ("Position failed", "{symbol}: {failure_reason}", "error"),
}


def ai_monitoring_request_for(event: Event) -> dict[str, str] | None:
    """A start request for the AI monitor when a position opens, or None."""
    if event.kind != "position" or event.new_status != "open":
        return None
    fields = {
        "event_id": str(event.event_id),
        "type": "monitoring.start",
        "position_id": event.position_id,
        "user_id": event.user_id,
        "symbol": event.symbol,
        "occurred_at": event.occurred_iso,
    }
    for key in ("side", "entry_price", "entry_quantity", "held_quantity", "is_paper_trade"):
        if event.data.get(key) is not None:
            fields[key] = _text(event.data[key])
    return fields


def retry_delay(attempts: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before attempt ``attempts + 1``: capped exponential, full jitter."""
    ceiling = min(cap, base * float(2 ** max(0, attempts - 1)))
    return ceiling / 2 + float(rng.uniform(0, ceiling / 2))
