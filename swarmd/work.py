"""Tasks in the asyncio shell: this node as coordinator, and this node as worker.

The coordinator side drives :class:`swarmd.core.tasks.Coordinator` (sans-I/O) and
executes its effects in order: journal records in one SQLite transaction first, then
the messages (dispatch, cancel, result acknowledgements). The worker side accepts or
refuses dispatches by free slots, runs the executor, reports progress well within
the lease, and keeps each finished result in its SQLite outbox, re-sending it until
the coordinator acknowledges it — across its own restarts too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from protocol.messages import (
    AttemptResult,
    BlobChunk,
    CancelAttempt,
    Dispatch,
    DispatchReply,
    Message,
    NodeRef,
    Progress,
    ResultAck,
)

from .artifact_names import check_artifact_names
from .core import tasks as core
from .core import template
from .core.jobspec import JobSpec
from .core.pricing import PeerCapacity, PricingConfig, ThroughputTracker
from .dispatch_files import dispatch_files, spec_to_wire
from .group_commit import GroupCommit
from .journal_health import JournalHealth
from .journal_open import quarantine
from .peer_view import LoadReport
from .store import Store
from .transfers import Received, Transfers
from .watchers import TaskWatchers

Send = Callable[[str, Message], bool]  # (node address, message) -> queued?


class Clock:
    """Wall-clock seconds that never go backwards: epoch at start + monotonic since.

    Journaled times stay meaningful across restarts (epoch seconds), and a clock
    step while running cannot expire every lease at once.
    """

    def __init__(self) -> None:
        self._wall0, self._mono0 = time.time(), time.monotonic()

    def __call__(self) -> float:
        return self._wall0 + time.monotonic() - self._mono0


# ---------------------------------------------------------------- coordinator side


SENT_KEPT = 65536  # attempts whose first dispatch's worker generation is remembered


class Coordination:
    def __init__(
        self,
        *,
        node_id: str,
        node_name: str,
        store: Store,
        send: Send,
        address_of: Callable[[str], str | None],
        generation_of: Callable[[str], int | None] = lambda _node_id: None,
        peers: Callable[[dict[str, core.NodeLoad]], Sequence[PeerCapacity]],
        me: Callable[[], NodeRef],
        clock: Clock,
        log: logging.Logger,
        config: core.CoordinatorConfig | None = None,
        health: JournalHealth | None = None,
    ) -> None:
        self.node_id = node_id
        self.me = me  # who we are on the wire (the dispatch's coordinator)
        self.store = store
        self.send = send
        self.address_of = address_of
        self.generation_of = generation_of
        # Each attempt's worker generation when first sent: a dispatch sent again names
        # it, so a worker that restarted since refuses instead of running it twice.
        self._sent_generation: dict[tuple[str, str, int], int | None] = {}
        self.peers = peers
        self.clock = clock
        self.log = log
        self.coordinator = core.Coordinator(
            node_id=node_id,
            node_name=node_name,
            config=config or core.CoordinatorConfig(),
            # A worker holds shell/python subtasks up to its gossiped queue_max beyond its
            # slots (pricing reads it per peer); a full model profile or a peer that
            # gossips no queue_max refuses, so it is not a candidate at all.
            pricing=PricingConfig(max_queue=0),
            # The requests this coordinator sent, measured: pricing reads these first.
            throughput=ThroughputTracker(),
        )
        self._inputs: dict[str, dict[str, bytes]] = {}
        self._usage_flush: asyncio.TimerHandle | None = None
        self._wake_pending = False  # wake the loop at the end of the next flush
        self._finished: dict[str, asyncio.Event] = {}
        self._wake = asyncio.Event()
        # Each turn's effects: journaled together, then carried out (flush()).
        self.health = health or JournalHealth(store.path.parent, log)
        self.commits = GroupCommit(store, self.health)
        self._loads: dict[str, core.NodeLoad] | None = None  # this turn's, for _reported
        self._flush_due = False
        self.reports: dict[str, LoadReport] = {}  # node id -> the latest load it reported
        self.watchers = TaskWatchers(self.coordinator)  # clients told of changes
        # Metrics: seconds from sending a Dispatch to its "accepted" (None: not measured).
        self.on_dispatch_latency: Callable[[float], None] | None = None
        self._dispatched_at: dict[tuple[str, str, int], float] = {}
        # Results whose artifacts come in chunks, fetched before they are committed.
        self.transfers = Transfers(
            store.path.parent, self._to, self._renew, self._delivered, self.counters, log
        )

    @property
    def counters(self) -> Counter[str]:
        return self.coordinator.counters

    @property
    def journal_writes(self) -> int:
        return self.commits.records_written

    def has_task(self, task_id: str) -> bool:
        """Whether this node answers for ``task_id`` (other nodes forward to it, see
        :mod:`swarmd.forwarding`): a task it coordinates, running or finished."""
        try:
            self.coordinator.record(task_id)
        except core.UnknownTask:
            return False
        return True

    def restore(self) -> int:
        records = [core.Journal(kind, data) for kind, data in self.store.journal()]
        effects = self.coordinator.restore(records, self.clock()) if records else []
        self.run(quarantine(self.store, effects, self.log))  # records restore could not use
        count = len(self.coordinator.task_ids())
        if not count:
            return 0
        self.log.info("resumed %d task(s) from the journal", count)
        self.wake()
        return count

    def new_task_id(self) -> str:
        return f"{self.node_id[:6]}-{secrets.token_hex(5)}"

    def submit(
        self,
        job: JobSpec,
        files: Mapping[str, bytes],
        data: Mapping[str, Any] | None = None,
        *,
        ephemeral: bool = False,
    ) -> str:
        """Coordinate ``job`` (parsed from ``data``, if given: journaled as it came).
        JournalUnavailable if it cannot be journaled (then it is not taken at all).
        ``ephemeral``: not journaled at all (a gateway request, see
        :attr:`swarmd.core.tasks.records.TaskRecord.ephemeral`)."""
        self.health.refuse_if_failing()
        task_id = self.new_task_id()
        if files:
            self.commits.put_inputs(task_id, files)
            self._inputs[task_id] = dict(files)
        self.run(self.coordinator.submit(task_id, job, self.clock(), data, ephemeral=ephemeral))
        self.place()  # at once, not on the loop's next turn
        self.flush()  # journaled before the caller hears of the task
        if not self.commits.durable(task_id):  # the commit failed: as if never submitted
            self.commits.drop_task(task_id)
            self.coordinator.discard(task_id)
            self._inputs.pop(task_id, None)
            self.health.refuse_if_failing()
        # Per task at debug: thousands a second at info would flood the log (journald
        # drops a service's messages past 10,000 in 30 s by default).
        self.log.debug("task %s (%s): %d subtask(s)", task_id, job.name, len(job.subtasks))
        return task_id

    def wake(self) -> None:
        self._wake.set()

    def place(self) -> None:
        """One scheduling pass over the ready queue, with the live peer view (none while
        the journal cannot be written: nothing new goes out)."""
        if self.commits.failing or not self.coordinator.ready_count():
            return  # (building the peer view costs more than a pass with nothing to do)
        now = self.clock()
        loads = self.coordinator.load_by_node()
        self.run(self.coordinator.schedule(self.peers(loads), now))

    async def loop(self) -> None:
        """Price ready work and expire leases; wake early on news."""
        while True:
            now = self.clock()
            self._expire(now)
            self.transfers.tick(time.monotonic())
            self.run(self.coordinator.tick(now))
            self.place()
            if self.commits.failing:
                self.flush()  # try the commit again (every RETRY_S)
            wakeup = self.coordinator.next_wakeup(self.clock())
            delay = 0.5 if wakeup is None else min(0.5, max(0.01, wakeup - self.clock()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def run(self, effects: Sequence[core.Effect]) -> None:
        """Journal first, then messages: both are held until the end of this turn of the
        event loop, then the turn's journal records go in one transaction (a group
        commit) and its messages after them."""
        if not effects:
            return
        self.commits.add(effects)
        if not self._flush_due:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (a tool or a test): carry them out now
                self.flush()
                return
            self._flush_due = True
            loop.call_soon(self.flush)

    def _turn_loads(self) -> dict[str, core.NodeLoad]:
        """Our attempts in flight per node, counted once per turn of the event loop."""
        if self._loads is not None:
            return self._loads
        loads = self.coordinator.load_by_node()
        with contextlib.suppress(RuntimeError):  # no loop (a tool or a test): no caching
            asyncio.get_running_loop().call_soon(self._forget_loads)
            self._loads = loads
        return loads

    def _forget_loads(self) -> None:
        self._loads = None

    def flush(self, *, all_usage: bool = False) -> None:
        """Commit this turn's journal records, then carry out the effects held for it
        (nothing, while the commit fails: they wait for the retry). Usage rows alone are
        written a little later (see :data:`swarmd.group_commit.USAGE_DELAY_S`), or now
        with ``all_usage`` (shutdown)."""
        self._flush_due = False
        try:
            self._commit_and_carry_out(all_usage)
        finally:
            if self._wake_pending:
                self._wake_pending = False
                self.wake()

    def _commit_and_carry_out(self, all_usage: bool) -> None:
        committed = self.commits.commit(all_usage=all_usage)
        self._flush_usage_later()
        if committed is None:
            return
        effects, changed = committed
        for effect in effects:
            if isinstance(effect, core.Dispatch):
                self._dispatch(effect)
            elif isinstance(effect, core.CancelAttempt):
                self._to(
                    effect.node_id,
                    CancelAttempt(
                        task=effect.task_id, subtask=effect.subtask_id, attempt=effect.attempt
                    ),
                )
            elif isinstance(effect, core.Ack):
                self._to(
                    effect.node_id,
                    ResultAck(
                        task=effect.task_id,
                        subtask=effect.subtask_id,
                        attempt=effect.attempt,
                        committed=effect.committed,
                    ),
                )
            elif isinstance(effect, core.TaskFinished):
                self.log.debug("task %s %s", effect.task_id, effect.state)
                self._finished.setdefault(effect.task_id, asyncio.Event()).set()
        for task_id in changed:  # watchers hear of a change once it is journaled
            self.watchers.changed(task_id)

    def _flush_usage_later(self) -> None:
        due = self.commits.usage_due_at
        if due is None or self._usage_flush is not None:
            return
        with contextlib.suppress(RuntimeError):  # no loop (a tool or a test): the next flush
            loop = asyncio.get_running_loop()
            delay = max(0.0, due - time.monotonic())
            self._usage_flush = loop.call_later(delay, self._flush_usage)

    def _flush_usage(self) -> None:
        self._usage_flush = None
        self.flush()

    def _to(self, node_id: str, message: Message) -> bool:
        addr = self.address_of(node_id)
        return addr is not None and self.send(addr, message)

    def _task_files(self, task_id: str) -> dict[str, bytes]:
        if task_id not in self._inputs:
            if self.coordinator.record(task_id).ephemeral:
                return {}  # a gateway request: no input files, nothing in the store
            self._inputs[task_id] = self.store.inputs(task_id)
        return self._inputs[task_id]

    def _dispatch(self, d: core.Dispatch) -> None:
        try:
            files = dispatch_files(d.spec, self._task_files(d.task_id), d.upstream)
        except template.TooLarge as exc:  # the subtask's own failure, told at once
            failed = core.Result(error=f"input files: {exc}", app_failed=True)
            self.log.warning("%s/%s: %s", d.task_id, d.subtask_id, failed.error)
            self.run(
                self.coordinator.on_result(
                    d.task_id, d.subtask_id, d.attempt, d.node_id, failed, self.clock()
                )
            )
            return
        me = self.me()
        key = (d.task_id, d.subtask_id, d.attempt)
        if key not in self._sent_generation:
            self._sent_generation[key] = self.generation_of(d.node_id)
            while len(self._sent_generation) > SENT_KEPT:  # attempts long over
                del self._sent_generation[next(iter(self._sent_generation))]
        message = Dispatch(
            task=d.task_id,
            subtask=d.subtask_id,
            attempt=d.attempt,
            coordinator=me,
            lease_s=d.lease_s,
            spec=spec_to_wire(d.spec),
            inputs=files,
            model=d.model,
            generation=self._sent_generation[key],
        )
        if self.on_dispatch_latency is not None:
            self._dispatched_at.setdefault(key, time.monotonic())
            while len(self._dispatched_at) > 4096:  # replies that never came
                del self._dispatched_at[next(iter(self._dispatched_at))]
        if not self._to(d.node_id, message):
            now = self.clock()
            self.run(
                self.coordinator.on_refused(
                    d.task_id, d.subtask_id, d.attempt, d.node_id, "not reachable", now
                )
            )

    # ------------------------------------------------------------ worker messages

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
                c.on_progress(message.task, message.subtask, message.attempt, message.node, now)
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

    # ------------------------------------------------------------ retention

    _next_sweep: float = 0.0  # when the next sweep for aged-out tasks is due

    def _expire(self, now: float) -> None:
        """Forget the finished tasks the retention policy lets go (one bounded batch):
        every ``interval_s``, at once when more than ``keep_tasks`` (or subtasks than
        ``keep_subtasks``) are held, and again on the next turn while it finds some.
        Their files, events and dispatch timings go with them."""
        c = self.coordinator
        policy = c.config.retention
        if now < self._next_sweep and not policy.over_cap(*c.finished_count()):
            return
        effects = c.expire(now)
        gone = {str(e.data["task"]) for e in effects if isinstance(e, core.Journal)}
        self._next_sweep = now if gone else now + policy.interval_s
        if not gone:
            return
        self.run(effects)
        for task_id in gone:
            self._inputs.pop(task_id, None)
            self._finished.pop(task_id, None)
            self.transfers.forget(task_id)
        for key in [k for k in self._dispatched_at if k[0] in gone]:
            del self._dispatched_at[key]
        self.log.debug("forgot %d finished task(s)", len(gone))
        self.wake()
