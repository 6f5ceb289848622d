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
from typing import TYPE_CHECKING, Any

from protocol.messages import (
    CancelAttempt,
    Dispatch,
    Message,
    NodeRef,
    ResultAck,
)

from .clock import Clock
from .core import tasks as core
from .core import template
from .core.jobspec import JobSpec, SubtaskSpec
from .core.pricing import PeerCapacity, PricingConfig, ThroughputTracker
from .dispatch_files import (
    MissingArtifact,
    dispatch_files,
    files_for,
    spec_to_wire,
    upstream_files,
)
from .group_commit import GroupCommit
from .journal_health import JournalHealth
from .journal_open import quarantine
from .peer_view import LoadReport
from .store import Store
from .transfers import Transfers
from .watchers import TaskWatchers
from .work_messages import WorkerMessages

if TYPE_CHECKING:
    from .replica_store import Moved
    from .replication import Replication
    from .successor import Successor

Send = Callable[[str, Message], bool]  # (node address, message) -> queued?
__all__ = ["Clock", "Coordination"]


# ---------------------------------------------------------------- coordinator side


LOOKAHEAD_S = 10.0
QUEUE_AHEAD_S = 1.0
SENT_KEPT = 65536  # attempts whose first dispatch's worker generation is remembered


def _new_coordinator(
    node_id: str, node_name: str, config: core.CoordinatorConfig | None
) -> core.Coordinator:
    return core.Coordinator(
        node_id=node_id,
        node_name=node_name,
        config=config or core.CoordinatorConfig(),
        # A worker holds shell/python subtasks up to its gossiped queue_max beyond its
        # slots (pricing reads it per peer); a full model profile or a peer that
        # gossips no queue_max refuses, so it is not a candidate at all.
        # Look-ahead: a subtask may wait up to LOOKAHEAD_S for a busier node where it
        # would finish sooner; one with an estimate goes to a busy worker's queue
        # only when a slot there is due within QUEUE_AHEAD_S (swarmd.core.pricing_eft).
        pricing=PricingConfig(
            max_queue=0, lookahead_max_s=LOOKAHEAD_S, queue_ahead_s=QUEUE_AHEAD_S
        ),
        # The requests this coordinator sent, measured: pricing reads these first.
        throughput=ThroughputTracker(),
    )


