"""Many entries at once (worker/execution/entry_batch.py): the created positions of one claim
are checked, recorded, sent and recorded again with a statement per step, not per position.

Each test runs the same positions through a worker that batches (the default) and, where it
compares, through one that does not (``pipeline.batch_handlers = false``: the one-position
path), and asserts the database ends up the same: statuses, reasons, orders,
fills and figures, to the last digit.
"""

from __future__ import annotations

import uuid
from collections.abc import MutableMapping
from dataclasses import replace
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import structlog

from tests.execution_support import exec_settings, orders, position, trades
from tests.pipeline_support import eventually
from tests.support import seed_owner
from worker.app import App
from worker.exchanges.paper import PaperExchange
from worker.exchanges.prices import FixedPrices
from worker.execution.routing import ExchangeRouter
from worker.settings import Settings

pytestmark = pytest.mark.anyio
D = Decimal

# (user, columns): three users' entries of every shape, committed in one transaction
SHAPES: list[tuple[int, dict[str, Any]]] = [
    (0, {"requested_quantity": D("0.5")}),
    (0, {"requested_quote": D("25")}),
    (1, {"side": "short", "requested_quantity": D("0.3")}),
    (1, {"requested_quantity": D("0.2"), "limit_price": D("101")}),  # crosses: fills
    (2, {"requested_quantity": D("0.2"), "limit_price": D("90")}),  # rests
    (2, {"requested_quantity": D("0.1"), "stop_loss_price": D("150")}),  # refused
    (2, {"requested_quantity": D("0.4"), "take_profit_price": D("130")}),
]
FIGURES = (
    "status",
    "failure_reason",
    "entry_quantity",
    "entry_price",
    "entry_value",
    "entry_cost",
    "fees_paid",
    "held_quantity",
)
ORDER_FIELDS = (
    "purpose",
    "type",
    "side",
    "quantity",
    "quote_quantity",
    "price",
    "status",
    "filled_quantity",
    "avg_fill_price",
    "fees",
    "send_attempts",
)
SETTLED = ("monitoring", "failed")


def commit_positions(db_url: str, shapes: list[tuple[int, dict[str, Any]]]) -> list[uuid.UUID]:
    """``shapes``' paper positions, one user per distinct index, in ONE transaction."""
    with psycopg.connect(db_url) as conn, conn.transaction():
        owners = {user: seed_owner(conn) for user in sorted({u for u, _ in shapes})}
        ids = []
        for user, columns in shapes:
            owner = owners[user]
            row = {"side": "long", "is_paper_trade": True, **columns}
            names = ", ".join(row)
            cur = conn.execute(
                f"INSERT INTO positions (user_id, trader_id, signal_id, symbol, status, {names})"
                f" VALUES (%s, %s, %s, 'BTCUSDT', 'created', {', '.join(['%s'] * len(row))})"
                " RETURNING id",
                (owner.user_id, owner.trader_id, owner.signal_id, *row.values()),
            )
            found = cur.fetchone()
            assert found is not None
            ids.append(found[0])
    return ids


def outcome(db_url: str, pid: uuid.UUID) -> tuple[Any, ...]:
    """What a position's entry left: its figures, its orders, its fills."""
    p = position(db_url, pid)
    rows = orders(db_url, pid)
    fills = sorted(
        (t["price"], t["quantity"], t["fee"], t["fee_asset"]) for t in trades(db_url, pid)
    )
    return (
        tuple(p[k] for k in FIGURES),
        [tuple(o[k] for k in ORDER_FIELDS) for o in rows],
        fills,
    )


def settled(db_url: str, ids: list[uuid.UUID], resting: frozenset[int] = frozenset()) -> bool:
    """Every position done with its entry: open (moved on to monitoring) or failed; those
    at the indexes of ``resting`` keep a resting limit order."""
    for i, pid in enumerate(ids):
        status = position(db_url, pid)["status"]
        if status not in (("submitting",) if i in resting else SETTLED):
            return False
        if i in resting and [o["status"] for o in orders(db_url, pid)] != ["submitted"]:
            return False
    return True


