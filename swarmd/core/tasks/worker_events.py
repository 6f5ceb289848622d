"""A worker's messages about an attempt (accepted, progress, refused, result) and a
node's death, applied with fencing: only the current attempt, in flight, on the node it
was sent to, counts; anything else is stale.
"""

from __future__ import annotations

from swarmd.core.tasks.effects import Ack, Batch, CancelAttempt, Effect
from swarmd.core.tasks.lifecycle import Lifecycle
from swarmd.core.tasks.records import REFUSALS_KEPT, Attempt, Result, SubtaskRecord, TaskRecord
from swarmd.core.tasks.transitions import ATTEMPT, IN_FLIGHT, SUBTASK, advance
from swarmd.core.usage import UsageBook

ENGINE_NOTE = "engine:"  # a progress note from an engine attempt (swarmd/executors/engine.py)


class WorkerEvents(Lifecycle):
    usage: UsageBook | None = None  # the llm usage book, fed with every current llm result

    def _live_attempt(
        self, task_id: str, subtask_id: str, attempt: int, node_id: str
    ) -> tuple[TaskRecord, SubtaskRecord, Attempt] | None:
        """The attempt if it is the current one, in flight, on that node; else None."""
        found = self._find(task_id, subtask_id)
        if found is None:
            return None
        task, rec = found
        current = rec.current
        if (
            rec.final
            or current is None
            or current.number != attempt
            or current.node_id != node_id
            or current.state not in IN_FLIGHT
        ):
            return None
        return task, rec, current

    def awaits_result(self, task_id: str, subtask_id: str, attempt: int, node_id: str) -> bool:
        """Whether a result of this attempt from that node would be committed now."""
        return self._live_attempt(task_id, subtask_id, attempt, node_id) is not None

    def _stale(self, task_id: str, subtask_id: str, attempt: int, node_id: str) -> list[Effect]:
        self.counters["stale_messages"] += 1
        return [CancelAttempt(task_id, subtask_id, attempt, node_id)]

    def on_accepted(
        self, task_id: str, subtask_id: str, attempt: int, node_id: str, now: float
    ) -> list[Effect]:
        """The worker took the attempt (it may still queue it): renew the lease."""
        live = self._live_attempt(task_id, subtask_id, attempt, node_id)
        if live is None:
            return self._stale(task_id, subtask_id, attempt, node_id)
        _, rec, current = live
        current.lease_until = now + self.config.lease_s
        current.resend_at = None  # its worker has it
        if current.state == "dispatched":
            # Not journaled: a restarted coordinator treats dispatched and running alike.
            advance(ATTEMPT, current, "accepted")
            advance(SUBTASK, rec, "accepted")
            rec.round = ()
            rec.refused_by.clear()
        return []

    def on_progress(
        self, task_id: str, subtask_id: str, attempt: int, node_id: str, now: float, note: str = ""
    ) -> list[Effect]:
        """A heartbeat for the attempt: renew its lease (counts as accepted). A note
        ``engine: ...`` is what the engine running it says now (``status`` shows it)."""
        effects = self.on_accepted(task_id, subtask_id, attempt, node_id, now)
        if note.startswith(ENGINE_NOTE) and not effects:
            live = self._live_attempt(task_id, subtask_id, attempt, node_id)
            if live is not None:
                live[2].engine_note = note[len(ENGINE_NOTE) :].strip()[:200]
        return effects

    def on_refused(
        self, task_id: str, subtask_id: str, attempt: int, node_id: str, reason: str, now: float
    ) -> list[Effect]:
        """The worker will not take the attempt (full): try the next candidate at once."""
        live = self._live_attempt(task_id, subtask_id, attempt, node_id)
        if live is None or live[2].state != "dispatched":
            self.counters["stale_messages"] += 1
            return []
        task, rec, current = live
        batch = Batch()
        self.counters["refused"] += 1
        rec.refusals += 1
        rec.refusal_notes.append(f"attempt {current.number} refused by {current.peer}: {reason}")
        del rec.refusal_notes[:-REFUSALS_KEPT]
        rec.attempts.pop()  # it never ran; its number stays used
        del self._in_flight[(task.id, rec.id)]
        rec.refused_by.add(node_id)
        rest = tuple(c for c in rec.round if c.node_id not in rec.refused_by)
        if rest:
            self._dispatch(batch, task, rec, "refused", rest[0], None, rest[1:], now)
        else:
            self._requeue(batch, task, rec, "all_refused", now, now + self.config.refused_wait_s)
        self._touch(batch, task, rec)
        return self._finish(batch)

    def on_result(
        self,
        task_id: str,
        subtask_id: str,
        attempt: int,
        node_id: str,
        result: Result,
        now: float,
    ) -> list[Effect]:
        """A worker's result. Committed only for the current attempt, from its node, of
        a subtask that is not final; anything else is counted as stale. Always acked."""
        live = self._live_attempt(task_id, subtask_id, attempt, node_id)
        if live is None:
            self.counters["stale_results"] += 1
            return [Ack(task_id, subtask_id, attempt, node_id, committed=False)]
        task, rec, current = live
        batch = Batch()
        self._observe(rec, current, result)
        self._account(rec, current, result, now)
        if result.ok:
            advance(ATTEMPT, current, "succeeded")
            current.ended = now
            self._end_subtask(batch, task, rec, "commit", None, now, result)
        elif result.worker_error or rec.spec.retry_on_error:
            if result.app_failed:
                self.counters["app_failures"] += 1
            else:
                self.counters["worker_errors"] += 1
            # A worker error is never the subtask's answer; the last app failure may be.
            kept = result if result.app_failed else None
            self._attempt_failed(batch, task, rec, current, "failed", result.describe(), now, kept)
        else:
            self.counters["app_failures"] += 1
            advance(ATTEMPT, current, "failed")
            current.error = result.describe()
            current.ended = now
            self._end_subtask(batch, task, rec, "fail", result.describe(), now, result)
        committed = rec.result is result
        batch.effects.append(Ack(task_id, subtask_id, attempt, node_id, committed=committed))
        return self._finish(batch)

    def _observe(self, rec: SubtaskRecord, attempt: Attempt, result: Result) -> None:
        if self.throughput is None or rec.spec.kind != "llm" or attempt.model is None:
            return
        if result.duration_s is None or not result.ok or not result.usage:
            return
        self.throughput.observe_usage(
            attempt.node_id, attempt.model, result.usage, result.duration_s, result.latency_s
        )

    def _account(self, rec: SubtaskRecord, attempt: Attempt, result: Result, now: float) -> None:
        """The attempt's tokens and cost into the usage book (llm attempts only)."""
        if self.usage is None or rec.spec.kind != "llm" or attempt.model is None:
            return
        client = getattr(rec.spec, "client", None)  # the gateway's API key id, if any
        self.usage.record_result(
            now,
            node=attempt.node_id,
            node_name=attempt.peer,
            profile=attempt.model,
            client=client if isinstance(client, str) and client else None,
            usage=result.usage,
            ok=result.ok,
        )

    def on_peer_dead(self, node_id: str, now: float) -> list[Effect]:
        """The node is dead, left, or restarted: every attempt out on it is lost, but
        for engine jobs (held by the engine, not by the node: a node back within the
        lease follows them again; else the lease lapses)."""
        batch = Batch()
        for rec in list(self._in_flight.values()):
            current = rec.current
            if current is not None and current.node_id == node_id and current.engine is None:
                task = self._tasks[rec.task_id]
                self._attempt_failed(batch, task, rec, current, "lost", "node lost", now)
        return self._finish(batch)
