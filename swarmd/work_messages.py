"""The coordinator's side of the work messages: what workers send (refusals,
progress, results, blob chunks), each taken only from the node its attempt went to, and
what the transport could not deliver. A part of :class:`swarmd.work.Coordination`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

import msgspec

from protocol.messages import (
    AttemptResult,
    BlobChunk,
    Dispatch,
    DispatchReply,
    Message,
    Progress,
)

from .artifact_names import check_artifact_names
from .core import tasks as core
from .group_commit import GroupCommit
from .peer_view import LoadReport
from .transfers import Received, Transfers
from .watchers import TaskWatchers


class WorkerMessages:
    # What it uses of :class:`swarmd.work.Coordination`.
    coordinator: core.Coordinator
    clock: Callable[[], float]
    log: logging.Logger
    commits: GroupCommit
    transfers: Transfers
    watchers: TaskWatchers
    reports: dict[str, LoadReport]
    on_dispatch_latency: Callable[[float], None] | None
    _dispatched_at: dict[tuple[str, str, int], float]
    _sent_generation: dict[tuple[str, str, int], int | None]
    _wake: asyncio.Event
    _finished: dict[str, asyncio.Event]
    _flush_due: bool
    _wake_pending: bool

    @property
    def counters(self) -> Counter[str]:
        return self.coordinator.counters

    def run(self, effects: Sequence[core.Effect]) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        raise NotImplementedError

    def _turn_loads(self) -> dict[str, core.NodeLoad]:
        raise NotImplementedError

    def on_message(self, message: Message, sender: str | None = None) -> None:
        """A worker's message; ``sender``: its node as the transport proved it (None:
        not known, e.g. a test). Taken only from the node the attempt went to."""
        now = self.clock()
        c = self.coordinator
        from_workers = DispatchReply | Progress | AttemptResult | BlobChunk
        if isinstance(message, from_workers) and not self._from_worker(message, sender):
            return
        if isinstance(message, DispatchReply):
            node = self._sender_of(message.task, message.subtask, message.attempt)
            if node is None:
                return
            self._reported(node, message.load)
            if message.accepted:  # version 1 workers said so; a start now says it
                self._first_word(message.task, message.subtask, message.attempt)
                self.run(c.on_accepted(message.task, message.subtask, message.attempt, node, now))
            else:
                self._dispatched_at.pop((message.task, message.subtask, message.attempt), None)
                self.run(
                    c.on_refused(
                        message.task, message.subtask, message.attempt, node, message.reason, now
                    )
                )
                self.wake()
        elif isinstance(message, Progress):
            if (message.out or message.err) and message.node == self._sender_of(
                message.task, message.subtask, message.attempt
            ):
                self.watchers.live.take(message)
            self.watchers.changed(message.task)  # it may have started, or said more
            self._reported(message.node, message.load)
            self._first_word(message.task, message.subtask, message.attempt)
            self.run(
                c.on_progress(
                    message.task, message.subtask, message.attempt, message.node, now, message.note
                )
            )
        elif isinstance(message, BlobChunk):
            self.transfers.on_chunk(message, time.monotonic())
        elif isinstance(message, AttemptResult):
            self._reported(message.node, message.load)
            self._first_word(message.task, message.subtask, message.attempt)
            self._on_result(message, now)
            self._sent_generation.pop((message.task, message.subtask, message.attempt), None)
            self.watchers.live.drop(message.task, message.subtask, message.attempt)

    def _from_worker(
        self, m: DispatchReply | Progress | AttemptResult | BlobChunk, sender: str | None
    ) -> bool:
        """Whether ``sender`` is the node attempt ``m`` went to (or it is not known)."""
        node = None if sender is None else self._sender_of(m.task, m.subtask, m.attempt, False)
        if node is None or node == sender:
            return True
        self.counters["wrong_sender"] += 1
        self.log.warning(
            "dropped a %s of %s/%s from %s", type(m).__name__, m.task, m.subtask, sender
        )
        return False

    def _first_word(self, task: str, subtask: str, attempt: int) -> None:
        """Dispatch -> the worker's first word on it (its start, or its result)."""
        sent = self._dispatched_at.pop((task, subtask, attempt), None)
        if sent is not None and self.on_dispatch_latency is not None:
            self.on_dispatch_latency(time.monotonic() - sent)

    def _reported(self, node_id: str, load: int | None) -> None:
        """A worker's own count of attempts it holds, with how many of them were ours."""
        if load is not None:
            ours = self._turn_loads().get(node_id)
            self.reports[node_id] = LoadReport(
                load, 0 if ours is None else ours.slots, time.monotonic()
            )

    def _sender_of(self, task: str, subtask: str, attempt: int, count: bool = True) -> str | None:
        with contextlib.suppress(KeyError):
            rec = self.coordinator.record(task).subtasks[subtask]
            for a in rec.attempts:
                if a.number == attempt:
                    return a.node_id
            current = rec.current
            if current is not None and current.number == attempt:
                return current.node_id
        self.counters["stale_messages"] += count
        return None

    def _on_result(self, m: AttemptResult, now: float, blob: Received | None = None) -> None:
        bad = check_artifact_names(list(m.artifacts)) if m.artifacts else None
        if bad is None and blob is not None and blob.names:
            bad = check_artifact_names(list(blob.names))
        if bad is not None:  # never stored: the attempt fails with the reason
            self.counters["bad_artifact_names"] += 1
            if blob is not None:
                self.transfers.discard(m)
            m = msgspec.structs.replace(m, artifacts={}, blob=None, error=bad, app_failed=False)
            blob = None
        c = self.coordinator
        if blob is None and m.blob and c.awaits_result(m.task, m.subtask, m.attempt, m.node):
            self.transfers.on_head(m, time.monotonic())  # committed once it is here
            return
        usage = m.usage or {}
        result = core.Result(
            exit_code=m.exit_code,
            stdout=m.stdout,
            stderr=m.stderr,
            output=m.output,
            usage=m.usage,
            artifacts=tuple(sorted(m.artifacts)) if blob is None else blob.names,
            error=m.error if blob is None or blob.error is None else blob.error,
            app_failed=m.app_failed if blob is None or blob.error is None else False,
            duration_s=usage.get("seconds"),
            latency_s=usage.get("ttft_s"),
        )
        effects = self.coordinator.on_result(m.task, m.subtask, m.attempt, m.node, result, now)
        committed = any(
            isinstance(e, core.Ack) and e.committed and e.attempt == m.attempt for e in effects
        )
        if committed and m.artifacts:  # in this turn's commit, before its ack
            self.commits.add_artifacts(m.task, m.subtask, m.artifacts)
        if blob is not None and blob.error is None:  # in place before the commit is journaled
            (self.transfers.install if committed else self.transfers.discard)(m)
        if not any(isinstance(e, core.Ack) for e in effects):
            # Unknown task (forgotten) or a duplicate: still let the worker clear it.
            effects.append(core.Ack(m.task, m.subtask, m.attempt, m.node, False))
        self.run(effects)
        self._wake_after_flush()

    def _wake_after_flush(self) -> None:
        """Wake the loop once this turn's commit is out: then a gateway client waiting on
        this result is answered before the loop's pass (expiry, ticks, placement)."""
        if self._flush_due:
            self._wake_pending = True
        else:
            self.wake()

    def _renew(self, m: AttemptResult) -> bool:
        """A result's blob is still coming: renew its attempt's lease (False: over)."""
        if not self.coordinator.awaits_result(m.task, m.subtask, m.attempt, m.node):
            return False
        self.run(self.coordinator.on_progress(m.task, m.subtask, m.attempt, m.node, self.clock()))
        return True

    def _delivered(self, m: AttemptResult, blob: Received) -> None:
        self._on_result(m, self.clock(), blob)

    def on_undelivered(self, messages: Sequence[Message]) -> None:
        """Messages the transport could not send: a dispatch counts as refused."""
        now = self.clock()
        for m in messages:
            if not isinstance(m, Dispatch):
                continue  # results are sent again, acks answer them
            node = self._sender_of(m.task, m.subtask, m.attempt)
            if node is not None:
                self._dispatched_at.pop((m.task, m.subtask, m.attempt), None)
                refused = self.coordinator.on_refused(
                    m.task, m.subtask, m.attempt, node, "not reachable", now
                )
                self.run(refused)
        self.wake()

    def on_peer_gone(self, node_id: str) -> None:
        self.run(self.coordinator.on_peer_dead(node_id, self.clock()))
        self.wake()

    async def wait_finished(self, task_id: str, timeout: float) -> None:
        event = self._finished.setdefault(task_id, asyncio.Event())
        await asyncio.wait_for(event.wait(), timeout)