class Coordination(WorkerMessages):
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
        self.coordinator = _new_coordinator(node_id, node_name, config)
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
        # Data locality: the bandwidth of each whole pull, and the input bytes a
        # dispatch carries, for pricing (swarmd.core.locality).
        self.transfers.on_measured = self.coordinator.bandwidth.observe
        self.coordinator.input_bytes = self._input_bytes
        # Tasks survive this coordinator (swarmd/core/succession.py): set when wired.
        self.replication: Replication | None = None
        self.successor: Successor | None = None

    @property
    def counters(self) -> Counter[str]:
        return self.coordinator.counters

    @property
    def journal_writes(self) -> int:
        return self.commits.records_written

    def restore(self) -> int:
        records = [core.Journal(kind, data) for kind, data in self.store.journal()]
        effects = self.coordinator.restore(records, self.clock()) if records else []
        self.run(quarantine(self.store, effects, self.log))  # records restore could not use
        if self.replication is not None:  # a successor may have adopted them meanwhile
            self.replication.hold(self.coordinator.open_task_ids())
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

    def admit(self, job: JobSpec) -> core.Admission | None:
        """The deadline estimate for ``job`` if it were submitted now (None without a
        deadline): :meth:`swarmd.core.tasks.Coordinator.admit` with the live peers."""
        if job.deadline_s is None:
            return None
        peers = self.peers(self.coordinator.load_by_node())
        return self.coordinator.admit(job, peers, self.clock())

    def place(self) -> None:
        """One scheduling pass over the ready queue, with the live peer view (none while
        the journal cannot be written: nothing new goes out); then, if due, the open
        tasks' deadline outlook."""
        if self.commits.failing:
            return
        now = self.clock()
        ready = self.coordinator.ready_count()
        if not ready and not self.coordinator.outlook_due(now):
            return  # (building the peer view costs more than a pass with nothing to do)
        loads = self.coordinator.load_by_node()
        peers = self.peers(loads)
        if ready:
            self.run(self.coordinator.schedule(peers, now))
        if self.coordinator.outlook_due(now):
            self.coordinator.refresh_outlook(self.peers(self.coordinator.load_by_node()), now)

    async def loop(self) -> None:
        """Price ready work and expire leases; wake early on news."""
        while True:
            now = self.clock()
            self._expire(now)
            self.transfers.tick(time.monotonic())
            self.run(self.coordinator.tick(now))
            if self.replication is not None and self.successor is not None:
                self.replication.tick(time.monotonic())
                self.successor.tick(time.monotonic())
            self.place()
            if self.commits.failing:
                self.flush()  # try the commit again (every RETRY_S)
            wakeups = (
                self.coordinator.next_wakeup(self.clock()),
                self.coordinator.outlook_wakeup(),
            )
            wakeup = min((w for w in wakeups if w is not None), default=None)
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
        self.commits.add(list(effects))
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
        if self.replication is not None:  # dispatches and acks wait for the replica
            effects = self.replication.gate(effects)
        self.carry_out(effects)
        for task_id in changed:  # watchers hear of a change once it is journaled
            self.watchers.changed(task_id)

    def carry_out(self, effects: Sequence[core.Effect]) -> None:
        """Send what committed effects say (journaled, and replicated where needed)."""
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

    # ------------------------------------------------------------ succession

    def has_task(self, task_id: str) -> bool:
        """Whether this node coordinates ``task_id`` now (its own, or adopted; running
        or finished): other nodes forward requests about it here (see
        :mod:`swarmd.forwarding`)."""
        return self.coordinator.epoch_of(task_id) is not None

    def replica_of(self, task_id: str) -> core.Coordinator | None:
        """The replica this node holds of another coordinator's task, rebuilt as a
        read-only coordinator (``status``, ``result``, ``explain`` of it), or None."""
        held = None if self.successor is None else self.successor.replica_of(task_id)
        if held is None:
            return None
        view = core.Coordinator(node_id=held.coordinator, node_name=held.coordinator)
        view.restore([core.Journal(k[0], d) for k, d in held.records.items()], self.clock())
        return view

    def moved_to(self, task_id: str) -> Moved | None:
        """Where a task this node coordinated went (a successor adopted it)."""
        return None if self.successor is None else self.successor.moved_to(task_id)

    def keep_files(self, task_id: str, files: dict[str, bytes]) -> None:
        self._inputs[task_id] = files

    def forget_files(self, task_id: str) -> None:
        self._inputs.pop(task_id, None)
        self._finished.pop(task_id, None)

    def _task_files(self, task_id: str) -> dict[str, bytes]:
        if task_id not in self._inputs:
            if self.coordinator.record(task_id).ephemeral:
                return {}  # a gateway request: no input files, nothing in the store
            self._inputs[task_id] = self.store.inputs(task_id)
        return self._inputs[task_id]

    def _input_bytes(self, task_id: str, spec: SubtaskSpec) -> int:
        """Bytes of the input files and upstream artifacts the subtask's dispatch
        carries (asked once it is ready: its upstream subtasks are done)."""
        files = files_for(spec, self._task_files(task_id))
        if spec.upstream_inputs:
            with contextlib.suppress(MissingArtifact):  # the dispatch fails it, saying so
                files.update(upstream_files(spec, self.store.artifacts(task_id)))
        return sum(len(v) for v in files.values())

    def _dispatch(self, d: core.Dispatch) -> None:
        if not self.has_task(d.task_id):
            # Relinquished (adopted elsewhere) after this dispatch was decided, while it
            # waited for its commit or its replica: it is not this node's to send.
            self.counters["dispatches_of_relinquished_tasks"] += 1
            return
        try:
            artifacts = self.store.artifacts(d.task_id) if d.spec.upstream_inputs else None
            files = dispatch_files(d.spec, self._task_files(d.task_id), d.upstream, artifacts)
        except (template.TooLarge, MissingArtifact) as exc:  # the subtask's own failure
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
            epoch=d.epoch,
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
