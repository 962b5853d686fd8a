"""Lost orders and protection moves, pure: when an acknowledged order the exchange no longer
knows is lost, what that records, and the notifications users get for it and for a
position's protection moving to the worker and back."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from worker.events import Event, notification_for
from worker.execution.statuses import LOST, order_lost, order_status_for


@pytest.mark.parametrize(
    ("status", "missing_for", "window", "lost"),
    [
        ("submitted", 300.0, 300.0, True),
        ("partially_filled", 301.0, 300.0, True),
        ("submitted", 299.9, 300.0, False),
        ("submitted", None, 300.0, False),  # found on the last lookup
        ("created", 1e6, 300.0, False),  # never acknowledged: re-sent, not lost
        ("filled", 1e6, 300.0, False),
    ],
)
def test_order_lost(status: str, missing_for: float | None, window: float, lost: bool) -> None:
    assert order_lost(status, missing_for, window) is lost


def test_a_lost_order_ends_with_what_it_filled() -> None:
    assert order_status_for(LOST, Decimal(0)) == "cancelled"
    assert order_status_for(LOST, Decimal("0.2")) == "cancelled"


def event(kind: str, old: str | None, new: str, **data: Any) -> Event:
    return Event(7, kind, "p1", "u1", "BTCUSDT", datetime(2026, 12, 5, tzinfo=UTC), old, new,
                 "o1" if kind == "order" else None, "postgres", data)  # fmt: skip


def test_a_lost_order_is_a_critical_notification() -> None:
    lost = event("order", "submitted", "cancelled", purpose="stop_loss",
                 error_message="lost: the exchange acknowledged this order, then ...")  # fmt: skip
    note = notification_for(lost)
    assert note is not None
    assert (note["type"], note["severity"], note["order_id"]) == ("order.lost", "critical", "o1")
    assert "stop_loss" in note["message"]
    assert notification_for(event("order", "submitted", "cancelled", purpose="stop_loss")) is None
    rejected = event("order", "created", "failed", error_message="lost: x")
    assert notification_for(rejected) is None


def test_protection_moves_are_notified() -> None:
    to_worker = event("protection", None, "worker", protection_reason="no room on the exchange")
    note = notification_for(to_worker)
    assert note is not None
    assert (note["type"], note["severity"]) == ("protection.worker", "warning")
    assert note["message"].startswith("BTCUSDT: no room on the exchange.")
    back = notification_for(event("protection", "worker", "exchange"))
    assert back is not None and (back["type"], back["severity"]) == ("protection.exchange", "info")
    assert notification_for(event("protection", None, "exchange")) is None  # as usual
