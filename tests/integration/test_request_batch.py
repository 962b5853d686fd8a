"""Many requests at once (worker/execution/request_batch.py): the exits, partial exits and
scale-ins committed together on many positions are planned, recorded, sent and recorded
again with a statement per step, not per request.

Each test runs the same positions and requests through a worker that batches (the
default) and through one that does not (``pipeline.batch_handlers = false``: the
one-request path), and asserts the database ends up the same: statuses, reasons, orders,
fills, figures, the requests' own status and error, and the events in the order they were
written, to the last digit.
"""

from __future__ import annotations

import uuid
from collections.abc import MutableMapping
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import structlog

from tests.execution_support import orders, position, trades
from tests.integration.test_entry_batch import ORDER_FIELDS, commit_positions, settings
from tests.pipeline_support import eventually
from worker.app import App
from worker.exchanges.paper import PaperExchange
from worker.exchanges.prices import FixedPrices
from worker.execution.routing import ExchangeRouter

pytestmark = pytest.mark.anyio
D = Decimal

# (user, position columns, the requests asked of it, in order): committed in one transaction
CASES: list[tuple[int, dict[str, Any], list[str]]] = [
    (0, {"requested_quantity": D("0.5")}, ["request_position_exit(%s)"]),
    (0, {"requested_quantity": D("0.5")}, ["request_position_exit(%s, 0.2)"]),  # scale-out
    (1, {"requested_quantity": D("0.4")}, ["request_position_scale_in(%s, 0.3)"]),
    (1, {"requested_quantity": D("0.4")}, ["request_position_scale_in(%s, NULL, 33)"]),
    (2, {"side": "short", "requested_quantity": D("0.3")}, ["request_position_exit(%s)"]),
    # below the symbol's minimum notional: rejected with the filter's reason
    (2, {"requested_quantity": D("0.2")}, ["request_position_scale_in(%s, 0.00002)"]),
    # a scale-in, then the exit behind it (that one by one, after the batch)
    (
        3,
        {"requested_quantity": D("0.2")},
        ["request_position_scale_in(%s, 0.1)", "request_position_exit(%s)"],
    ),
    # the entry rests (limit below the market): the exit cancels it, nothing to exit
    (3, {"requested_quantity": D("0.2"), "limit_price": D("90")}, ["request_position_exit(%s)"]),
]
FIGURES = (
    "status",
    "failure_reason",
    "close_reason",
    "entry_quantity",
    "entry_price",
    "entry_value",
    "entry_cost",
    "exit_quantity",
    "exit_price",
    "exit_value",
    "fees_paid",
    "held_quantity",
    "realized_pnl",
    "realized_pnl_percent",
)


def outcome(db_url: str, pid: uuid.UUID) -> tuple[Any, ...]:
    """What a position's requests left: its figures, its orders, its fills, its requests."""
    p = position(db_url, pid)
    fills = sorted(
        (t["price"], t["quantity"], t["fee"], t["fee_asset"]) for t in trades(db_url, pid)
    )
    return (
        tuple(p[k] for k in FIGURES),
        [tuple(o[k] for k in ORDER_FIELDS) for o in orders(db_url, pid)],
        fills,
        requests(db_url, pid),
        events(db_url, pid),
    )


def events(db_url: str, pid: uuid.UUID) -> list[tuple[Any, ...]]:
    """The position's events in commit order (what the pipeline and its consumers see):
    kind, the move, and for an order its purpose and what it had filled at that move."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT kind, old_status, new_status, data->>'purpose', data->>'filled_quantity'"
            " FROM position_events WHERE position_id = %s ORDER BY id",
            (pid,),
        ).fetchall()
    return [tuple(row) for row in rows]


def requests(db_url: str, pid: uuid.UUID) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT r.kind, r.quantity, r.quote_quantity, r.status, r.error, o.purpose"
            " FROM position_requests r LEFT JOIN orders o ON o.id = r.order_id"
            " WHERE r.position_id = %s ORDER BY r.created_at",
            (pid,),
        ).fetchall()
    return [tuple(row) for row in rows]


def entered(db_url: str, ids: list[uuid.UUID]) -> bool:
    """Every entry done: filled (monitoring), or resting (a limit below the market)."""
    for pid, (_, columns, _) in zip(ids, CASES, strict=True):
        want = "submitting" if "limit_price" in columns else "monitoring"
        if position(db_url, pid)["status"] != want:
            return False
        if want == "submitting" and [o["status"] for o in orders(db_url, pid)] != ["submitted"]:
            return False
    return True


def answered(db_url: str, ids: list[uuid.UUID]) -> bool:
    """Every request settled, and no order of any position still working."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE r.status = 'pending'),"
            " (SELECT count(*) FROM orders o WHERE o.position_id = ANY(%s)"
            "  AND o.status IN ('created', 'submitted', 'partially_filled'))"
            " FROM position_requests r WHERE r.position_id = ANY(%s)",
            (ids, ids),
        ).fetchone()
    assert row is not None
    return row == (0, 0)


