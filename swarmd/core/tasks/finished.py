"""The finished tasks a coordinator still holds, in the order they finished, with how
many subtasks are in them: what :func:`swarmd.core.retention.to_forget` is asked about.
"""

from __future__ import annotations

from collections.abc import Iterable

from swarmd.core.retention import Retention, to_forget
from swarmd.core.tasks.records import TaskRecord


class FinishedTasks:
    def __init__(self) -> None:
        self._held: dict[str, tuple[float, int]] = {}  # task id -> (when, subtasks)
        self._subtasks = 0  # subtasks in the finished tasks

    def add(self, task: TaskRecord, when: float) -> None:
        self._held[task.id] = (when, len(task.subtasks))
        self._subtasks += len(task.subtasks)

    def discard(self, task_id: str) -> None:
        held = self._held.pop(task_id, None)
        if held is not None:
            self._subtasks -= held[1]

    def count(self) -> tuple[int, int]:
        """How many finished tasks, and subtasks in them, are held."""
        return len(self._held), self._subtasks

    def to_forget(self, now: float, policy: Retention) -> list[str]:
        """The ones ``policy`` lets go now, oldest first."""
        rows = ((task_id, when, size) for task_id, (when, size) in self._held.items())
        return to_forget(rows, len(self._held), self._subtasks, now, policy)

    def reset(self, tasks: Iterable[TaskRecord]) -> None:
        """After a restore: the finished ones of ``tasks``, oldest first (by when they
        finished)."""
        done = [t for t in tasks if t.final]
        done.sort(key=lambda t: t.submitted if t.finished is None else t.finished)
        self._held = {
            t.id: (t.submitted if t.finished is None else float(t.finished), len(t.subtasks))
            for t in done
        }
        self._subtasks = sum(len(t.subtasks) for t in done)
