"""A running coordinator takes over tasks another one coordinated (their successor
adopts them, :mod:`swarmd.core.succession`), or gives up tasks a successor adopted.

:meth:`Adoption.adopt` is :meth:`~swarmd.core.tasks.restore.Restore.restore` for a
coordinator that already has tasks: the replica's records (the dead coordinator's
journal snapshots) rebuild each task, its coordinator epoch goes up by one and this
node is added to its coordinator history; attempts that were out are in flight again
(their workers are told, by the shell, to report here) with a lease of
``adopt_grace_s``; everything is journaled here as this node's own task.

:meth:`Adoption.relinquish` drops a task a newer epoch of which is coordinated
elsewhere: nothing is sent (its attempts belong to the new coordinator now).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from swarmd.core.tasks.effects import Batch, Effect, Journal, Quarantine
from swarmd.core.tasks.restore import Restore, _latest
from swarmd.core.tasks.transitions import IN_FLIGHT


class Adoption(Restore):
    def adopt(self, records: Iterable[Journal], now: float) -> list[Effect]:
        """Take over the tasks of ``records`` (a replica: the last snapshot per key
        wins) with a coordinator epoch one above theirs. A task this coordinator has
        already is left as it is. Returns the journal records (all of each adopted
        task: it is this node's from now on), Quarantine for records it cannot use,
        then the effects of resuming them."""
        bad: list[Quarantine] = []
        latest = _latest(records, bad)
        latest = {k: v for k, v in latest.items() if k[1] not in self._tasks}
        before = set(self._tasks)
        # Workers holding an attempt hear of the adoption at once and report (which
        # renews its lease); one nobody holds (its dispatch never arrived, its worker
        # restarted) is lost after this and goes out again as a new attempt.
        lease = now + self.config.adopt_grace_s
        self._restore_tasks(latest, bad)
        self._restore_states(latest, lease, now, bad)
        self.counters["restore_errors"] += len(bad)
        batch = Batch()
        for task_id in [t for t in self._tasks if t not in before]:
            task = self._tasks[task_id]
            task.epoch += 1
            task.coordinators.append(
                {"node": self.node_id, "name": self.node_name, "epoch": task.epoch, "since": now}
            )
            data: dict[str, Any] = dict(latest[("task", task_id, "")].data)
            data.update(epoch=task.epoch, coordinators=[dict(c) for c in task.coordinators])
            batch.effects.append(Journal("task", data))
            self._touch(batch, task)
            for rec in task.subtasks.values():
                self._touch(batch, task, rec)
            self._resume(batch, task, now)
            if task.final:
                self._finished.add(task, task.submitted if task.finished is None else task.finished)
            self.counters["adopted_tasks"] += 1
        return [*bad, *self._finish(batch)]

    def workers_of(self, task_id: str) -> set[str]:
        """The nodes holding an attempt of this task that is still out."""
        task = self._tasks.get(task_id)
        if task is None:
            return set()
        return {
            rec.current.node_id
            for rec in task.subtasks.values()
            if rec.state in IN_FLIGHT and rec.current is not None
        }

    def epoch_of(self, task_id: str) -> int | None:
        task = self._tasks.get(task_id)
        return None if task is None else task.epoch

    def relinquish(self, task_id: str) -> list[Effect]:
        """A newer epoch of this task is coordinated elsewhere: forget it here (its
        journal rows too), without a word to its workers."""
        task = self._tasks.pop(task_id, None)
        if task is None:
            return []
        self._open.pop(task_id, None)
        self._finished.discard(task_id)
        for subtask_id in task.subtasks:
            self._in_flight.pop((task_id, subtask_id), None)
            if (task_id, subtask_id) in self._backlog:
                self._backlog.drop((task_id, subtask_id))
        self.counters["relinquished_tasks"] += 1
        return [Journal("forget", {"task": task_id})]
