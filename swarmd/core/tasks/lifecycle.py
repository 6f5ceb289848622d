"""The life of a subtask, as it happens to the coordinator's books: a subtask becomes
ready and is queued, an attempt is dispatched, an attempt fails (retry or give up), a
subtask settles (releasing or cancelling what depends on it), a task closes or is
stopped. Each step changes the records, the counters and the journal batch together.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from swarmd.core.jobspec import PRIORITY_RANK
from swarmd.core.pricing import Candidate, Placement
from swarmd.core.tasks.bookkeeping import Bookkeeping
from swarmd.core.tasks.effects import Batch, CancelAttempt, Dispatch, TaskFinished
from swarmd.core.tasks.graph import render
from swarmd.core.tasks.records import Attempt, Result, SubtaskRecord, TaskRecord
from swarmd.core.tasks.transitions import ATTEMPT, IN_FLIGHT, SUBTASK, TASK, SubtaskState, advance


class Lifecycle(Bookkeeping):
    def _make_ready(self, batch: Batch, task: TaskRecord, rec: SubtaskRecord, now: float) -> None:
        """Render the subtask from its upstream results and queue it."""
        error = render(task, rec)
        if error is not None:
            self._end_subtask(batch, task, rec, "fail", error, now)
        else:
            self._requeue(batch, task, rec, "release", now, not_before=rec.not_before)

    def _requeue(
        self,
        batch: Batch,
        task: TaskRecord,
        rec: SubtaskRecord,
        event: Literal["release", "all_refused", "retry"],
        now: float,
        not_before: float,
    ) -> None:
        """Ready (again): queued, not before ``not_before``."""
        advance(SUBTASK, rec, event)
        rec.not_before = not_before
        rec.round = ()
        rec.refused_by.clear()
        self._backlog.push(task, rec, now)
        if event != "release" or rec.attempt:
            # A subtask released for the first time is not journaled: restore derives
            # it from the job and its upstream results (a third of the journal writes).
            self._touch(batch, task, rec)

    def _dispatch(
        self,
        batch: Batch,
        task: TaskRecord,
        rec: SubtaskRecord,
        event: Literal["dispatch", "refused"],
        winner: Candidate,
        placement: Placement | None,
        rest: tuple[Candidate, ...],
        now: float,
    ) -> None:
        """A new attempt on ``winner``; ``rest`` are the candidates to fall back on if it
        refuses; ``placement`` is recorded (None: the same one as the last attempt)."""
        assert rec.rendered is not None
        rec.attempt += 1
        attempt = Attempt(
            number=rec.attempt,
            node_id=winner.node_id,
            peer=winner.name,
            model=winner.model,
            engine=winner.engine,
            started=now,
            lease_until=now + self.config.lease_s,
            resend_at=now + self.config.dispatch_resend_s,
        )
        rec.attempts.append(attempt)
        advance(SUBTASK, rec, event)
        rec.round = rest
        if placement is not None:
            rec.placements.append(placement)
        else:
            rec.group = None  # refused by the group's node: it goes on alone
        while len(rec.placements) > max(1, self.config.placements_kept):
            rec.placements.popleft()
        self._in_flight[(task.id, rec.id)] = rec
        self.counters["dispatched"] += 1
        rank = PRIORITY_RANK.get(rec.spec.priority, PRIORITY_RANK["normal"])
        model = winner.model if rec.spec.kind == "llm" else None
        run_s = winner.rtt_s + (winner.run_s or 0.0)
        self.class_load.started(rank, winner.node_id, model, run_s, now)
        if rec.retrying:
            rec.retrying = False
            self.counters["redispatched"] += 1
        if task.state == "pending":
            advance(TASK, task, "start")
            self._touch(batch, task)
        self._touch(batch, task, rec)
        batch.effects.append(self._dispatch_effect(task, rec, attempt))

    def _dispatch_effect(self, task: TaskRecord, rec: SubtaskRecord, attempt: Attempt) -> Dispatch:
        assert rec.rendered is not None
        spec = rec.rendered
        if attempt.engine is not None and spec.engine != attempt.engine:
            spec = replace(spec, engine=attempt.engine)  # pricing chose the peer's engine
        return Dispatch(
            task_id=task.id,
            subtask_id=rec.id,
            attempt=attempt.number,
            node_id=attempt.node_id,
            spec=spec,
            lease_s=self.config.lease_s,
            model=attempt.model,
            upstream=rec.upstream,
            epoch=task.epoch,
        )

    def _attempt_failed(
        self,
        batch: Batch,
        task: TaskRecord,
        rec: SubtaskRecord,
        attempt: Attempt,
        event: Literal["lost", "failed"],
        reason: str,
        now: float,
        result: Result | None = None,
    ) -> None:
        """A node failure (or a retried app failure): retry after a backoff or give up."""
        state = advance(ATTEMPT, attempt, event)
        attempt.error = reason
        attempt.ended = now
        self._in_flight.pop((task.id, rec.id), None)
        if state == "lost":
            self.counters["lost"] += 1
        rec.failures += 1
        rec.reasons.append(f"attempt {attempt.number} on {attempt.peer}: {reason}")
        self._touch(batch, task, rec)
        if rec.failures <= rec.spec.retries:
            self.counters["retries"] += 1
            rec.retrying = True
            # A peer lost with the attempt is not the subtask's fault and that peer is
            # now excluded: the first such retry goes at once. Every later one backs off.
            first_loss = state == "lost" and rec.failures == 1
            delay = 0.0 if first_loss else self.config.backoff(rec.failures)
            self._requeue(batch, task, rec, "retry", now, now + delay)
            return
        self.counters["retries_exhausted"] += 1
        tries = len(rec.attempts)
        error = f"gave up after {tries} attempt{'s' if tries != 1 else ''}: " + "; ".join(
            rec.reasons
        )
        self._end_subtask(batch, task, rec, "fail", error, now, result)

    def _end_subtask(
        self,
        batch: Batch,
        task: TaskRecord,
        rec: SubtaskRecord,
        event: Literal["commit", "fail"],
        error: str | None,
        now: float,
        result: Result | None = None,
    ) -> None:
        """The subtask is final: release what waited on it, or cancel all that depends
        on it; the task may be over."""
        if result is not None:
            rec.result = result
            self.counters["committed"] += 1
        state = self._settle(batch, task, rec, event, error, now)
        if state == "done":
            for sid in task.dependants[rec.id]:
                child = task.subtasks[sid]
                if child.state == "waiting" and all(
                    task.subtasks[d].state == "done" for d in child.spec.after
                ):
                    self._make_ready(batch, task, child, now)
        else:
            why = f'upstream "{rec.id}" {state}'
            stack = list(task.dependants[rec.id])
            while stack:
                child = task.subtasks[stack.pop()]
                if not child.final:
                    self._settle(batch, task, child, "cancel", why, now)
                    stack.extend(task.dependants[child.id])
        self._check_task(batch, task, now)

    def _settle(
        self,
        batch: Batch,
        task: TaskRecord,
        rec: SubtaskRecord,
        event: Literal["commit", "fail", "cancel"],
        error: str | None,
        now: float,
    ) -> SubtaskState:
        """The subtask is final: out of the queue and the in-flight set."""
        state = advance(SUBTASK, rec, event)
        task.remaining -= 1
        rec.error = error
        rec.finished = now
        rec.round = ()
        rec.refused_by.clear()
        key = (task.id, rec.id)
        self._backlog.drop(key)
        self._in_flight.pop(key, None)
        self._touch(batch, task, rec)
        return state

    def _check_task(self, batch: Batch, task: TaskRecord, now: float) -> None:
        if task.final or task.remaining > 0:
            return
        done = all(r.state == "done" for r in task.subtasks.values())
        self._close_task(batch, task, "complete" if done else "fail", now)

    def _close_task(
        self,
        batch: Batch,
        task: TaskRecord,
        event: Literal["complete", "fail", "cancel"],
        now: float,
    ) -> None:
        state = advance(TASK, task, event)
        task.finished = now
        self._open.pop(task.id, None)
        self._finished.add(task, now)
        self.counters[f"tasks_{state}"] += 1
        self._touch(batch, task)
        batch.effects.append(TaskFinished(task.id, state))

    def _stop_task(
        self,
        batch: Batch,
        task: TaskRecord,
        event: Literal["fail", "cancel"],
        why: str,
        now: float,
    ) -> None:
        """End every unfinished subtask (cancelling attempts out), then the task."""
        for rec in task.subtasks.values():
            if rec.final:
                continue
            current = rec.current
            if current is not None and current.state in IN_FLIGHT:
                advance(ATTEMPT, current, "cancel")
                current.error = why
                current.ended = now
                self.counters["cancelled_attempts"] += 1
                batch.effects.append(
                    CancelAttempt(task.id, rec.id, current.number, current.node_id)
                )
            # Deadline: what had started or was ready failed; what still waited is cancelled.
            failed = event == "fail" and rec.state != "waiting"
            self._settle(batch, task, rec, "fail" if failed else "cancel", why, now)
        task.error = why
        self._close_task(batch, task, event, now)
