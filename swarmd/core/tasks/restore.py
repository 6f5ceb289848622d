"""Journal replay: a fresh coordinator rebuilds its tasks from the journal records a
previous one left (the last record per :attr:`Journal.key` wins; "forget" drops a
task), keeps finished work, re-adopts attempts that were out and queues what is ready.

A record it cannot use (a missing key, a wrong type, an unknown state) is returned as
a :class:`Quarantine` effect and the rest is restored: a bad "task" record takes its
task's other records with it (there is no job to restore them into); a bad subtask
record leaves that subtask as submitted (it runs again).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from swarmd.core.jobspec import JobError, parse_job
from swarmd.core.tasks.effects import Batch, Effect, Journal, Quarantine
from swarmd.core.tasks.graph import new_task, render
from swarmd.core.tasks.lifecycle import Lifecycle
from swarmd.core.tasks.records import Attempt, Result, SubtaskRecord, TaskRecord
from swarmd.core.tasks.transitions import IN_FLIGHT, SUBTASK, TASK, advance

_Latest = dict[tuple[str, str, str], Journal]
_BAD = (KeyError, TypeError, ValueError, AttributeError)  # what a bad record raises


def _why(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing key {exc.args[0]!r}" if exc.args else "missing key"
    return f"{type(exc).__name__}: {exc}"


class Restore(Lifecycle):
    def restore(self, records: Iterable[Journal], now: float) -> list[Effect]:
        """Rebuild the tasks from journal records (as persisted, oldest first) on a
        fresh coordinator. Finished work is kept, never re-run; attempts that were out
        keep their numbers and get a lease of ``restore_grace_s`` for their workers to
        report (a result for them is committed as usual); ready subtasks are queued
        again. Records it cannot use are counted (``restore_errors``) and returned as
        :class:`Quarantine` effects, first; then effects for tasks that turn out to be
        finished. Then call ``tick`` and ``schedule`` as usual."""
        if self._tasks:
            raise ValueError("restore needs a coordinator without tasks")
        bad: list[Quarantine] = []
        latest = _latest(records, bad)
        grace = self.config.restore_grace_s
        lease = now + (self.config.lease_s if grace is None else grace)
        self._restore_tasks(latest, bad)
        self._restore_states(latest, lease, now, bad)
        self.counters["restore_errors"] += len(bad)
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
        return [*bad, *self._finish(batch)]

    def _restore_tasks(self, latest: _Latest, bad: list[Quarantine]) -> None:
        """The task records, from their "task" records (the job, as submitted)."""
        for key, record in latest.items():
            if key[0] != "task":
                continue
            data = record.data
            try:
                job = parse_job(data["job"], source=f"task {key[1]}")
                task = new_task(key[1], job, float(data["submitted"]), self.pricing)
                deadline = data.get("deadline")
                task.deadline = None if deadline is None else float(deadline)
                task.epoch = int(data.get("epoch", 1))
                task.coordinators = [dict(c) for c in data.get("coordinators", ())]
            except (JobError, *_BAD) as exc:
                bad.append(Quarantine(key, _why(exc)))
                continue
            self._tasks[task.id] = task

    def _restore_states(
        self, latest: _Latest, lease: float, now: float, bad: list[Quarantine]
    ) -> None:
        """The tasks' and subtasks' last snapshots."""
        for key, record in latest.items():
            owner = self._tasks.get(key[1])
            if key[0] == "task":
                continue
            if owner is None or (key[0] == "subtask" and key[2] not in owner.subtasks):
                bad.append(Quarantine(key, "no task record for it"))
                continue
            data = record.data
            try:
                if key[0] == "task_state":
                    state = TASK.parse(data["state"])
                    owner.finished, owner.error = _opt_float(data, "finished"), data.get("error")
                    owner.state = state  # a snapshot, not a transition
                elif key[0] == "subtask":
                    self._restore_subtask(owner.subtasks[key[2]], data, lease, now)
            except _BAD as exc:
                bad.append(Quarantine(key, _why(exc)))

    def _restore_subtask(
        self, rec: SubtaskRecord, data: Mapping[str, Any], lease: float, now: float
    ) -> None:
        """The subtask's snapshot, all read before any of it is set (a bad one raises
        and leaves the subtask as it was)."""
        state = SUBTASK.parse(data["state"])  # a snapshot, not a transition
        attempt = int(data.get("attempt", 0))
        # Not dispatched again at once: which run (generation) of its worker had it is
        # not journaled, so a worker restarted since could run it a second time.
        attempts = [Attempt.from_data(a, lease) for a in data.get("attempts", ())]
        result = data.get("result")
        reasons = [str(r) for r in data.get("reasons", ())]
        failures, refusals = int(data.get("failures", 0)), int(data.get("refusals", 0))
        not_before = _opt_float(data, "not_before")
        finished = _opt_float(data, "finished")
        rec.result = None if result is None else _result(result)
        rec.state, rec.attempt, rec.attempts, rec.reasons = state, attempt, attempts, reasons
        rec.error = data.get("error")
        rec.failures, rec.refusals = failures, refusals
        rec.not_before = (
            -math.inf if not_before is None else min(not_before, now + self.config.backoff_max_s)
        )
        rec.finished = finished
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


def _result(data: Any) -> Result:
    result = Result.from_data(data)  # AttributeError if not a mapping
    if not isinstance(result.stdout, str) or not isinstance(result.stderr, str):
        raise TypeError("result: stdout and stderr must be text")
    if result.exit_code is not None and not isinstance(result.exit_code, int):
        raise TypeError(f"result: exit code {result.exit_code!r} is not a number")
    return result


def _opt_float(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    return None if value is None else float(value)


def _latest(records: Iterable[Journal], bad: list[Quarantine]) -> _Latest:
    """The last record per key, of the tasks not forgotten since."""
    latest: _Latest = {}
    for record in records:
        try:
            key = record.key
        except _BAD as exc:
            task = record.data.get("task") if isinstance(record.data, Mapping) else None
            bad.append(Quarantine((record.kind, str(task), ""), _why(exc)))
            continue
        if record.kind == "forget":
            latest = {k: v for k, v in latest.items() if k[1] != key[1]}
        elif record.kind not in ("task", "task_state", "subtask"):
            bad.append(Quarantine(key, f"unknown record kind {record.kind!r}"))
        else:
            latest[key] = record
    return latest