def paper_router() -> ExchangeRouter:
    return ExchangeRouter(
        paper=PaperExchange(FixedPrices({"BTCUSDT": D("100")}), clock=lambda: 1_760_000_000_000)
    )


def settings(db_url: str, redis_url: str, batched: bool) -> Settings:
    base = exec_settings(db_url, redis_url)
    return replace(base, pipeline=replace(base.pipeline, batch_handlers=batched))


async def enter(
    db_url: str,
    redis_url: str,
    shapes: list[tuple[int, dict[str, Any]]],
    *,
    batched: bool,
    resting: frozenset[int] = frozenset(),
    router: ExchangeRouter | None = None,
    open_limit: int | None = None,
) -> tuple[list[uuid.UUID], list[MutableMapping[str, Any]]]:
    """Commit ``shapes``' positions, run a worker until each is done with its entry; the
    ids and the worker's log lines. ``open_limit``: the first position's user may have at
    most that many open positions (a user_risk_limits row)."""
    ids = commit_positions(db_url, shapes)
    if open_limit is not None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO user_risk_limits (user_id, max_open_positions)"
                " SELECT user_id, %s FROM positions WHERE id = %s",
                (open_limit, ids[0]),
            )
    capture = structlog.testing.LogCapture()
    app = App(
        settings(db_url, redis_url, batched),
        handle_signals=False,
        router=router or paper_router(),
    )
    app.log = structlog.wrap_logger(None, processors=[capture], wrapper_class=structlog.BoundLogger)
    async with app.serving():
        await eventually(lambda: settled(db_url, ids, resting), timeout=30)
    return ids, capture.entries


def batches(logs: list[MutableMapping[str, Any]]) -> list[int]:
    return [e["positions"] for e in logs if e["event"] == "entry_batch"]


async def test_a_batch_of_entries_records_what_one_by_one_entries_record(
    db_url: str, redis_url: str
) -> None:
    batched, logs = await enter(db_url, redis_url, SHAPES, batched=True, resting=frozenset({4}))
    assert batches(logs) == [len(SHAPES)]
    (recorded,) = [e for e in logs if e["event"] == "entry_batch_recorded"]
    # the refused stop-loss is never sent; the rest are sent and their answers recorded
    assert (recorded["orders"], recorded["recorded"]) == (len(SHAPES) - 1, len(SHAPES) - 1)
    assert all(isinstance(recorded[k], int) for k in ("send_ms", "record_ms"))
    alone, alone_logs = await enter(
        db_url, redis_url, SHAPES, batched=False, resting=frozenset({4})
    )
    assert batches(alone_logs) == []
    for i, (a, b) in enumerate(zip(batched, alone, strict=True)):
        assert outcome(db_url, a) == outcome(db_url, b), SHAPES[i]
    got = [position(db_url, pid)["status"] for pid in batched]
    assert got == ["monitoring"] * 4 + ["submitting", "failed", "monitoring"]
    refused = position(db_url, batched[5])["failure_reason"]
    assert refused == "stop-loss 150.00000000 is not below the current price 100 for a long"
    opened = position(db_url, batched[0])
    assert (opened["entry_quantity"], opened["held_quantity"]) == (D("0.5"), D("0.5"))
    assert [o["send_attempts"] for pid in batched for o in orders(db_url, pid)] == [1] * 6


