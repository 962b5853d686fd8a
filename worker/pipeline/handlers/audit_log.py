"""The audit log: one structured log line per event, for operators tailing the logs."""

from __future__ import annotations

from typing import Any, Final

import structlog

from worker.events import Event
from worker.logs import write_info

# One stable event name per thing that happens.
_NAMES: Final = {
    ("position", True): "position_created",
    ("position", False): "position_transitioned",
    ("order", True): "order_created",
    ("order", False): "order_transitioned",
    ("trade", True): "fill_recorded",
    ("trade", False): "fill_recorded",
    ("request", True): "request_recorded",
    ("request", False): "request_recorded",
    ("protection", True): "protection_changed",
    ("protection", False): "protection_changed",
}
_AMOUNTS: Final = frozenset(
    {
        "request_id",
        "reason",
        "side",
        "entry_price",
        "entry_quantity",
        "exit_price",
        "exit_quantity",
        "realized_pnl",
        "realized_pnl_percent",
        "fees_paid",
        "failure_reason",
        "client_order_id",
        "purpose",
        "quantity",
        "filled_quantity",
        "price",
        "fee",
        "fee_asset",
        "protection_reason",
    }
)


def make_audit_log(log: Any) -> Any:
    context = structlog.get_context(log)

    async def audit_log(event: Event) -> None:
        name = _NAMES[(event.kind, event.old_status is None)]
        data = event.data
        fields = {
            "event_id": event.event_id,
            "position_id": event.position_id,
            "order_id": event.order_id,
            "user_id": event.user_id,
            "symbol": event.symbol,
            "old_status": event.old_status,
            "new_status": event.new_status,
            "actor_role": event.actor_role,
            "occurred_at": event.occurred_iso,
        }
        for key, value in data.items():
            if value is not None and key in _AMOUNTS:
                fields[key] = value
        if not write_info(context, name, fields):  # not JSON: structlog renders it
            log.info(name, **fields)

    return audit_log
