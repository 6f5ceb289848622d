"""Journal replay: a fresh coordinator rebuilds its tasks from the journal records a
previous one left (the last record per :attr:`Journal.key` wins; "forget" drops a
task), keeps finished work, re-adopts attempts that were out and queues what is ready.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from swarmd.core.jobspec import JobError, parse_job
from swarmd.core.tasks.effects import Batch, Effect, Journal
from swarmd.core.tasks.graph import new_task, render
from swarmd.core.tasks.lifecycle import Lifecycle
from swarmd.core.tasks.records import Attempt, Result, SubtaskRecord, TaskRecord
from swarmd.core.tasks.transitions import IN_FLIGHT, SUBTASK, TASK, advance

_Latest = dict[tuple[str, str, str], Journal]


class Restore(Lifecycle):
    def restore(self, records: Iterable[Journal], now: float) -> list[Effect]:
        """Rebuild the tasks from journal records (as persisted, oldest first) on a
        fresh coordinator. Finished work is kept, never re-run; attempts that were out
        keep their numbers and get a lease of ``restore_grace_s`` for their workers to
        report (a result for them is committed as usual); ready subtasks are queued
        again. Tasks whose job no longer parses are skipped and counted
        (``restore_errors``). Returns effects for tasks that turn out to be finished.
        Then call ``tick`` and ``schedule`` as usual."""
        if self._tasks:
            raise ValueError("restore needs a coordinator without tasks")
        latest = _latest(records)
        grace = self.config.restore_grace_s
        lease = now + (self.config.lease_s if grace is None else grace)
        self._restore_tasks(latest)
        self._restore_states(latest, lease, now)
        batch = Batch()
        restored = {
            (t.id, r.id): r.state for t in self._tasks.values() for r in t.subtasks.values()
        }
        for task in self._tasks.values():
            self._resume(batch, task, now)
        self.counters["restored_tasks"] += len(self._tasks)
        self._finished.reset(self._tasks.values())
        # Re-queueing is not news; journal only what changed (a template that no longer
        # renders, a task that turns out to be finished).
        batch.subtasks = {
            key: None
            for key in batch.subtasks
            if self._tasks[key[0]].subtasks[key[1]].state != restored[key]
        }
        return self._finish(batch)

    def _restore_tasks(self, latest: _Latest) -> None:
        """The task records, from their "task" records (the job, as submitted)."""
        for key, record in latest.items():
            if key[0] != "task":
                continue
            data = record.data
            try:
                job = parse_job(data["job"], source=f"task {key[1]}")
                task = new_task(key[1], job, float(data["submitted"]), self.pricing)
            except (JobError, KeyError, TypeError, ValueError):
                self.counters["restore_errors"] += 1
                continue
            deadline = data.get("deadline")
            task.deadline = None if deadline is None else float(deadline)
            self._tasks[task.id] = task

    def _restore_states(self, latest: _Latest, lease: float, now: float) -> None:
        """The tasks' and subtasks' last snapshots."""
        for key, record in latest.items():
            owner = self._tasks.get(key[1])
            if owner is None:
                continue
            data = record.data
            if key[0] == "task_state":
                owner.state = TASK.parse(data["state"])  # a snapshot, not a transition
                owner.finished = data.get("finished")
                owner.error = data.get("error")
            elif key[0] == "subtask" and key[2] in owner.subtasks:
                self._restore_subtask(owner.subtasks[key[2]], data, lease, now)

    def _restore_subtask(
        self, rec: SubtaskRecord, data: Mapping[str, Any], lease: float, now: float
    ) -> None:
        rec.state = SUBTASK.parse(data["state"])  # a snapshot, not a transition
        rec.attempt = int(data.get("attempt", 0))
        # Not dispatched again at once: which run (generation) of its worker had it is
        # not journaled, so a worker restarted since could run it a second time.
        rec.attempts = [Attempt.from_data(a, lease) for a in data.get("attempts", ())]
        result = data.get("result")
        rec.result = None if result is None else Result.from_data(result)
        rec.reasons = list(data.get("reasons", ()))
        rec.error = data.get("error")
        rec.failures = int(data.get("failures", 0))
        rec.refusals = int(data.get("refusals", 0))
        not_before = data.get("not_before")
        rec.not_before = (
            -math.inf
            if not_before is None
            else min(float(not_before), now + self.config.backoff_max_s)
        )
        rec.finished = data.get("finished")
        current = rec.current
        if rec.state in IN_FLIGHT and (current is None or current.state not in IN_FLIGHT):
            advance(SUBTASK, rec, "orphaned")  # inconsistent record: place it again

    def _resume(self, batch: Batch, task: TaskRecord, now: float) -> None:
        """An unfinished task goes on: attempts out are in flight again, what is ready
        is queued; it may turn out to be finished."""
        task.remaining = sum(not r.final for r in task.subtasks.values())
        if task.final:
            return
        self._open[task.id] = task
        for rec in task.subtasks.values():
            if rec.state in IN_FLIGHT:
                self._in_flight[(task.id, rec.id)] = rec
                render(task, rec)  # for a retry, should this attempt be lost
            elif rec.state in ("waiting", "ready"):
                ready = all(task.subtasks[d].state == "done" for d in rec.spec.after)
                if ready:
                    self._make_ready(batch, task, rec, now)
                elif rec.state == "ready":
                    advance(SUBTASK, rec, "hold")
        self._check_task(batch, task, now)


def _latest(records: Iterable[Journal]) -> _Latest:
    """The last record per key, of the tasks not forgotten since."""
    latest: _Latest = {}
    for record in records:
        if record.kind == "forget":
            task_id = str(record.data["task"])
            latest = {k: v for k, v in latest.items() if k[1] != task_id}
        else:
            latest[record.key] = record
    return latest
