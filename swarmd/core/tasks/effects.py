"""Effects: the values a :class:`~swarmd.core.tasks.Coordinator` call returns for the
asyncio shell to carry out (send a dispatch, cancel an attempt, ack a result, report a
finished task, persist a journal record), and the :class:`Batch` one call collects
them in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from swarmd.core.jobspec import SubtaskSpec
from swarmd.core.tasks.transitions import TaskState


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send this attempt to ``node_id`` (the worker answers accepted or refused)."""

    task_id: str
    subtask_id: str
    attempt: int
    node_id: str
    spec: SubtaskSpec  # placeholders rendered from the upstream results
    lease_s: float  # the worker reports progress well within this
    model: str | None  # the model profile chosen on that node (llm)
    upstream: Mapping[str, Mapping[str, Any]]  # results for rendering input files, if any
    epoch: int = 1  # the task's coordinator epoch (workers refuse an older one)


@dataclass(frozen=True, slots=True)
class CancelAttempt:
    """Tell ``node_id`` to stop this attempt (cancelled, or superseded by a newer one)."""

    task_id: str
    subtask_id: str
    attempt: int
    node_id: str


@dataclass(frozen=True, slots=True)
class Ack:
    """Tell ``node_id`` its result for this attempt is settled (committed or dropped as
    stale): it may clear it from its outbox."""

    task_id: str
    subtask_id: str
    attempt: int
    node_id: str
    committed: bool


@dataclass(frozen=True, slots=True)
class TaskFinished:
    task_id: str
    state: TaskState


@dataclass(frozen=True, slots=True)
class Journal:
    """A snapshot to persist. Kinds: "task" (the job, once), "task_state",
    "subtask" and "forget" (drop everything of that task). Within a kind the last
    record per :attr:`key` wins; ``data`` is JSON-able."""

    kind: str
    data: Mapping[str, Any]

    @property
    def key(self) -> tuple[str, str, str]:
        """(kind, task id, subtask id or "") — upsert on this, or append and let the
        last one win on restore."""
        return (self.kind, str(self.data["task"]), str(self.data.get("subtask", "")))


@dataclass(frozen=True, slots=True)
class Quarantine:
    """A journal record restore could not use (a missing key, a wrong type): move it
    out of the journal, keep it for a person to look at. Only ``restore`` returns it."""

    key: tuple[str, str, str]
    reason: str

    @property
    def task_id(self) -> str:
        return self.key[1]


Effect: TypeAlias = Dispatch | CancelAttempt | Ack | TaskFinished | Journal | Quarantine


class Batch:
    """Effects of one call, with the journal snapshots taken at the end."""

    def __init__(self) -> None:
        self.effects: list[Effect] = []
        self.tasks: dict[str, None] = {}  # task ids whose state changed
        self.subtasks: dict[tuple[str, str], None] = {}