async def run_requests(
    db_url: str, redis_url: str, *, batched: bool
) -> tuple[list[uuid.UUID], list[MutableMapping[str, Any]]]:
    """Enter CASES' positions, then commit all of their requests in one transaction and
    run until each is settled; the ids and the worker's log lines."""
    ids = commit_positions(db_url, [(user, columns) for user, columns, _ in CASES])
    prices = FixedPrices({"BTCUSDT": D("100")})
    router = ExchangeRouter(paper=PaperExchange(prices, clock=lambda: 1_760_000_000_000))
    capture = structlog.testing.LogCapture()
    app = App(settings(db_url, redis_url, batched), handle_signals=False, router=router)
    app.log = structlog.wrap_logger(None, processors=[capture], wrapper_class=structlog.BoundLogger)
    async with app.serving():
        await eventually(lambda: entered(db_url, ids), timeout=30)
        prices.set("BTCUSDT", D("110"))
        with psycopg.connect(db_url) as conn, conn.transaction():
            for pid, (_, _, calls) in zip(ids, CASES, strict=True):
                for call in calls:
                    conn.execute(f"SELECT {call}", (pid,))
        await eventually(lambda: answered(db_url, ids), timeout=30)
    return ids, capture.entries


async def test_a_batch_of_requests_records_what_one_by_one_requests_record(
    db_url: str, redis_url: str
) -> None:
    batched, logs = await run_requests(db_url, redis_url, batched=True)
    (batch,) = [e for e in logs if e["event"] == "request_batch"]
    # one request per position in the batch; the exit queued behind a scale-in waits for it,
    # and the exit of the resting entry ends with nothing to exit before any order is made
    assert (batch["requests"], batch["orders"]) == (len(CASES) - 1, len(CASES) - 2)
    (recorded,) = [e for e in logs if e["event"] == "request_batch_recorded"]
    assert (recorded["orders"], recorded["recorded"]) == (len(CASES) - 2, len(CASES) - 2)
    alone, alone_logs = await run_requests(db_url, redis_url, batched=False)
    assert not [e for e in alone_logs if e["event"].startswith("request_batch")]
    for i, (a, b) in enumerate(zip(batched, alone, strict=True)):
        assert outcome(db_url, a) == outcome(db_url, b), CASES[i]

    got = [position(db_url, pid) for pid in batched]
    assert [p["status"] for p in got] == [
        "closed",
        "monitoring",
        "monitoring",
        "monitoring",
        "closed",
        "monitoring",
        "closed",
        "failed",
    ]
    assert [p["held_quantity"] for p in got[:4]] == [D("0"), D("0.3"), D("0.7"), D("0.7")]
    # the long sold 0.5 at the bid (109.99 less slippage, as one by one): a profit; the short
    # bought back at the ask: a loss
    assert got[0]["realized_pnl"] > 0 > got[4]["realized_pnl"]
    (rejected,) = requests(db_url, batched[5])
    assert rejected[3:] == (
        "rejected",
        "filter: BTCUSDT notional 0.0022 (0.00002 x 110) below minNotional 5",
        None,
    )
    assert requests(db_url, batched[7]) == [
        ("exit", None, None, "done", "the entry ended with nothing filled: nothing to exit", None)
    ]
    assert [r[3] for r in requests(db_url, batched[6])] == ["done", "done"]
