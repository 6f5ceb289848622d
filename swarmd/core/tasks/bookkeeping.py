"""What a coordinator holds, shared by the parts of :class:`~swarmd.core.tasks.Coordinator`:
its tasks (all, and the unfinished ones), the subtasks with an attempt out, the backlog
of ready ones, the finished ones for retention, its counters — and how one call's
changes become journal snapshots (:meth:`Bookkeeping._finish`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from swarmd.core.deadlines import ClassLoad
from swarmd.core.jobspec import SubtaskSpec
from swarmd.core.locality import Bandwidth
from swarmd.core.pricing import PricingConfig, ThroughputTracker
from swarmd.core.queue import Key
from swarmd.core.tasks.backlog import Backlog
from swarmd.core.tasks.effects import Batch, Effect, Journal
from swarmd.core.tasks.finished import FinishedTasks
from swarmd.core.tasks.records import CoordinatorConfig, SubtaskRecord, TaskRecord, UnknownTask


class Bookkeeping:
    def __init__(
        self,
        *,
        node_id: str,
        config: CoordinatorConfig | None = None,
        pricing: PricingConfig | None = None,
        throughput: ThroughputTracker | None = None,
        node_name: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.node_name = node_name or node_id
        self.config = config or CoordinatorConfig()
        self.pricing = pricing or PricingConfig()
        self.throughput = throughput
        self.counters: Counter[str] = Counter()
        self._tasks: dict[str, TaskRecord] = {}
        self._open: dict[str, TaskRecord] = {}  # unfinished tasks
        self._in_flight: dict[Key, SubtaskRecord] = {}  # subtasks with an attempt out
        self._backlog = Backlog(dict(self.config.shares), self.config.patience_s)  # ready subtasks
        self._finished = FinishedTasks()  # finished tasks, in the order they finished
        self.class_load = ClassLoad()  # recent dispatches per class and pool (deadlines)
        # Data locality (swarmd.core.locality): bytes/s measured per peer, and the bytes
        # of input files a subtask's dispatch carries (task id, spec), set by the shell.
        self.bandwidth = Bandwidth()
        self.input_bytes: Callable[[str, SubtaskSpec], int] | None = None

    def _task(self, task_id: str) -> TaskRecord:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise UnknownTask(task_id) from None

    def _find(self, task_id: str, subtask_id: str) -> tuple[TaskRecord, SubtaskRecord] | None:
        task = self._tasks.get(task_id)
        if task is None:
            return None
        rec = task.subtasks.get(subtask_id)
        return None if rec is None else (task, rec)

    def _touch(self, batch: Batch, task: TaskRecord, rec: SubtaskRecord | None = None) -> None:
        if rec is None:
            batch.tasks[task.id] = None
        else:
            batch.subtasks[(task.id, rec.id)] = None

    def _finish(self, batch: Batch) -> list[Effect]:
        """Journal records first (those added directly, then the snapshots of what
        changed), then the other effects in the order they arose."""
        journal: list[Effect] = [
            e for e in batch.effects if isinstance(e, Journal) and self._journaled(e)
        ]
        for task_id in batch.tasks:
            task = self._tasks.get(task_id)
            if task is not None and not task.ephemeral:
                journal.append(Journal("task_state", self._task_state_data(task)))
        for task_id, subtask_id in batch.subtasks:
            task = self._tasks.get(task_id)
            if task is not None and not task.ephemeral:
                journal.append(Journal("subtask", task.subtasks[subtask_id].to_data(task_id)))
        return journal + [e for e in batch.effects if not isinstance(e, Journal)]

    def _journaled(self, record: Journal) -> bool:
        """Whether ``record`` goes to the journal: not for an ephemeral task."""
        task = self._tasks.get(str(record.data.get("task")))
        return task is None or not task.ephemeral

    @staticmethod
    def _task_state_data(task: TaskRecord) -> dict[str, Any]:
        return {
            "task": task.id,
            "state": task.state,
            "finished": task.finished,
            "error": task.error,
        }
