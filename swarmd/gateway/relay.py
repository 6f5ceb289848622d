"""The coordinator's side of a gateway request: the answer's chunks from the worker
(``stream_chunk``) handed to the HTTP response that waits for them, and the task's
end (or its failure) told to it.

A :class:`Pending` request takes the chunks of one attempt at a time, in ``seq``
order, from the node that attempt went to (the coordinator's fencing: anything else
is stale and dropped). While the HTTP side has not taken a chunk, a failed attempt
is invisible: the coordinator retries the subtask elsewhere and the next attempt's
chunks start over. Once a chunk went to the client, the attempt can no longer be
replaced: if it stops being the task's current attempt in flight (its node died, its
endpoint failed, its lease lapsed), or a chunk is missing, the request ends with an
error and the task is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from protocol.messages import StreamChunk

from ..core import tasks as core
from ..core.jobspec import SINGLE_SUBTASK_ID

MAX_PENDING: Final = 4096  # gateway requests one node coordinates at once (then 429)
MAX_BUFFERED_BYTES: Final = 32 * 1024 * 1024  # chunks waiting for a slow client


@dataclass(frozen=True, slots=True)
class Event:
    kind: Literal["chunk", "end", "error", "gone"]  # gone: the HTTP client hung up
    data: bytes = b""
    message: str = ""


@dataclass
class Pending:
    """One gateway request waiting for its answer."""

    task_id: str
    attempt: int | None = None  # whose chunks are being taken
    node: str | None = None  # that attempt's node id
    next_seq: int = 0
    taken: bool = False  # a chunk went to the HTTP side: no failover from here on
    buffered: int = 0
    closed: bool = False
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)

    def put(self, event: Event) -> None:
        if self.closed:
            return
        if event.kind != "chunk":
            self.closed = True
        self.buffered += len(event.data)
        self.events.put_nowait(event)

    async def next(self) -> Event:
        event = await self.events.get()
        self.buffered -= len(event.data)
        if event.kind == "chunk":
            self.taken = True
        return event

    def restart(self, attempt: int, node: str) -> None:
        """Chunks of a new attempt: what an earlier one sent never left (not taken)."""
        while not self.events.empty():
            self.events.get_nowait()
        self.attempt, self.node, self.next_seq, self.buffered = attempt, node, 0, 0


class Relay:
    def __init__(
        self,
        coordinator: core.Coordinator,
        cancel: Callable[[str], None],
        counters: Counter[str],
        log: logging.Logger,
    ) -> None:
        self.coordinator = coordinator
        self.cancel = cancel  # cancel a task (the coordination's effects carried out)
        self.counters = counters
        self.log = log
        self.pending: dict[str, Pending] = {}

    def open(self, task_id: str) -> Pending:
        pending = self.pending[task_id] = Pending(task_id)
        self.changed(task_id)  # it may have ended already (an input error)
        return pending

    def close(self, task_id: str) -> None:
        """The HTTP side is done (answered, or its client went): a task still running
        is cancelled, so its worker drops the upstream request."""
        pending = self.pending.pop(task_id, None)
        if pending is None:
            return
        pending.closed = True
        try:
            final = self.coordinator.record(task_id).final
        except core.UnknownTask:
            return
        if not final:
            self.counters["gateway_cancelled"] += 1
            self.cancel(task_id)

    def client_gone(self, task_id: str) -> None:
        """The HTTP client of ``task_id`` hung up: its waiting side hears it."""
        pending = self.pending.get(task_id)
        if pending is not None:
            pending.put(Event("gone"))

    def full(self) -> bool:
        return len(self.pending) >= MAX_PENDING

    def on_chunk(self, m: StreamChunk) -> None:
        pending = self.pending.get(m.task)
        if pending is None or pending.closed:
            self.counters["gateway_chunks_unclaimed"] += 1
            return
        if not self.coordinator.awaits_result(m.task, m.subtask, m.attempt, m.node):
            self.counters["gateway_chunks_stale"] += 1
            return
        if pending.attempt != m.attempt:
            if pending.taken:  # replaced after bytes went out: changed() ends it
                return
            pending.restart(m.attempt, m.node)
        if m.seq != pending.next_seq:
            self.counters["gateway_chunks_gap"] += 1
            self._fail(pending, f"the answer's chunk {pending.next_seq} was lost on the way")
            return
        pending.next_seq += 1
        if pending.buffered + len(m.data) > MAX_BUFFERED_BYTES:
            self._fail(pending, "the client reads the answer too slowly")
            return
        self.counters["gateway_chunks"] += 1
        pending.put(Event("chunk", m.data))

    def changed(self, task_id: str) -> None:
        """The coordinator changed the task: it ended, or the streaming attempt went."""
        pending = self.pending.get(task_id)
        if pending is None or pending.closed:
            return
        try:
            task = self.coordinator.record(task_id)
        except core.UnknownTask:
            self._fail(pending, "the request was forgotten")
            return
        if task.final:
            pending.put(Event("end"))
            return
        if not pending.taken:
            return
        rec = task.subtasks[SINGLE_SUBTASK_ID]
        current = rec.current
        if (
            current is None
            or current.number != pending.attempt
            or current.state not in core.IN_FLIGHT
        ):
            reason = rec.reasons[-1] if rec.reasons else "the serving node stopped answering"
            self._fail(pending, f"the answer broke off: {reason}")

    def _fail(self, pending: Pending, message: str) -> None:
        self.counters["gateway_broken_streams"] += 1
        self.log.info("gateway request %s: %s", pending.task_id, message)
        pending.put(Event("error", message=message))
        self.close(pending.task_id)
