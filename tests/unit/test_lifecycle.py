"""The lifecycle tables in worker/lifecycle.py, checked against the spec written out here.

The expected edges are spelled out independently of the module (the spec's table plus the two
documented extensions), so a wrong edge in either place fails a test.
"""

from __future__ import annotations

import itertools
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import lifecycle
from worker.errors import IllegalTransition

POSITION_STATES = ("created", "submitting", "open", "monitoring", "closing", "closed", "failed")
ORDER_STATES = ("created", "submitted", "partially_filled", "filled", "cancelled", "failed")

SPEC_POSITION_EDGES = {
    ("created", "submitting"),
    ("submitting", "open"),
    ("submitting", "failed"),
    ("open", "monitoring"),
    ("open", "closing"),
    ("monitoring", "closing"),
    ("closing", "closed"),
    ("closing", "failed"),
}
# Deliberate extensions (lifecycle.py docstring, docs/spec-conformance.md).
EXTENSION_POSITION_EDGES = {
    ("created", "failed"),
    ("closing", "open"),
    ("closing", "monitoring"),
}
POSITION_EDGES = SPEC_POSITION_EDGES | EXTENSION_POSITION_EDGES

ORDER_EDGES = {
    ("created", "submitted"),
    ("created", "failed"),
    ("created", "cancelled"),
    ("submitted", "partially_filled"),
    ("submitted", "filled"),
    ("submitted", "cancelled"),
    ("submitted", "failed"),
    ("partially_filled", "filled"),
    ("partially_filled", "cancelled"),
}

POSITION_PAIRS = [(old, new) for old in POSITION_STATES for new in POSITION_STATES]
ORDER_PAIRS = [(old, new) for old in ORDER_STATES for new in ORDER_STATES]


