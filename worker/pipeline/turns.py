"""In what order a claimed batch's positions take their turns. Pure: no I/O.

A batch's events are split into one run per position (its events in id order, the order
they must be handled in), and the runs are ordered round-robin across users: every user's
first position, then every user's second, and so on, oldest first within a round. A user
with a thousand positions in the batch then goes first with one of them, not a thousand:
another user's entry starts in the first round however many events came before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


class Item(Protocol):
    """An event of the batch (or a row that is not one): the position and user it is of."""

    @property
    def position_id(self) -> str: ...


T = TypeVar("T", bound=Item)


@dataclass(slots=True)
class Run(Generic[T]):
    """One position's events of the batch, in the order they must be handled."""

    position_id: str
    user_id: str
    items: list[T] = field(default_factory=list)
    turn: int = 0  # the user's how-manieth position in the batch (0: their first)


def user_of(item: Item) -> str:
    """The user an item belongs to ('' when it names none: an unreadable row)."""
    return str(getattr(item, "user_id", "") or "")


def in_turns(items: Sequence[T]) -> list[Run[T]]:
    """The positions' runs, round-robin across users (see the module notes)."""
    runs: dict[str, Run[T]] = {}
    for item in items:
        run = runs.get(item.position_id)
        if run is None:
            run = runs[item.position_id] = Run(item.position_id, user_of(item))
        run.items.append(item)
    rounds: dict[str, int] = {}
    ranked: list[tuple[int, int, Run[T]]] = []
    for order, run in enumerate(runs.values()):  # by first event, oldest first
        run.turn = rounds.get(run.user_id, 0)
        rounds[run.user_id] = run.turn + 1
        ranked.append((run.turn, order, run))
    ranked.sort(key=lambda entry: (entry[0], entry[1]))
    return [run for _, _, run in ranked]