async def test_risk_limits_judge_each_entry_of_a_batch_as_one_by_one_entries_would(
    db_url: str, redis_url: str
) -> None:
    """At most 2 open positions for the user, 4 entries at once: each entry counts the
    user's other positions not final, where one refused before it no longer counts, so two
    are refused (3, then 2 others) and two open (1 other each). One by one, the user's
    positions overlap and take the lock in any order; in a batch, in the claim's order."""
    shapes = [(0, {"requested_quantity": D("0.1")}) for _ in range(4)]
    reasons = {
        "risk limit: you have 3 positions open, the maximum is 2",
        "risk limit: you have 2 positions open, the maximum is 2",
    }
    for batched in (True, False):
        ids, logs = await enter(db_url, redis_url, shapes, batched=batched, open_limit=2)
        assert batches(logs) == ([4] if batched else [])
        got = [(p["status"], p["failure_reason"]) for p in (position(db_url, i) for i in ids)]
        assert sorted(got, key=str) == sorted(
            [("failed", r) for r in reasons] + [("monitoring", None)] * 2, key=str
        )
        if batched:
            assert [status for status, _ in got] == ["failed", "failed", "monitoring", "monitoring"]


async def test_a_position_held_elsewhere_is_left_out_of_the_batch_and_entered_after(
    db_url: str, redis_url: str
) -> None:
    """One position's lock held by another session: the batch enters the others; the held
    one waits for its lock (its event, one by one) and enters once it is released."""
    shapes = [(u, {"requested_quantity": D("0.1")}) for u in range(4)]
    ids = commit_positions(db_url, shapes)
    held = str(ids[1])
    with psycopg.connect(db_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 7365))", (held,))
        capture = structlog.testing.LogCapture()
        app = App(settings(db_url, redis_url, True), handle_signals=False, router=paper_router())
        app.log = structlog.wrap_logger(
            None, processors=[capture], wrapper_class=structlog.BoundLogger
        )
        async with app.serving():
            others = [pid for pid in ids if str(pid) != held]
            await eventually(lambda: settled(db_url, others), timeout=30)
            assert position(db_url, ids[1])["status"] == "created"
            holder.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 7365))", (held,))
            await eventually(lambda: settled(db_url, ids), timeout=30)
    assert batches(capture.entries) == [3]
    assert all(position(db_url, pid)["status"] == "monitoring" for pid in ids)


async def test_a_rejected_order_in_a_batch_fails_its_position_alone(
    db_url: str, redis_url: str
) -> None:
    router = paper_router()
    assert isinstance(router.paper, PaperExchange)
    router.paper.reject_next("BTCUSDT")
    shapes = [(u, {"requested_quantity": D("0.1")}) for u in range(5)]
    ids, logs = await enter(db_url, redis_url, shapes, batched=True, router=router)
    assert batches(logs) == [5]
    statuses = sorted(position(db_url, pid)["status"] for pid in ids)
    assert statuses == ["failed"] + ["monitoring"] * 4
    failed = next(pid for pid in ids if position(db_url, pid)["status"] == "failed")
    reason = position(db_url, failed)["failure_reason"]
    assert reason.startswith("entry rejected by the exchange: -2010"), reason
    assert [o["status"] for o in orders(db_url, failed)] == ["failed"]


async def test_partly_filled_entries_of_a_batch_record_what_one_by_one_entries_record(
    db_url: str, redis_url: str
) -> None:
    """The book holds 0.3 per order: market entries of 0.5 fill 0.3 and EXPIRE (the order
    cancelled, the position open with what filled); one of 0.2 fills whole."""
    shapes = [
        (0, {"requested_quantity": D("0.5")}),
        (1, {"requested_quantity": D("0.2")}),
        (1, {"requested_quote": D("80")}),
    ]
    runs = []
    for batched in (True, False):
        router = paper_router()
        assert isinstance(router.paper, PaperExchange)
        router.paper.set_liquidity("BTCUSDT", D("0.3"))
        ids, logs = await enter(db_url, redis_url, shapes, batched=batched, router=router)
        assert batches(logs) == ([3] if batched else [])
        runs.append(ids)
    for i, (a, b) in enumerate(zip(*runs, strict=True)):
        assert outcome(db_url, a) == outcome(db_url, b), shapes[i]
    first = runs[0][0]
    assert position(db_url, first)["held_quantity"] == D("0.3")
    assert [(o["status"], o["filled_quantity"]) for o in orders(db_url, first)] == [
        ("cancelled", D("0.3"))
    ]
