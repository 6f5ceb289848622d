"""The state tables of swarmd.core.tasks.transitions: every allowed move, and that
anything else raises (also when the coordinator itself tries it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

import pytest

from swarmd.core.jobspec import parse_job
from swarmd.core.tasks import Coordinator, IllegalTransition
from swarmd.core.tasks.effects import Batch
from swarmd.core.tasks.transitions import (
    ATTEMPT,
    FINAL_SUBTASK,
    FINAL_TASK,
    IN_FLIGHT,
    SUBTASK,
    TASK,
    AttemptEvent,
    AttemptState,
    Machine,
    SubtaskEvent,
    SubtaskState,
    TaskEvent,
    TaskState,
    advance,
)
from tests.capacity import peer

_UNFINISHED_SUBTASK = ("waiting", "ready", "dispatched", "running")

# The tables spelled out once more, move by move: (state, event) -> new state.
EXPECTED: dict[str, dict[tuple[str, str], str]] = {
    "task": {
        ("pending", "start"): "running",
        **{(s, "complete"): "done" for s in ("pending", "running")},
        **{(s, "fail"): "failed" for s in ("pending", "running")},
        **{(s, "cancel"): "cancelled" for s in ("pending", "running")},
    },
    "subtask": {
        ("waiting", "release"): "ready",
        ("ready", "release"): "ready",
        ("ready", "hold"): "waiting",
        ("ready", "dispatch"): "dispatched",
        ("dispatched", "refused"): "dispatched",
        ("dispatched", "all_refused"): "ready",
        ("dispatched", "accepted"): "running",
        **{(s, "commit"): "done" for s in IN_FLIGHT},
        **{(s, "retry"): "ready" for s in IN_FLIGHT},
        **{(s, "orphaned"): "ready" for s in IN_FLIGHT},
        **{(s, "fail"): "failed" for s in _UNFINISHED_SUBTASK},
        **{(s, "cancel"): "cancelled" for s in _UNFINISHED_SUBTASK},
    },
    "attempt": {
        ("dispatched", "accepted"): "running",
        **{(s, "succeeded"): "done" for s in IN_FLIGHT},
        **{(s, "failed"): "failed" for s in IN_FLIGHT},
        **{(s, "lost"): "lost" for s in IN_FLIGHT},
        **{(s, "cancel"): "cancelled" for s in IN_FLIGHT},
    },
}

MACHINES: dict[str, tuple[Machine[Any, Any], Any, Any]] = {
    "task": (TASK, TaskState, TaskEvent),
    "subtask": (SUBTASK, SubtaskState, SubtaskEvent),
    "attempt": (ATTEMPT, AttemptState, AttemptEvent),
}


@dataclass
class Record:
    state: str


def moves(machine: Machine[Any, Any]) -> dict[tuple[str, str], str]:
    return {(s, e): new for s, events in machine.table.items() for e, new in events.items()}


ALLOWED = [(name, s, e, new) for name, table in EXPECTED.items() for (s, e), new in table.items()]
FORBIDDEN = [
    (name, s, e)
    for name, (_, states, events) in MACHINES.items()
    for s in get_args(states)
    for e in get_args(events)
    if (s, e) not in EXPECTED[name]
]


@pytest.mark.parametrize("name", list(MACHINES))
def test_the_table_is_exactly_the_expected_one(name: str) -> None:
    machine, states, events = MACHINES[name]
    assert moves(machine) == EXPECTED[name]
    assert set(machine.table) == set(get_args(states))  # every state has a row
    assert {e for _, e in moves(machine)} == set(get_args(events))  # every event is used


@pytest.mark.parametrize(("name", "state", "event", "new"), ALLOWED)
def test_every_allowed_transition(name: str, state: str, event: str, new: str) -> None:
    record = Record(state)
    assert advance(MACHINES[name][0], record, event) == new
    assert record.state == new


@pytest.mark.parametrize(("name", "state", "event"), FORBIDDEN)
def test_every_other_transition_raises(name: str, state: str, event: str) -> None:
    record = Record(state)
    with pytest.raises(IllegalTransition) as caught:
        advance(MACHINES[name][0], record, event)
    assert record.state == state  # unchanged
    assert (caught.value.machine, caught.value.state, caught.value.event) == (name, state, event)
    assert repr(event) in str(caught.value) and repr(state) in str(caught.value)


def test_final_states_are_the_ones_without_moves() -> None:
    def final(machine: Machine[Any, Any]) -> set[str]:
        return {s for s, events in machine.table.items() if not events}

    assert final(TASK) == FINAL_TASK
    assert final(SUBTASK) == FINAL_SUBTASK
    assert final(ATTEMPT) == {"done", "failed", "lost", "cancelled"}


@pytest.mark.parametrize(
    ("machine", "start"), [(TASK, "pending"), (SUBTASK, "waiting"), (ATTEMPT, "dispatched")]
)
def test_every_state_is_reachable_from_the_first(machine: Machine[Any, Any], start: str) -> None:
    seen, stack = {start}, [start]
    while stack:
        for new in machine.table[stack.pop()].values():
            if new not in seen:
                seen.add(new)
                stack.append(new)
    assert seen == set(machine.table)


def test_parse_reads_known_states_only() -> None:
    assert SUBTASK.parse("running") == "running"
    assert ATTEMPT.parse("lost") == "lost"
    with pytest.raises(ValueError, match="subtask: unknown state 'lost'"):
        SUBTASK.parse("lost")  # an attempt's state, not a subtask's
    for bad in ("bogus", None, 3):
        with pytest.raises(ValueError, match="task: unknown state"):
            TASK.parse(bad)


def test_the_coordinator_goes_through_the_table() -> None:
    """An illegal move the coordinator's own code tried would raise, not slip by."""
    c = Coordinator(node_id="coord-id")
    job = parse_job({"name": "job", "subtasks": [{"id": "a", "kind": "shell", "run": ["true"]}]})
    c.submit("t1", job, now=0.0)
    c.schedule([peer("A")], now=0.0)
    c.cancel("t1", now=1.0)
    task = c.record("t1")
    assert task.state == "cancelled" and task.subtasks["a"].state == "cancelled"
    assert task.subtasks["a"].attempts[-1].state == "cancelled"
    with pytest.raises(IllegalTransition, match="task: no transition for 'complete'"):
        c._close_task(Batch(), task, "complete", now=2.0)
    with pytest.raises(IllegalTransition, match="subtask: no transition for 'retry'"):
        c._requeue(Batch(), task, task.subtasks["a"], "retry", now=2.0, not_before=2.0)
    assert task.state == "cancelled" and task.subtasks["a"].state == "cancelled"
