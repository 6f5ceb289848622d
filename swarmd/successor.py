"""This node as the successor of other coordinators' tasks, and as a former coordinator
that learns it lost some (the design is in swarmd/core/succession.py).

It stores the replicas it is sent (:class:`swarmd.replica_store.ReplicaStore`), adopts
the unfinished tasks of a coordinator down for ``adopt_after_s`` (journaled here with a
higher coordinator epoch, every live node told: workers re-point their attempts and
outbox), tells a former coordinator that comes back, answers ``task_query``, and
relinquishes a task of its own when a claim of a newer epoch arrives.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from protocol.messages import Message, NodeRef
from protocol.succession import (
    ReplicaAck,
    ReplicaDrop,
    ReplicaPut,
    Succession,
    SuccessionMessage,
    TaskClaim,
    TaskQuery,
)

from .core import tasks as core
from .core.succession import Replica, ReplicaBook, weight
from .replica_store import Moved, ReplicaStore

if TYPE_CHECKING:
    from .replication import Replication
    from .work import Coordination
    from .worker import Worker

QUERY_S = 1.0  # before adopting, other holders' answers are awaited this long
REAPPEAR_GAP_S = 2.0  # a coordinator not seen up for this long "came back" (ticks: 0.5 s)
CONFIRM_EVERY_S = 2.0  # unconfirmed replicas: their coordinator is asked this often
CONFIRM_CHECK_S = 0.25  # how often the replicas are looked over for that (each look scans all)
TELL_EVERY_S = 3.0  # a former coordinator back up is told this often ...
TELL_FOR_S = 30.0  # ... for this long
_MAX_CLAIMS = 4096


class Successor:
    def __init__(
        self,
        *,
        coordination: Coordination,
        replication: Replication,
        worker: Worker,
        send: Callable[[str, Message], bool],
        is_up: Callable[[str], bool],
        live_addresses: Callable[[], set[str]],
        address_of: Callable[[str], str | None],
        peers_known: Callable[[], int] = lambda: 0,
        me: Callable[[], NodeRef],
        adopt_after_s: float,
        log: logging.Logger,
    ) -> None:
        self.coordination = coordination
        self.replication = replication
        self.worker = worker
        self.send = send
        self.is_up = is_up
        self.live_addresses = live_addresses
        self.address_of = address_of
        self.peers_known = peers_known  # other members known and not departed
        self.me = me
        self.adopt_after_s = adopt_after_s
        self.log = log
        self.counters = coordination.counters
        self.store = ReplicaStore(coordination.store)
        self.book = ReplicaBook()
        self.adopted_from: dict[str, str] = {}  # task adopted here -> its former coordinator
        self._up_since: dict[str, float] = {}  # former coordinator -> back up since
        self._told: dict[str, float] = {}
        # task due -> when it may be adopted, and the nodes asked about it
        self._asking: dict[str, tuple[float, frozenset[str]]] = {}
        self._confirm_asked: dict[str, float] = {}  # coordinator -> when last asked
        self._confirm_checked = -1e9
        for stored in self.store.load():
            if stored.adopted:
                self.adopted_from[stored.task] = stored.coordinator
            else:
                held = self.book.put(
                    stored.coordinator,
                    stored.task,
                    stored.epoch,
                    stored.records,
                    True,
                    stored.version,
                )
                if held is not None:
                    held.confirmed_at = None  # may have missed puts while this node was down
        self.moved: dict[str, Moved] = self.store.moved()

    # ------------------------------------------------------------ messages

    def on_message(self, m: SuccessionMessage, sender: str | None) -> None:
        if isinstance(m, ReplicaPut):
            self._on_put(m, sender)
        elif isinstance(m, ReplicaAck):
            self.replication.on_ack(m, sender)
        elif isinstance(m, ReplicaDrop):
            owner = sender or ""
            dropped = [t for t in m.tasks if self.book.drop(t, owner)]
            if dropped:
                self.store.drop(dropped)
        elif isinstance(m, Succession):
            self._on_claims(m, sender)
        elif isinstance(m, TaskQuery):
            self._on_query(m, sender)

    def _on_put(self, m: ReplicaPut, sender: str | None) -> None:
        coordinator = m.coordinator.id
        if sender is not None and sender != coordinator:
            self.counters["replica_wrong_sender"] += 1
            return
        refused, rows, claims = [], [], []
        inputs, inputs_at, artifacts = {}, {}, {}
        for t in m.tasks:
            records = [(r.kind, r.data) for r in t.records]
            if self.coordination.has_task(t.task):  # adopted here: that coordinator is stale
                refused.append(t.task)
                claims.append(self._claim(t.task))
                continue
            new = t.task not in self.book.replicas
            now = time.monotonic()
            if self.book.put(coordinator, t.task, t.epoch, records, t.full, t.version, now) is None:
                refused.append(t.task)
                continue
            rows.append((t.task, t.epoch, t.full, records, t.version))
            if t.inputs:
                inputs[t.task] = t.inputs
            if t.inputs_at:
                inputs_at[t.task] = t.inputs_at
            if t.artifacts:
                artifacts[t.task] = t.artifacts
            if new and t.task in self.book.replicas:
                self.log.info("holding the replica of task %s of %s", t.task, coordinator)
        try:
            self.store.put(coordinator, rows, inputs, inputs_at, artifacts)
        except (sqlite3.Error, OSError) as exc:
            # Not durable: refused (the coordinator goes on without a replica here and
            # sends the task whole next time), and not kept in memory either.
            self.log.warning("cannot store replicas of %s: %s", coordinator, exc)
            self.counters["replica_puts_refused"] += 1
            for task_id, *_ in rows:
                self.book.replicas.pop(task_id, None)
            refused = [t.task for t in m.tasks]
        else:
            self.counters["replica_puts_stored"] += 1
        self.send(m.coordinator.addr, ReplicaAck(seq=m.seq, refused=refused))
        if claims:
            self.send(m.coordinator.addr, Succession(claims=claims))

    def _claim(self, task_id: str) -> TaskClaim:
        epoch = self.coordination.coordinator.epoch_of(task_id) or 1
        return TaskClaim(task_id, epoch, self.me(), adopted=True)

    def _on_claims(self, m: Succession, sender: str | None) -> None:
        for claim in m.claims:
            if not claim.adopted and sender is not None and sender != self.coordination.node_id:
                self._other_holder(claim, sender)
            direct = sender is not None and sender == claim.coordinator.id
            if claim.adopted and direct:
                self.worker.on_claim(claim)
            held = self.book.replicas.get(claim.task)
            taken = held is not None and claim.coordinator.id != held.coordinator
            if claim.adopted and direct and taken and held is not None and not held.adopted:
                self.book.replicas.pop(claim.task, None)  # another successor took it
                self._asking.pop(claim.task, None)
                self.store.drop([claim.task])
            self._as_coordinator(claim)

    def _other_holder(self, claim: TaskClaim, holder: str) -> None:
        """Another node holds a replica of a task held here too: the fresher one (on a
        tie, the one of higher rendezvous weight) is the one that may adopt it."""
        held = self.book.replicas.get(claim.task)
        if held is None or held.adopted or held.coordinator != claim.coordinator.id:
            return
        me = self.coordination.node_id
        same = (claim.epoch, claim.version) == (held.epoch, held.version)
        if held.fresher(claim.epoch, claim.version) or (
            same and weight(claim.task, holder) > weight(claim.task, me)
        ):
            if not held.superseded:
                self.log.info(
                    "task %s: %s holds a fresher replica of it; not adopting it here",
                    claim.task,
                    holder,
                )
            held.superseded = True
            self._asking.pop(claim.task, None)

    def _as_coordinator(self, claim: TaskClaim) -> None:
        c = self.coordination
        epoch = c.coordinator.epoch_of(claim.task)
        if epoch is None:
            return
        me = c.node_id
        if claim.adopted and (claim.epoch, claim.coordinator.id) > (epoch, me):
            self._relinquish(claim)
        elif (
            not claim.adopted
            and claim.task in self.replication.holding
            and claim.coordinator.id == me
            and claim.epoch >= epoch
        ):
            self.log.info("task %s: its successor did not adopt it: resuming it", claim.task)
            self.replication.release(claim.task)

    def _relinquish(self, claim: TaskClaim) -> None:
        c = self.coordination
        c.run(c.coordinator.relinquish(claim.task))
        self.replication.forget(claim.task)
        c.forget_files(claim.task)
        moved = Moved(claim.task, claim.coordinator.id, claim.coordinator.addr, claim.epoch)
        self.moved[claim.task] = moved
        try:
            self.store.put_moved(moved)
        except (sqlite3.Error, OSError) as exc:
            self.log.warning("cannot note that task %s moved: %s", claim.task, exc)
        self.log.info(
            "task %s: adopted by %s at coordinator epoch %d while this node was away; "
            "not running it here",
            claim.task,
            claim.coordinator.id,
            claim.epoch,
        )

    def _on_query(self, m: TaskQuery, sender: str | None) -> None:
        addr = None if sender is None else self.address_of(sender)
        if addr is None:
            return
        claims, current, stale = [], [], []
        for task_id in m.tasks:
            if (held := self.book.replicas.get(task_id)) is not None and not held.adopted:
                # Another holder (or a restarted coordinator) asking: what is held here.
                ref = NodeRef(held.coordinator, 0, 0, addr)
                claims.append(TaskClaim(task_id, held.epoch, ref, False, held.version))
                continue
            if task_id in self.adopted_from and self.coordination.has_task(task_id):
                claims.append(self._claim(task_id))  # (a former coordinator asking)
            if sender is None:
                continue
            # A holder asking whether its replica of a task of this node's is current.
            answer = self.replication.current_at(task_id, sender)
            if answer is True:
                current.append(task_id)
            elif answer is False:
                stale.append(task_id)
        for at in range(0, len(claims), _MAX_CLAIMS):
            self.send(addr, Succession(claims=claims[at : at + _MAX_CLAIMS]))
        if current and sender is not None:
            self.replication.refresh(sender, current)
        for at in range(0, len(stale), _MAX_CLAIMS):
            self.send(addr, ReplicaDrop(tasks=stale[at : at + _MAX_CLAIMS]))

    # ------------------------------------------------------------ time

    def tick(self, now: float) -> None:
        """Adopt what is due: first every live node is asked whether it holds a
        fresher replica (``QUERY_S``), then what no one claimed is adopted. A node that
        sees none of the other members it knows alive adopts nothing (it is likely the
        one cut off), and one that sees a node it did not ask asks again first (a stale
        replica's holder back from a partition must hear of the fresher one)."""
        due = self.book.due(now, self.is_up, self.adopt_after_s)
        mine = self.me().addr
        live = frozenset(self.live_addresses() - {mine})
        alone = not live and self.peers_known() > 1  # more than the coordinator known
        ready: dict[str, list[Replica]] = {}
        ask: list[str] = []
        for coordinator, replicas in due.items():
            for r in replicas:
                at, asked = self._asking.get(r.task, (0.0, frozenset()))
                if alone:
                    self._asking.pop(r.task, None)
                elif r.task not in self._asking or not live <= asked:
                    self._asking[r.task] = (now + QUERY_S, live)
                    ask.append(r.task)
                elif now >= at:
                    ready.setdefault(coordinator, []).append(r)
        due_tasks = {r.task for replicas in due.values() for r in replicas}
        for task_id in [t for t in self._asking if t not in due_tasks]:
            del self._asking[task_id]  # its coordinator is back, or it went
        if ask:
            for addr in live:
                for at in range(0, len(ask), _MAX_CLAIMS):
                    self.send(addr, TaskQuery(tasks=ask[at : at + _MAX_CLAIMS]))
        for coordinator, replicas in ready.items():
            for r in replicas:
                self._asking.pop(r.task, None)
            self._adopt(coordinator, replicas, now)
        self._tell_former(now)
        self._confirm_replicas(now)

    def _confirm_replicas(self, now: float) -> None:
        """Ask each coordinator back in view about the replicas of it held here (a
        holder that was away may hold a task that finished meanwhile)."""
        if now - self._confirm_checked < CONFIRM_CHECK_S:
            return  # (the loop may turn thousands of times a second while busy)
        self._confirm_checked = now
        for coordinator in self.book.reappeared(now, self.is_up, REAPPEAR_GAP_S):
            self._confirm_asked.pop(coordinator, None)
        for coordinator in list(self._confirm_asked):
            if coordinator not in self.book.replicas_of:
                del self._confirm_asked[coordinator]
        for coordinator in self.book.replicas_of:
            if not self.is_up(coordinator):
                continue
            tasks = self.book.unconfirmed(coordinator)
            if not tasks or now - self._confirm_asked.get(coordinator, -1e9) < CONFIRM_EVERY_S:
                continue
            addr = self.address_of(coordinator)
            if addr is None:
                continue
            self._confirm_asked[coordinator] = now
            self.log.info(
                "asking %s whether %d replica(s) held here are current: %s",
                coordinator,
                len(tasks),
                ", ".join(tasks[:5]) + (" ..." if len(tasks) > 5 else ""),
            )
            for at in range(0, len(tasks), _MAX_CLAIMS):
                self.send(addr, TaskQuery(tasks=tasks[at : at + _MAX_CLAIMS]))

    def _adopt(self, coordinator: str, replicas: list[Replica], now: float) -> None:
        c = self.coordination
        records = [core.Journal(key[0], data) for r in replicas for key, data in r.records.items()]
        for r in replicas:
            files = self.store.inputs(r.task)
            if files:
                c.commits.put_inputs(r.task, files)
                c.keep_files(r.task, files)
            for subtask, named in self.store.artifacts(r.task).items():
                c.store.put_artifacts(r.task, subtask, named)
        c.run(c.coordinator.adopt(records, c.clock()))
        c.flush()  # journaled here before anyone hears of it
        tasks = [r.task for r in replicas if c.has_task(r.task)]
        for r in replicas:
            r.adopted = True
            self.adopted_from[r.task] = coordinator
        self.store.mark_adopted(tasks)
        down = now - (self.book.down_since(coordinator) or now)
        claims = [self._claim(t) for t in tasks]
        workers = sorted({w for t in tasks for w in c.coordinator.workers_of(t)})
        self.log.info(
            "adopted %d task(s) of %s (down for %.1f s): %s; re-adopting attempts on %s",
            len(tasks),
            coordinator,
            down,
            ", ".join(f"{t} at epoch {cl.epoch}" for t, cl in zip(tasks, claims, strict=True)),
            ", ".join(workers) or "no node",
        )
        for addr in self.live_addresses():  # this node's own worker too
            for at in range(0, len(claims), _MAX_CLAIMS):
                self.send(addr, Succession(claims=claims[at : at + _MAX_CLAIMS]))
        c.wake()

    def _tell_former(self, now: float) -> None:
        """A former coordinator that is up again hears who has its tasks now."""
        c = self.coordination
        gone = [t for t in self.adopted_from if not c.has_task(t)]
        for task_id in gone:
            del self.adopted_from[task_id]  # forgotten since (retention)
        if gone:
            try:
                self.store.drop(gone)
            except (sqlite3.Error, OSError) as exc:
                self.log.warning("cannot drop the replica rows of %d task(s): %s", len(gone), exc)
        by_node: dict[str, list[TaskClaim]] = {}
        for task_id, former in self.adopted_from.items():
            if not self.is_up(former):
                self._up_since.pop(former, None)
                continue
            since = self._up_since.setdefault(former, now)
            if now - since > TELL_FOR_S or now - self._told.get(former, -1e9) < TELL_EVERY_S:
                continue
            by_node.setdefault(former, []).append(self._claim(task_id))
        for former, claims in by_node.items():
            addr = self.address_of(former)
            if addr is None:
                continue
            self._told[former] = now
            for at in range(0, len(claims), _MAX_CLAIMS):
                self.send(addr, Succession(claims=claims[at : at + _MAX_CLAIMS]))

    # ------------------------------------------------------------ views

    def replica_of(self, task_id: str) -> Replica | None:
        held = self.book.replicas.get(task_id)
        return None if held is None or held.adopted else held

    def moved_to(self, task_id: str) -> Moved | None:
        return self.moved.get(task_id)
