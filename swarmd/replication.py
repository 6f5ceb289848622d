"""This node as a coordinator that replicates its tasks to their successors (the design
is in swarmd/core/succession.py).

After each group commit the journal records written go to each task's successor in one
``replica_put`` per successor (the whole task, inputs included up to a limit, when it is
new there). What the workers would act on — dispatches and result acks of a task — waits
until every put of that task sent so far is acknowledged (at most ``RELEASE_S``): a
successor that adopts the task never knows less than its workers do, so no attempt is
started or dropped behind its back. When the successor changes, the former one is sent
a put that forgets the task, and the task's effects wait for that acknowledgment too: a
former holder never keeps a copy that would look current to it while the task moved on
without it. ``submit`` returns once the first put of the task was acknowledged
(:meth:`Replication.wait_replicated`).

After a restart, the unfinished tasks restored from the journal are *held*: what they
would send waits until a replica holder says it did not adopt them (then they go on),
or one says it did (then they are relinquished: :mod:`swarmd.succession`), or
``CONFIRM_S`` passes with no answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import msgspec

from protocol.messages import Message, NodeRef
from protocol.succession import (
    REPLICA_INPUTS_MAX,
    ReplicaAck,
    ReplicaDrop,
    ReplicaPut,
    ReplicaRecord,
    ReplicaTask,
    TaskQuery,
)

from .core import tasks as core
from .core.succession import ReplicationPlan, successor
from .replica_store import ReplicaStore

if TYPE_CHECKING:
    from .work import Coordination

# Effects held for an unacknowledged put go out after this anyway: a last resort
# against a holder alive but wedged (a holder that cannot store refuses at once; one
# that goes down is replaced). Short values re-run work: under load (acks after 4 s
# were seen) a coordinator that releases early and then dies leaves a replica that
# lacks what its workers run (chaos seed 111).
RELEASE_S = 30.0
RESEND_S = 1.0  # an unacknowledged put is sent again after this
CONFIRM_S = 5.0  # restored tasks held this long for a replica holder's answer
PUT_BYTES = 8 << 20  # a put's estimated size at most (a frame holds 16 MiB)
SUBMIT_WAIT_S = 1.5  # submit waits this long for the successor's ack (clients wait 3 s)
_GATED = (core.Dispatch, core.Ack, core.CancelAttempt)

Send = Callable[[str, Message], bool]


class Replication:
    def __init__(
        self,
        *,
        coordination: Coordination,
        send: Send,
        live: Callable[[], list[str]],
        address_of: Callable[[str], str | None],
        me: Callable[[], NodeRef],
        log: logging.Logger,
    ) -> None:
        self.coordination = coordination
        self.send = send
        self.live = live  # ids of the other members now alive
        self.address_of = address_of
        self.me = me
        self.log = log
        self.plan = ReplicationPlan(coordination.node_id)
        self.store = ReplicaStore(coordination.store)
        self.counters = coordination.counters
        self._seq = 0
        # seq -> (holder, put, first sent, last sent, a former holder's drop)
        self._unacked: dict[int, tuple[str, ReplicaPut, float, float, bool]] = {}
        self._pending: dict[str, set[int]] = {}  # task -> its puts not acknowledged
        self._held: dict[str, tuple[float, list[core.Effect]]] = {}  # task -> since, effects
        self._live_seen: frozenset[str] = frozenset()
        self._waiters: dict[str, asyncio.Event] = {}
        self._full: set[str] = set()  # tasks to send whole at the next turn
        self._drop_due: dict[str, str] = {}  # task -> former holder to tell (when up)
        # Restored tasks held until confirmed: task -> effects kept (latest per attempt).
        self.holding: dict[str, dict[tuple[str, str, str, int], core.Effect]] = {}
        self._holding_since = time.monotonic()
        self._peer_since: float | None = None
        self._queried: set[str] = set()
        self._relinquished: set[str] = set()  # tasks adopted elsewhere (bounded below)

    # ------------------------------------------------------------ replication

    def on_written(
        self,
        records: list[core.Journal],
        artifacts: Mapping[tuple[str, str], Mapping[str, bytes]] | None = None,
    ) -> None:
        """A group commit wrote these records (and the artifacts of the results it
        committed): send them to each task's successor."""
        live = self.live()
        by_holder: dict[str, dict[str, list[core.Journal]]] = {}
        for record in records:
            task_id = str(record.data.get("task"))
            if task_id in self._relinquished:
                continue  # coordinated elsewhere now: nothing of it goes out from here
            if record.kind == "forget" and task_id not in self.plan.holder:
                # Not replicated since a restart: its successor then is likely its
                # successor now (a replica it does not hold is dropped as nothing).
                holder, full = successor(task_id, self.plan.me, live), False
            else:
                holder, full = self.plan.route(task_id, live)
            if holder is None:
                continue
            if full:
                self._full.add(task_id)
            by_holder.setdefault(holder, {}).setdefault(task_id, []).append(record)
        for holder, tasks in by_holder.items():
            self._put(holder, tasks, artifacts)

    def _put(
        self,
        holder: str,
        tasks: dict[str, list[core.Journal]],
        artifacts: Mapping[tuple[str, str], Mapping[str, bytes]] | None = None,
    ) -> None:
        """Send ``tasks``' records (and the artifacts of results they commit) to
        ``holder``, in puts of at most PUT_BYTES (estimated) each."""
        items: list[ReplicaTask] = []
        size = 0
        for task_id, records in tasks.items():
            item = self._replica_task(task_id, records, task_id in self._full)
            self._full.discard(task_id)
            files = {s: dict(f) for (t, s), f in (artifacts or {}).items() if t == task_id}
            if files:
                item = msgspec.structs.replace(item, artifacts={**item.artifacts, **files})
            if any(r.kind == "forget" for r in records):
                self.plan.forget(task_id)
            weight = _estimate(item)
            if items and size + weight > PUT_BYTES:
                self._send_put(holder, items)
                items, size = [], 0
            items.append(item)
            size += weight
        if items:
            self._send_put(holder, items)
        gone = [t for t, r in tasks.items() if any(x.kind == "forget" for x in r)]
        if gone:
            with contextlib.suppress(sqlite3.Error, OSError):
                self.store.unreplicated(gone)

    def _send_put(self, holder: str, items: list[ReplicaTask], drop: bool = False) -> None:
        self._seq += 1
        put = ReplicaPut(seq=self._seq, coordinator=self.me(), tasks=items)
        now = time.monotonic()
        self._unacked[self._seq] = (holder, put, now, now, drop)
        for item in items:
            self._pending.setdefault(item.task, set()).add(self._seq)
        self._send(holder, put)

    def _settled(self, seq: int, put: ReplicaPut) -> None:
        """Put ``seq`` is acknowledged (or given up): the effects of its tasks that
        waited for no other put go out."""
        ready: list[core.Effect] = []
        for item in put.tasks:
            pending = self._pending.get(item.task)
            if pending is None:
                continue
            pending.discard(seq)
            if not pending:
                del self._pending[item.task]
                ready += self._held.pop(item.task, (0.0, []))[1]
        self.coordination.carry_out(ready)

    def _replica_task(self, task_id: str, records: list[core.Journal], full: bool) -> ReplicaTask:
        c = self.coordination
        epoch = c.coordinator.epoch_of(task_id) or 1
        version = c.clock()
        if not full:
            rows = [ReplicaRecord(r.kind, dict(r.data)) for r in records]
            return ReplicaTask(task=task_id, epoch=epoch, records=rows, version=version)
        rows = [
            ReplicaRecord(kind, data)
            for kind, data in c.store.task_journal(task_id)
            if kind != "replica"
        ]
        files = c._task_files(task_id)
        size = sum(len(v) for v in files.values())
        done = c.store.artifacts(task_id)  # of results committed before this put
        if sum(len(v) for f in done.values() for v in f.values()) > REPLICA_INPUTS_MAX:
            done = {}  # too big to copy: they stay here
        if size > REPLICA_INPUTS_MAX:
            self.log.info(
                "task %s: its %d bytes of inputs stay here (a reference in the replica)",
                task_id,
                size,
            )
            return ReplicaTask(
                task=task_id,
                epoch=epoch,
                full=True,
                records=rows,
                inputs_at=c.node_id,
                version=version,
                artifacts=done,
            )
        return ReplicaTask(
            task=task_id,
            epoch=epoch,
            full=True,
            records=rows,
            inputs=files,
            version=version,
            artifacts=done,
        )

    def _send(self, holder: str, message: Message) -> bool:
        addr = self.address_of(holder)
        return addr is not None and self.send(addr, message)

    def on_ack(self, m: ReplicaAck, sender: str | None) -> None:
        entry = self._unacked.get(m.seq)
        if entry is None or (sender is not None and sender != entry[0]):
            return
        del self._unacked[m.seq]
        holder, put, first, _, drop = entry
        refused = set(m.refused)
        tasks = [t.task for t in put.tasks if t.task not in refused]
        if not drop:
            self._note(holder, self.plan.acked(holder, tasks))
            self._full.update(t for t in refused if self.plan.holder.get(t) == holder)
        for task_id in tasks:
            event = None if drop else self._waiters.pop(task_id, None)
            if event is not None:
                event.set()
        if any(t.full for t in put.tasks):
            self.log.info(
                "replica of %s on %s (%.0f ms)",
                ", ".join(t.task for t in put.tasks if t.full),
                holder,
                (time.monotonic() - first) * 1000,
            )
        self.counters["replica_puts_acked"] += 1
        self._settled(m.seq, put)

    def _note(self, holder: str, tasks: list[str]) -> None:
        """Remember (durably) which node holds these tasks' replicas now."""
        if tasks:
            with contextlib.suppress(sqlite3.Error, OSError):  # only costs a wait at restart
                self.store.set_replicated(holder, tasks)

    def gate(self, effects: Sequence[core.Effect]) -> list[core.Effect]:
        """The effects to carry out now; those that must wait for a replica (or for a
        restored task's confirmation) are kept and carried out later."""
        out: list[core.Effect] = []
        for e in effects:
            if not isinstance(e, _GATED):
                out.append(e)
            elif e.task_id in self.holding:
                key = (type(e).__name__, e.task_id, e.subtask_id, e.attempt)
                self.holding[e.task_id][key] = e
            elif self._pending.get(e.task_id):
                self._held.setdefault(e.task_id, (time.monotonic(), []))[1].append(e)
            else:
                out.append(e)
        return out

    async def wait_replicated(self, task_id: str, timeout_s: float = SUBMIT_WAIT_S) -> bool:
        """Until the task's successor acknowledged its replica: False if there is no
        other live member (nothing to wait for) or it did not answer in time."""
        if task_id in self.plan.confirmed:
            return True
        if self.plan.holder.get(task_id) is None:
            return False
        event = self._waiters.setdefault(task_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)
        if task_id not in self.plan.confirmed:
            self.log.warning("task %s: no replica acknowledged within %.0f s", task_id, timeout_s)
            return False
        return True

    def describe(self, task_id: str) -> dict[str, object]:
        """For status and explain: where the task's replica is."""
        holder = self.plan.holder.get(task_id)
        if holder is None:
            alone = not self.live()
            note = "no other live node" if alone else "no record of it since it was sent yet"
            return {"node": None, "note": f"not replicated: {note}"}
        return {"node": holder, "acknowledged": task_id in self.plan.confirmed}

    # ------------------------------------------------------------ holders asking

    def current_at(self, task_id: str, holder: str) -> bool | None:
        """Whether ``holder``'s replica of ``task_id`` (a task of this node's) is the
        one to keep: True if the task is open here and ``holder`` is its successor,
        False if it must go (finished, forgotten, moved, or another node is its
        successor now), None if this node cannot tell yet (restored and held)."""
        if task_id in self.holding:
            return None
        if task_id in self._relinquished:
            return False
        if not self.coordination.coordinator.is_open(task_id):
            return False
        return self.plan.holder.get(task_id) == holder

    def refresh(self, holder: str, tasks: list[str]) -> None:
        """Send ``holder`` the whole of these tasks again (it asked: its copy may be
        stale)."""
        for task_id in tasks:
            self._full.add(task_id)
        self._put(holder, {task_id: [] for task_id in tasks})

    # ------------------------------------------------------------ time

    def tick(self, now: float) -> None:
        live = frozenset(self.live())
        if live != self._live_seen:
            self._live_seen = live
            self._rechoose(live)
        for task_id, (since, held) in list(self._held.items()):
            if now - since >= RELEASE_S:
                self.counters["replica_late"] += 1
                del self._held[task_id]
                self.coordination.carry_out(held)
        for seq, (holder, put, first, last, drop) in list(self._unacked.items()):
            if now - last < RESEND_S:
                continue
            mine = drop or any(self.plan.holder.get(t.task) == holder for t in put.tasks)
            if not mine or self.address_of(holder) is None:
                # Gone (a former holder that comes back asks before adopting), or not
                # these tasks' successor any more: a new one gets the whole task
                # (rechoose); nothing of this put is needed.
                del self._unacked[seq]
                if drop:
                    for t in put.tasks:
                        self._drop_due[t.task] = holder
                self._settled(seq, put)
                continue
            self._unacked[seq] = (holder, put, first, now, drop)
            self.counters["replica_resent"] += 1
            self._send(holder, put)
        self._send_drops()
        self._confirm(now, live)

    def _send_drops(self) -> None:
        """A former holder that is up hears it holds a stale replica (one that was
        down when the task moved on would otherwise keep it, and could adopt it)."""
        by_node: dict[str, list[str]] = {}
        for task_id, old in list(self._drop_due.items()):
            if self.address_of(old) is not None:
                by_node.setdefault(old, []).append(task_id)
                del self._drop_due[task_id]
        for old, tasks in by_node.items():
            for at in range(0, len(tasks), 4096):
                self._send(old, ReplicaDrop(tasks=tasks[at : at + 4096]))
        while len(self._drop_due) > 65536:
            del self._drop_due[next(iter(self._drop_due))]

    def _rechoose(self, live: frozenset[str]) -> None:
        open_tasks = [
            t for t in self.coordination.coordinator.open_task_ids() if t not in self.holding
        ]
        moved = self.plan.rechoose(open_tasks, live)
        by_holder: dict[str, dict[str, list[core.Journal]]] = {}
        former: dict[str, list[ReplicaTask]] = {}
        for task_id, old in moved:
            holder = self.plan.holder[task_id]
            self._full.add(task_id)
            if old is not None and old != holder:
                former.setdefault(old, []).append(self._forget_item(task_id))
            by_holder.setdefault(holder, {})[task_id] = []
        for holder, tasks in by_holder.items():
            self.log.info("successor of %d task(s) is now %s", len(tasks), holder)
            self._put(holder, tasks)
        for old, items in former.items():
            if self.address_of(old) is None:
                for item in items:
                    self._drop_due[item.task] = old  # told when it is back
                continue
            for at in range(0, len(items), 4096):
                self._send_put(old, items[at : at + 4096], drop=True)

    def _forget_item(self, task_id: str) -> ReplicaTask:
        """A put item that makes a former holder forget its copy of ``task_id``."""
        epoch = self.coordination.coordinator.epoch_of(task_id) or 1
        forget = ReplicaRecord("forget", {"task": task_id})
        return ReplicaTask(
            task=task_id, epoch=epoch, records=[forget], version=self.coordination.clock()
        )

    # ------------------------------------------------------------ after a restart

    def hold(self, task_ids: Iterable[str]) -> None:
        """Restored unfinished tasks that had a replica: nothing of them goes out until
        confirmed (a task never replicated cannot have been adopted)."""
        replicated = self.store.replicated()
        for task_id in task_ids:
            if task_id in replicated:
                self.holding.setdefault(task_id, {})
        if self.holding:
            self._holding_since = time.monotonic()
            self.log.info(
                "%d restored task(s) held until their successor says it did not adopt them",
                len(self.holding),
            )

    def _confirm(self, now: float, live: frozenset[str]) -> None:
        if not self.holding:
            return
        if live and self._peer_since is None:
            self._peer_since = now
        for node in live - self._queried:
            self._queried.add(node)
            self._send(node, TaskQuery(tasks=sorted(self.holding)[:4096]))
        start = self._holding_since if self._peer_since is None else self._peer_since
        if now - start >= CONFIRM_S * (1 if self._peer_since is not None else 2):
            self.log.info("no successor claims %d held task(s): resuming them", len(self.holding))
            for task_id in list(self.holding):
                self.release(task_id)

    def release(self, task_id: str) -> None:
        """A held task goes on: what it kept goes out, its replica is sent whole."""
        held = self.holding.pop(task_id, None)
        if held:
            self.coordination.carry_out(list(held.values()))
        self._rechoose(frozenset(self.live()))
        self.coordination.wake()

    def forget(self, task_id: str) -> None:
        """The task is not coordinated here any more (relinquished)."""
        self.holding.pop(task_id, None)
        self.plan.forget(task_id)
        self._pending.pop(task_id, None)
        self._held.pop(task_id, None)
        self._relinquished.add(task_id)
        if len(self._relinquished) > 65536:
            self._relinquished.pop()


def _estimate(item: ReplicaTask) -> int:
    """About how many bytes ``item`` takes on the wire (files counted exactly)."""
    files = sum(len(v) for v in item.inputs.values())
    files += sum(len(v) for f in item.artifacts.values() for v in f.values())
    return files + 256 * (len(item.records) + 1)
