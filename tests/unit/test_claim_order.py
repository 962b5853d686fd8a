"""Per-position order within a claim (worker.db.outbox.in_position_order), pure."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from worker.db.outbox import in_position_order


def row(
    event_id: int, position: str, prev: int | None, pending: bool = False, waiting: bool = False
) -> dict[str, Any]:
    return {
        "id": event_id,
        "position_id": position,
        "prev_id": prev,
        "prev_pending": pending,
        "prev_waiting": waiting,
    }


def test_events_whose_predecessors_are_handled_or_in_the_batch_are_kept() -> None:
    rows = [row(1, "a", None), row(2, "b", 0), row(3, "a", 1, pending=True)]
    assert in_position_order(rows) == (rows, 0, False)


def test_a_predecessor_held_elsewhere_holds_back_the_rest_of_its_position() -> None:
    rows = [row(5, "a", 4, pending=True), row(6, "b", None), row(7, "a", 5, pending=True)]
    kept, held_back, retry_soon = in_position_order(rows)
    assert [r["id"] for r in kept] == [6]
    assert (held_back, retry_soon) == (2, True)


def test_a_predecessor_waiting_out_a_retry_delay_asks_for_no_prompt_retry() -> None:
    rows = [row(5, "a", 4, pending=True, waiting=True)]
    assert in_position_order(rows) == ([], 1, False)


@given(st.lists(st.sampled_from("abc"), max_size=30), st.sets(st.integers(0, 29)))
def test_no_kept_event_overtakes_a_pending_one_of_its_position(
    positions: list[str], held_elsewhere: set[int]
) -> None:
    # Events 0..n-1 in id order; the ones in held_elsewhere are pending but not in this batch.
    last: dict[str, int] = {}
    rows = []
    for event_id, position in enumerate(positions):
        prev = last.get(position)
        last[position] = event_id
        if event_id not in held_elsewhere:
            rows.append(row(event_id, position, prev, pending=prev is not None))
    kept, held_back, _ = in_position_order(rows)
    kept_ids = {r["id"] for r in kept}
    assert held_back == len(rows) - len(kept)
    for event_id, position in enumerate(positions):
        if event_id in kept_ids:  # every earlier event of the position was kept too
            earlier = [i for i in range(event_id) if positions[i] == position]
            assert all(i in kept_ids for i in earlier)
