"""The audit log: one structured log line per event, for operators tailing the logs."""

from __future__ import annotations

from typing import Any, Final

from worker.events import Event

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
}
_AMOUNTS: Final = (
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
)


def make_audit_log(log: Any) -> Any:
    async def audit_log(event: Event) -> None:
        name = _NAMES[(event.kind, event.old_status is None)]
        details = {k: event.data[k] for k in _AMOUNTS if event.data.get(k) is not None}
        log.info(
            name,
            event_id=event.event_id,
            position_id=event.position_id,
            order_id=event.order_id,
            user_id=event.user_id,
            symbol=event.symbol,
            old_status=event.old_status,
            new_status=event.new_status,
            actor_role=event.actor_role,
            occurred_at=event.occurred_at.isoformat(),
            **details,
        )

    return audit_log
