"""The :class:`Coordinator`: the task state machine of one coordinating node, put
together from its parts (one concern each) and the calls that start and end a task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from swarmd.core.jobspec import JobSpec, job_to_data
from swarmd.core.tasks.adoption import Adoption
from swarmd.core.tasks.effects import Batch, Effect, Journal
from swarmd.core.tasks.graph import new_task
from swarmd.core.tasks.scheduler import Scheduler
from swarmd.core.tasks.timeouts import Timeouts
from swarmd.core.tasks.views import Views
from swarmd.core.tasks.worker_events import WorkerEvents


class Coordinator(Scheduler, WorkerEvents, Timeouts, Adoption, Views):
    """The task state machine of one coordinating node.

    The shell calls:

    * :meth:`submit` for a parsed job (after submit-time validation);
    * :meth:`schedule` with the live peer view after anything that may free or need a
      placement (submit, result, refusal, peer change) and on a timer;
    * :meth:`tick` on a timer (``next_wakeup`` says when it is next due) — leases,
      deadlines;
    * ``on_accepted`` / ``on_refused`` / ``on_progress`` / ``on_result`` for the
      worker's messages, :meth:`on_peer_dead` when membership declares a node dead or
      left, or sees it restart with a new generation (it forgot its attempts);
    * :meth:`cancel`, :meth:`status`, :meth:`result`, :meth:`explain`, :meth:`tasks`
      for the control API;
    * :meth:`restore` once, on a fresh coordinator, with the journal a previous one left;
    * :meth:`adopt` with a dead coordinator's replica (its successor takes its tasks
      over), :meth:`relinquish` for a task a successor took over from this one;
    * :meth:`expire` for retention.

    Every call returns effects; persist the :class:`Journal` records first (they come
    first in the list), then send the rest.
    """

    def submit(
        self,
        task_id: str,
        job: JobSpec,
        now: float,
        data: Mapping[str, Any] | None = None,
        *,
        ephemeral: bool = False,
    ) -> list[Effect]:
        """Accept a validated job as task ``task_id``. ValueError if the id is taken,
        JobError if the graph is broken (unknown ``after``, cycle). ``data`` is the job
        as it was parsed from, if the caller has it (journaled as it is, else the job is
        written out again). An ``ephemeral`` task is never journaled (nothing of it
        survives a restart; its effects need no commit first)."""
        if task_id in self._tasks:
            raise ValueError(f"task {task_id!r} exists already")
        task = new_task(task_id, job, now, self.pricing)
        task.ephemeral = ephemeral
        task.coordinators = [
            {"node": self.node_id, "name": self.node_name, "epoch": 1, "since": now}
        ]
        self._tasks[task_id] = task
        self._open[task_id] = task
        batch = Batch()
        batch.effects.append(
            Journal(
                "task",
                {
                    "task": task_id,
                    "job": job_to_data(job) if data is None else data,
                    "submitted": now,
                    "deadline": task.deadline,
                    "epoch": task.epoch,
                    "coordinators": task.coordinators,
                },
            )
        )
        self._touch(batch, task)
        self.counters["submitted"] += 1
        for rec in task.subtasks.values():
            if not rec.spec.after:
                self._make_ready(batch, task, rec, now)
        self._check_task(batch, task, now)
        return self._finish(batch)

    def cancel(self, task_id: str, now: float) -> list[Effect]:
        """Cancel a task: CancelAttempt for attempts out, every unfinished subtask
        cancelled. No effect on a finished task. UnknownTask if there is no such task."""
        task = self._task(task_id)
        if task.final:
            return []
        batch = Batch()
        self._stop_task(batch, task, "cancel", "cancelled", now)
        return self._finish(batch)

    def forget(self, task_id: str) -> list[Effect]:
        """Drop a finished task from memory (and, through the journal, from disk)."""
        task = self._task(task_id)
        if not task.final:
            raise ValueError(f"task {task_id!r} is still {task.state}")
        del self._tasks[task_id]
        self._finished.discard(task_id)
        return [] if task.ephemeral else [Journal("forget", {"task": task_id})]

    def shed(self, task_id: str) -> None:
        """An ephemeral task answered to its client: its request body and answer go
        (they may be megabytes, kept by retention like any finished task); its states,
        attempts and placements stay for ``explain`` and the dashboard."""
        task = self._tasks.get(task_id)
        if task is None or not task.ephemeral or not task.final:
            return
        for rec in task.subtasks.values():
            rec.spec = replace(rec.spec, request=None)
            if rec.rendered is not None:
                rec.rendered = replace(rec.rendered, request=None)
            if rec.result is not None:
                rec.result = replace(rec.result, output=None, stdout="", stderr="")
        task.spec = replace(task.spec, subtasks=tuple(r.spec for r in task.subtasks.values()))
        self.counters["shed"] += 1

    def discard(self, task_id: str) -> None:
        """Drop a task just submitted whose records could not be journaled, as if it
        never was (none of its effects may have been carried out)."""
        task = self._tasks.pop(task_id, None)
        if task is None:
            return
        self._open.pop(task_id, None)
        self._finished.discard(task_id)
        for subtask_id in task.subtasks:
            self._in_flight.pop((task_id, subtask_id), None)
            if (task_id, subtask_id) in self._backlog:
                self._backlog.drop((task_id, subtask_id))
        self.counters["submitted"] -= 1
        self.counters["discarded"] += 1

    def finished_count(self) -> tuple[int, int]:
        """How many finished tasks, and subtasks in them, are held (cheap: call it
        every loop turn)."""
        return self._finished.count()

    def expire(self, now: float) -> list[Effect]:
        """Forget one bounded batch of the finished tasks ``config.retention`` lets go,
        oldest first (:func:`swarmd.core.retention.to_forget`): a "forget" Journal
        record each, which also deletes their rows, inputs and artifacts from disk.
        Call it every ``retention.interval_s`` and whenever ``retention.over_cap``
        (``*finished_count()``) — again at once if it returned anything."""
        gone = self._finished.to_forget(now, self.config.retention)
        effects: list[Effect] = []
        for task_id in gone:
            effects += self.forget(task_id)
        self.counters["forgotten"] += len(gone)
        return effects