def _ids(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{a}->{b}" for a, b in pairs]


def test_status_lists_match_the_spec() -> None:
    assert lifecycle.POSITION_STATUSES == POSITION_STATES
    assert lifecycle.ORDER_STATUSES == ORDER_STATES
    assert set(lifecycle.POSITION_TRANSITIONS) == set(POSITION_STATES)
    assert set(lifecycle.ORDER_TRANSITIONS) == set(ORDER_STATES)


def test_transition_tables_are_exactly_the_expected_edges() -> None:
    position_edges = {(a, b) for a, nexts in lifecycle.POSITION_TRANSITIONS.items() for b in nexts}
    order_edges = {(a, b) for a, nexts in lifecycle.ORDER_TRANSITIONS.items() for b in nexts}
    assert position_edges == POSITION_EDGES
    assert order_edges == ORDER_EDGES


@pytest.mark.parametrize(("old", "new"), POSITION_PAIRS, ids=_ids(POSITION_PAIRS))
def test_position_pair(old: str, new: str) -> None:
    expected = (old, new) in POSITION_EDGES or old == new
    assert lifecycle.position_transition_allowed(old, new) is expected
    if expected:
        lifecycle.check_position_transition(old, new)
        return
    with pytest.raises(IllegalTransition) as info:
        lifecycle.check_position_transition(old, new)
    assert (info.value.entity, info.value.old, info.value.new) == ("position", old, new)
    assert str(info.value) == f"illegal position transition: {old} -> {new}"


@pytest.mark.parametrize(("old", "new"), ORDER_PAIRS, ids=_ids(ORDER_PAIRS))
def test_order_pair(old: str, new: str) -> None:
    expected = (old, new) in ORDER_EDGES or old == new
    assert lifecycle.order_transition_allowed(old, new) is expected
    if expected:
        lifecycle.check_order_transition(old, new)
        return
    with pytest.raises(IllegalTransition) as info:
        lifecycle.check_order_transition(old, new)
    assert (info.value.entity, info.value.old, info.value.new) == ("order", old, new)
    assert str(info.value) == f"illegal order transition: {old} -> {new}"


def test_spec_examples_are_refused() -> None:
    # The issue's own examples: created -> closed, closed -> open, failed -> anything.
    assert not lifecycle.position_transition_allowed("created", "closed")
    assert not lifecycle.position_transition_allowed("closed", "open")
    assert not any(
        lifecycle.position_transition_allowed("failed", s) for s in POSITION_STATES if s != "failed"
    )
    # A partially filled order may be cancelled (it keeps its fills), never failed or resubmitted.
    assert lifecycle.order_transition_allowed("partially_filled", "cancelled")
    assert not lifecycle.order_transition_allowed("partially_filled", "failed")
    assert not lifecycle.order_transition_allowed("partially_filled", "submitted")


@pytest.mark.parametrize("bogus", ["", "OPEN", "opened", "unknown"])
def test_unknown_states_are_refused(bogus: str) -> None:
    assert not lifecycle.position_transition_allowed("created", bogus)
    assert not lifecycle.position_transition_allowed(bogus, "created")
    assert not lifecycle.order_transition_allowed("created", bogus)
    assert not lifecycle.order_transition_allowed(bogus, "created")
    with pytest.raises(IllegalTransition):
        lifecycle.check_position_transition(bogus, "open")


def test_terminal_and_active_sets() -> None:
    assert {"closed", "failed"} == lifecycle.TERMINAL_POSITION_STATUSES
    assert {"filled", "cancelled", "failed"} == lifecycle.TERMINAL_ORDER_STATUSES
    assert {"open", "monitoring", "closing"} == lifecycle.ACTIVE_POSITION_STATUSES
    for state in lifecycle.TERMINAL_POSITION_STATUSES:
        assert lifecycle.POSITION_TRANSITIONS[state] == frozenset()
    for state in lifecycle.TERMINAL_ORDER_STATUSES:
        assert lifecycle.ORDER_TRANSITIONS[state] == frozenset()
    # ... and every non-terminal state has a way out.
    for state in set(POSITION_STATES) - lifecycle.TERMINAL_POSITION_STATUSES:
        assert lifecycle.POSITION_TRANSITIONS[state]
    for state in set(ORDER_STATES) - lifecycle.TERMINAL_ORDER_STATUSES:
        assert lifecycle.ORDER_TRANSITIONS[state]


def _reachable(table: dict[str, frozenset[str]], start: str) -> set[str]:
    seen, todo = {start}, deque([start])
    while todo:
        for nxt in table[todo.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_reachable_from_created_and_every_state_can_finish() -> None:
    assert _reachable(lifecycle.POSITION_TRANSITIONS, "created") == set(POSITION_STATES)
    assert _reachable(lifecycle.ORDER_TRANSITIONS, "created") == set(ORDER_STATES)
    for state in POSITION_STATES:
        assert _reachable(lifecycle.POSITION_TRANSITIONS, state) & {"closed", "failed"}
    for state in ORDER_STATES:
        assert _reachable(lifecycle.ORDER_TRANSITIONS, state) & {"filled", "cancelled", "failed"}


def test_nothing_returns_to_created() -> None:
    assert all("created" not in n for n in lifecycle.POSITION_TRANSITIONS.values())
    assert all("created" not in n for n in lifecycle.ORDER_TRANSITIONS.values())


# Property-based -------------------------------------------------------------------------------


def _walk(table: dict[str, frozenset[str]], choices: list[int]) -> list[str]:
    """A walk of allowed moves from created, steered by ``choices``; stops when stuck."""
    path = ["created"]
    for choice in choices:
        options = sorted(table[path[-1]])
        if not options:
            break
        path.append(options[choice % len(options)])
    return path


@given(st.lists(st.integers(min_value=0, max_value=10), max_size=40))
def test_random_position_walk_stays_legal_and_never_leaves_a_terminal_state(
    choices: list[int],
) -> None:
    path = _walk(lifecycle.POSITION_TRANSITIONS, choices)
    for old, new in itertools.pairwise(path):
        assert (old, new) in POSITION_EDGES
        assert old not in lifecycle.TERMINAL_POSITION_STATUSES
        lifecycle.check_position_transition(old, new)
    terminal_at = [i for i, s in enumerate(path) if s in lifecycle.TERMINAL_POSITION_STATUSES]
    # At most one terminal state, and only as the last step.
    assert terminal_at in ([], [len(path) - 1])
    # A position is only ever closed by way of closing.
    if path[-1] == "closed":
        assert path[-2] == "closing"


@given(st.lists(st.integers(min_value=0, max_value=10), max_size=20))
def test_random_order_walk_stays_legal_and_never_leaves_a_terminal_state(
    choices: list[int],
) -> None:
    path = _walk(lifecycle.ORDER_TRANSITIONS, choices)
    for old, new in itertools.pairwise(path):
        assert (old, new) in ORDER_EDGES
        lifecycle.check_order_transition(old, new)
    assert all(s not in lifecycle.TERMINAL_ORDER_STATUSES for s in path[:-1])
    # Orders never cycle: the longest walk is created -> submitted -> partially_filled -> end.
    assert len(path) == len(set(path)) <= 4


@given(
    st.sampled_from(sorted(lifecycle.TERMINAL_POSITION_STATUSES)),
    st.text(max_size=12) | st.sampled_from(POSITION_STATES),
)
def test_terminal_position_states_have_no_exit(terminal: str, target: str) -> None:
    assert lifecycle.position_transition_allowed(terminal, target) is (target == terminal)


@given(
    st.sampled_from(sorted(lifecycle.TERMINAL_ORDER_STATUSES)),
    st.text(max_size=12) | st.sampled_from(ORDER_STATES),
)
def test_terminal_order_states_have_no_exit(terminal: str, target: str) -> None:
    assert lifecycle.order_transition_allowed(terminal, target) is (target == terminal)


@given(st.text(max_size=20), st.text(max_size=20))
def test_check_agrees_with_allowed_for_any_strings(old: str, new: str) -> None:
    allowed = lifecycle.position_transition_allowed(old, new)
    try:
        lifecycle.check_position_transition(old, new)
    except IllegalTransition:
        assert not allowed
    else:
        assert allowed
    assert allowed == (old == new or (old, new) in POSITION_EDGES)
