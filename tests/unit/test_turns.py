"""The order a batch's positions take their turns in (worker/pipeline/turns.py)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from worker.pipeline.turns import in_turns


@dataclass(frozen=True)
class Item:
    event_id: int
    position_id: str
    user_id: str


def items(*rows: tuple[str, str]) -> list[Item]:
    return [Item(i, position, user) for i, (position, user) in enumerate(rows)]


def test_each_user_goes_once_per_round_oldest_first() -> None:
    batch = items(("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B"), ("a1", "A"), ("c1", "C"))
    runs = in_turns(batch)
    assert [r.position_id for r in runs] == ["a1", "b1", "c1", "a2", "a3"]
    assert [i.event_id for i in runs[0].items] == [0, 4]  # a position's events stay in order


def test_a_row_without_a_user_is_its_own_users_turn() -> None:
    @dataclass(frozen=True)
    class Unreadable:
        position_id: str

    runs = in_turns([Unreadable("x"), Unreadable("y")])
    assert [(r.position_id, r.user_id) for r in runs] == [("x", ""), ("y", "")]


rows = st.lists(st.tuples(st.sampled_from("pqrstu"), st.sampled_from("ABC")), max_size=40)


@given(rows)
def test_every_event_once_each_position_in_order(raw: list[tuple[str, str]]) -> None:
    user_of: dict[str, str] = {}
    batch = [
        Item(i, p, user_of.setdefault(p, u)) for i, (p, u) in enumerate(raw)
    ]  # a position belongs to one user
    runs = in_turns(batch)
    flat = [item for run in runs for item in run.items]
    assert sorted(i.event_id for i in flat) == list(range(len(batch)))
    for run in runs:
        ids = [i.event_id for i in run.items]
        assert ids == sorted(ids)
        assert {i.position_id for i in run.items} == {run.position_id}
    # round-robin: a user's k-th position comes after every user's (k-1)-th
    seen: dict[str, int] = {}
    turns = []
    for run in runs:
        seen[run.user_id] = seen.get(run.user_id, 0) + 1
        turns.append(seen[run.user_id])
    assert turns == sorted(turns)
