"""State transitions, as tables: for a task, a subtask and an attempt, which event
moves which state to which. Every change of a record's ``state`` goes through
:func:`advance`, which applies an event by its table and raises
:class:`IllegalTransition` for a move the table does not have (a bug in the
coordinator, never the workers' doing: their stale or unexpected messages are fenced
off before any event is applied).

The subtask table is the diagram in :mod:`swarmd.core.tasks` ("Life of a subtask")
made exact: plus a template that fails to render (``fail`` from waiting or ready), a
deadline (``fail`` from ready) and the moves a restore makes (``hold``, ``orphaned``,
``release`` of a subtask that was ready). Reading a snapshot back from the journal is not a
transition: :meth:`Machine.parse` only checks the state is one the machine knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Generic, Literal, Protocol, TypeVar, cast

TaskState = Literal["pending", "running", "done", "failed", "cancelled"]
SubtaskState = Literal["waiting", "ready", "dispatched", "running", "done", "failed", "cancelled"]
AttemptState = Literal["dispatched", "running", "done", "failed", "lost", "cancelled"]

TaskEvent = Literal["start", "complete", "fail", "cancel"]
SubtaskEvent = Literal[
    "release",  # everything in `after` is done (restore: queued again)
    "hold",  # restore: not everything in `after` is done
    "dispatch",  # priced, sent to the winner
    "refused",  # the worker is full: sent to the next candidate of the same placement
    "all_refused",  # every candidate refused: wait, then price again
    "accepted",  # the worker took the attempt (or reported progress)
    "commit",  # a successful result of the current attempt
    "retry",  # the attempt was lost or failed and retries are left: back off, again
    "fail",  # an application failure, retries exhausted, a template, a deadline
    "cancel",  # cancelled, an upstream subtask failed, a deadline while waiting
    "orphaned",  # restore: in flight on record, but no attempt out
]
AttemptEvent = Literal["accepted", "succeeded", "failed", "lost", "cancel"]

FINAL_TASK: Final[frozenset[str]] = frozenset({"done", "failed", "cancelled"})
FINAL_SUBTASK: Final[frozenset[str]] = frozenset({"done", "failed", "cancelled"})
IN_FLIGHT: Final[frozenset[str]] = frozenset({"dispatched", "running"})

S = TypeVar("S", bound=str)
E = TypeVar("E", bound=str)


class IllegalTransition(ValueError):
    """An event the table does not allow in the record's current state."""

    def __init__(self, machine: str, state: str, event: str) -> None:
        super().__init__(f"{machine}: no transition for {event!r} from {state!r}")
        self.machine = machine
        self.state = state
        self.event = event


@dataclass(frozen=True, slots=True)
class Machine(Generic[S, E]):
    """A state table: ``table[state][event]`` is the state ``event`` moves ``state``
    to. Every state is a key (a final one maps to no events)."""

    name: str
    table: Mapping[S, Mapping[E, S]]

    def parse(self, state: object) -> S:
        """``state`` as read back from a snapshot; ValueError if it is not one of ours."""
        if not isinstance(state, str) or state not in self.table:
            raise ValueError(f"{self.name}: unknown state {state!r}")
        return cast(S, state)


class Stateful(Protocol[S]):
    state: S


def advance(machine: Machine[S, E], record: Stateful[S], event: E) -> S:
    """Apply ``event`` to ``record``: set its state to the one ``machine``'s table
    names, and return that state. IllegalTransition if the table has no such move."""
    new = machine.table[record.state].get(event)
    if new is None:
        raise IllegalTransition(machine.name, record.state, event)
    record.state = new
    return new


_END_TASK: Final[Mapping[TaskEvent, TaskState]] = {
    "complete": "done",
    "fail": "failed",
    "cancel": "cancelled",
}

TASK: Final[Machine[TaskState, TaskEvent]] = Machine(
    "task",
    {
        "pending": {"start": "running", **_END_TASK},  # no subtask out yet
        "running": _END_TASK,
        "done": {},
        "failed": {},
        "cancelled": {},
    },
)

_END_SUBTASK: Final[Mapping[SubtaskEvent, SubtaskState]] = {
    "fail": "failed",
    "cancel": "cancelled",
}
_OUT: Final[Mapping[SubtaskEvent, SubtaskState]] = {  # an attempt is out
    "commit": "done",
    "retry": "ready",
    "orphaned": "ready",
    **_END_SUBTASK,
}

SUBTASK: Final[Machine[SubtaskState, SubtaskEvent]] = Machine(
    "subtask",
    {
        "waiting": {"release": "ready", **_END_SUBTASK},
        "ready": {"release": "ready", "hold": "waiting", "dispatch": "dispatched", **_END_SUBTASK},
        "dispatched": {
            "accepted": "running",
            "refused": "dispatched",
            "all_refused": "ready",
            **_OUT,
        },
        "running": _OUT,
        "done": {},
        "failed": {},
        "cancelled": {},
    },
)

_END_ATTEMPT: Final[Mapping[AttemptEvent, AttemptState]] = {
    "succeeded": "done",
    "failed": "failed",  # an application failure, or a worker error
    "lost": "lost",  # node dead, left or restarted; lease lapsed
    "cancel": "cancelled",  # the task was cancelled or ran past its deadline
}

ATTEMPT: Final[Machine[AttemptState, AttemptEvent]] = Machine(
    "attempt",
    {
        "dispatched": {"accepted": "running", **_END_ATTEMPT},
        "running": _END_ATTEMPT,
        "done": {},
        "failed": {},
        "lost": {},
        "cancelled": {},
    },
)
