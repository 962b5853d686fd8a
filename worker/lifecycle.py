"""Position and order lifecycles: the allowed transitions, as plain data.

Pure: no I/O. ``schema/0003_lifecycle.sql`` enforces the same tables inside PostgreSQL (the
database is the final guard); ``tests/integration/test_schema.py`` checks both agree.

Position (the spec's table, plus two documented extensions)::

    created ──► submitting ──► open ──► monitoring ──► closing ──► closed
       │             │           └───────────────────────▲  │
       ▼             ▼                                      ├──► failed
     failed        failed          closing ──► open | monitoring   (exit failed, still held)

* ``created -> failed``: the entry was refused before anything reached the exchange
  (validation, unknown symbol, filter failure).
* ``closing -> open | monitoring``: the exit order failed while a holding remains. The spec
  would write the position off as ``failed`` with coins still on the exchange; instead it goes
  back under management and a critical notification is raised, so an exit can be retried.
"""

from __future__ import annotations

from typing import Final, Literal

from worker.errors import IllegalTransition

PositionStatus = Literal[
    "created", "submitting", "open", "monitoring", "closing", "closed", "failed"
]
OrderStatus = Literal["created", "submitted", "partially_filled", "filled", "cancelled", "failed"]

POSITION_STATUSES: Final = (
    "created", "submitting", "open", "monitoring", "closing", "closed", "failed",
)  # fmt: skip
ORDER_STATUSES: Final = (
    "created", "submitted", "partially_filled", "filled", "cancelled", "failed",
)  # fmt: skip

POSITION_TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "created": frozenset({"submitting", "failed"}),
    "submitting": frozenset({"open", "failed"}),
    "open": frozenset({"monitoring", "closing"}),
    "monitoring": frozenset({"closing"}),
    "closing": frozenset({"closed", "failed", "open", "monitoring"}),
    "closed": frozenset(),
    "failed": frozenset(),
}

ORDER_TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "created": frozenset({"submitted", "failed", "cancelled"}),
    "submitted": frozenset({"partially_filled", "filled", "cancelled", "failed"}),
    "partially_filled": frozenset({"filled", "cancelled"}),
    "filled": frozenset(),
    "cancelled": frozenset(),
    "failed": frozenset(),
}

TERMINAL_POSITION_STATUSES: Final = frozenset({"closed", "failed"})
TERMINAL_ORDER_STATUSES: Final = frozenset({"filled", "cancelled", "failed"})
# A position holds coins (or may, while an order is in flight) in these states.
ACTIVE_POSITION_STATUSES: Final = frozenset({"open", "monitoring", "closing"})


def position_transition_allowed(old: str, new: str) -> bool:
    """True when a position may move from ``old`` to ``new`` (same status is no move)."""
    return old == new or new in POSITION_TRANSITIONS.get(old, frozenset())


def order_transition_allowed(old: str, new: str) -> bool:
    """True when an order may move from ``old`` to ``new`` (same status is no move)."""
    return old == new or new in ORDER_TRANSITIONS.get(old, frozenset())


def check_position_transition(old: str, new: str) -> None:
    """Raise :class:`IllegalTransition` unless ``old -> new`` is allowed for a position."""
    if not position_transition_allowed(old, new):
        raise IllegalTransition("position", old, new)


def check_order_transition(old: str, new: str) -> None:
    """Raise :class:`IllegalTransition` unless ``old -> new`` is allowed for an order."""
    if not order_transition_allowed(old, new):
        raise IllegalTransition("order", old, new)
