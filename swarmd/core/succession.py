"""Tasks survive their coordinator: successor choice, replicas, adoption, epochs.

Design (issue 13, item 1)
-------------------------

* **Successor.** Each journaled task has one successor: the live member other than
  its coordinator with the highest rendezvous weight ``sha256(task \\0 node)``
  (:func:`successor`). Deterministic, needs no coordination, and a membership change
  moves only the tasks whose successor came or went. The coordinator re-chooses when
  membership changes (:meth:`ReplicationPlan.rechoose`): the new successor gets the
  whole replica, the old one is told to drop it once the new one has it.
* **Replica.** The coordinator ships every journal record of a task (the job, the task
  and subtask snapshots, "forget") to its successor after each group commit, over the
  cluster's CURVE channel (``replica_put``, acknowledged by ``replica_ack``); the
  first put of a task (or to a new successor) is the whole task, with its input files
  up to a limit. ``submit`` returns once the successor acknowledged the first put (a
  cluster of one node has no successor: the task is not replicated, and status says
  so). The successor keeps replicas in its own SQLite, apart from its own journal
  (tables ``replica*``), in a :class:`ReplicaBook`. Ephemeral (gateway) tasks are
  never journaled, so never replicated.
* **Adoption.** A replica holder adopts the unfinished tasks of a coordinator that has
  been down (dead, left, sleeping or unknown) for ``[node] adopt_after_s`` without
  coming back (:meth:`ReplicaBook.due`): it rebuilds them from the replica with the
  coordinator epoch one higher (``Coordinator.adopt``), journals them as its own, and
  tells each worker holding an attempt of them (``succession`` claim): the worker's
  attempts and outbox of that task now report to the new coordinator, so attempts
  still running are re-adopted, not re-run, and results already in an outbox are
  committed once.
* **Fencing.** The epoch travels in every dispatch. A worker remembers the newest
  (epoch, coordinator) per task (:class:`EpochBook`) and refuses a dispatch of an older
  epoch, answering with a claim that names the newer coordinator. A coordinator that
  comes back (restart with its state dir, or a healed partition) learns it lost a task
  from such a claim, from its successor (which tells a former coordinator as soon as it
  is alive again), or by asking: after a restart its restored unfinished tasks are
  *held* (nothing dispatched) until the task's replica holder answers (``task_query``)
  that it did not adopt it, or ``confirm_s`` passes with no holder alive. A task lost
  that way is relinquished (forgotten here, its rows too) and remembered as *moved*:
  its status says where it went.

* **Stale replicas.** A replica is adopted only if it is *confirmed*: put (or sent
  again whole) since its coordinator last came into view of the holder. A holder that
  was away (down, restarted, asleep, stopped, cut off) while its coordinator finished a
  task would never hear of it: the finish went to another holder, or nowhere. So when a
  coordinator comes back into view (:meth:`ReplicaBook.reappeared`), or at start, its
  replicas are unconfirmed and the holder asks it (``task_query``); the coordinator
  answers with the whole task (still open, and this node is its successor) or a
  ``replica_drop`` (finished, forgotten, moved, or another successor holds it). A
  replica whose coordinator died before answering is never adopted: the task waits
  for its coordinator, as it would without adoption, rather than risk running twice.

Tie: two holders adopting one task (a drop lost while the membership changed) both
take epoch n+1; workers order claims by (epoch, node id), so one wins everywhere.

This module is sans-I/O: the shell (``swarmd/replication.py``) feeds it membership,
messages and the time, and carries out what it returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

RecordKey = tuple[str, str, str]  # (kind, task, subtask): the journal's key
EPOCHS_KEPT = 65536  # tasks whose newest epoch a worker remembers


def weight(task_id: str, node_id: str) -> int:
    """The rendezvous weight of ``node_id`` for ``task_id``."""
    digest = hashlib.sha256(f"{task_id}\0{node_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def successor(task_id: str, coordinator: str, live: Iterable[str]) -> str | None:
    """The live member other than ``coordinator`` with the highest weight (None: no
    other member is live)."""
    best: tuple[int, str] | None = None
    for node in live:
        if node == coordinator:
            continue
        key = (weight(task_id, node), node)
        if best is None or key > best:
            best = key
    return None if best is None else best[1]


def newer(a: tuple[int, str], b: tuple[int, str] | None) -> bool:
    """Whether claim ``a`` (epoch, coordinator id) supersedes ``b``."""
    return b is None or a > b


# ---------------------------------------------------------------- coordinator side


@dataclass(slots=True)
class ReplicationPlan:
    """Which node holds the replica of each of this coordinator's tasks."""

    me: str
    holder: dict[str, str] = field(default_factory=dict)  # task -> successor
    confirmed: set[str] = field(default_factory=set)  # tasks whose holder acked a put

    def route(self, task_id: str, live: Iterable[str]) -> tuple[str | None, bool]:
        """The successor to send ``task_id``'s records to, and whether it needs the
        whole task (it is new there)."""
        current = self.holder.get(task_id)
        if current is not None:
            return current, False
        chosen = successor(task_id, self.me, live)
        if chosen is not None:
            self.holder[task_id] = chosen
            self.confirmed.discard(task_id)
        return chosen, True

    def rechoose(self, tasks: Iterable[str], live: Iterable[str]) -> list[tuple[str, str | None]]:
        """After a membership change: (task, old holder) for each task whose successor
        changed; the task's holder is the new one (send it the whole task)."""
        live = list(live)
        moved = []
        for task_id in tasks:
            chosen = successor(task_id, self.me, live)
            old = self.holder.get(task_id)
            if chosen is None or chosen == old:
                continue
            self.holder[task_id] = chosen
            self.confirmed.discard(task_id)
            moved.append((task_id, old))
        return moved

    def acked(self, node: str, tasks: Iterable[str]) -> list[str]:
        """The tasks ``node`` acknowledged a put of; returns those it now holds for the
        first time (confirmed)."""
        new = []
        for task_id in tasks:
            if self.holder.get(task_id) == node and task_id not in self.confirmed:
                self.confirmed.add(task_id)
                new.append(task_id)
        return new

    def forget(self, task_id: str) -> str | None:
        self.confirmed.discard(task_id)
        return self.holder.pop(task_id, None)


# ---------------------------------------------------------------- successor side


@dataclass(slots=True)
class Replica:
    """What a successor holds of one task of another coordinator."""

    task: str
    coordinator: str
    epoch: int
    records: dict[RecordKey, Mapping[str, Any]] = field(default_factory=dict)
    adopted: bool = False
    version: float = 0.0  # the coordinator's clock at its last put: freshness
    # Another holder has a fresher replica of this task (it missed puts since, e.g.
    # while down): not adopted here, until the coordinator sends it records again.
    superseded: bool = False
    # When its coordinator last sent it (None: unconfirmed). A replica loaded at start,
    # or last sent before a time the coordinator was out of view (it was down, or this
    # node was: asleep, stopped, cut off), may have missed the task's end: it is not
    # adopted until the coordinator sends it again (:meth:`ReplicaBook.reappeared`).
    confirmed_at: float | None = None

    @property
    def confirmed(self) -> bool:
        return self.confirmed_at is not None

    def fresher(self, epoch: int, version: float) -> bool:
        """Whether another holder's replica (epoch, version) is fresher than this."""
        return (epoch, version) > (self.epoch, self.version)

    @property
    def final(self) -> bool:
        state = self.records.get(("task_state", self.task, ""), {}).get("state")
        return state in ("done", "failed", "cancelled")

    def apply(self, kind: str, data: Mapping[str, Any]) -> None:
        if kind == "forget":
            self.records.clear()
            return
        key = (kind, self.task, str(data.get("subtask", "")))
        self.records[key] = data


class ReplicaBook:
    """The replicas this node holds, and when their coordinators went down."""

    def __init__(self) -> None:
        self.replicas: dict[str, Replica] = {}
        self._down_since: dict[str, float] = {}
        self._seen_up: dict[str, float] = {}  # coordinator -> last time seen up

    def reappeared(self, now: float, is_up: Callable[[str], bool], gap_s: float) -> list[str]:
        """Coordinators of replicas held here that are up now after ``gap_s`` or more
        out of view (down meanwhile, or this node was away: not ticking). Their
        replicas last sent before that may have missed puts (a task that finished while
        this node was away is never sent again), so they are no longer confirmed: the
        shell asks the coordinator about them. (A coordinator seen for the first time
        has no such replicas: those sent since this node started are fresh, those
        loaded at start are unconfirmed already.)"""
        out = []
        coordinators = self.replicas_of
        for node in list(self._seen_up):
            if node not in coordinators:
                del self._seen_up[node]
        for node in coordinators:
            if not is_up(node):
                continue
            last = self._seen_up.get(node)
            self._seen_up[node] = now
            if last is None or now - last <= gap_s:
                continue
            for r in self.replicas.values():
                if r.coordinator == node and not r.adopted and (r.confirmed_at or 0.0) <= last:
                    r.confirmed_at = None
            out.append(node)
        return out

    @property
    def replicas_of(self) -> set[str]:
        """The coordinators of the replicas held here (not adopted)."""
        return {r.coordinator for r in self.replicas.values() if not r.adopted}

    def unconfirmed(self, coordinator: str) -> list[str]:
        """Tasks of ``coordinator`` held here whose replica awaits its confirmation."""
        return [
            r.task
            for r in self.replicas.values()
            if r.coordinator == coordinator and not r.adopted and not r.confirmed
        ]

    def put(
        self,
        coordinator: str,
        task_id: str,
        epoch: int,
        records: Iterable[tuple[str, Mapping[str, Any]]],
        full: bool,
        version: float = 0.0,
        now: float = 0.0,
    ) -> Replica | None:
        """Records of ``task_id`` from its coordinator (``full``: the whole task, what
        was held of it before goes). None if refused: an older epoch than held, or a
        task already adopted here."""
        held = self.replicas.get(task_id)
        if held is not None and (
            held.adopted or (epoch, coordinator) < (held.epoch, held.coordinator)
        ):
            return None
        if held is None or full or (epoch, coordinator) != (held.epoch, held.coordinator):
            held = self.replicas[task_id] = Replica(task_id, coordinator, epoch)
        held.version = max(held.version, version)
        held.superseded = False
        held.confirmed_at = now
        for kind, data in records:
            if kind == "forget":
                del self.replicas[task_id]
                return held
            held.apply(kind, data)
        return held

    def drop(self, task_id: str, coordinator: str) -> bool:
        held = self.replicas.get(task_id)
        if held is None or held.adopted or held.coordinator != coordinator:
            return False
        del self.replicas[task_id]
        return True

    def due(
        self, now: float, is_up: Callable[[str], bool], grace_s: float
    ) -> dict[str, list[Replica]]:
        """Coordinator -> its unfinished replicas to adopt now: those of coordinators
        down (``not is_up``) for ``grace_s`` without a break, confirmed (fresh) when
        the coordinator went down."""
        out: dict[str, list[Replica]] = {}
        coordinators = {r.coordinator for r in self.replicas.values() if not r.adopted}
        for node in list(self._down_since):
            if node not in coordinators:
                del self._down_since[node]
        for node in coordinators:
            if is_up(node):
                self._down_since.pop(node, None)
                continue
            since = self._down_since.setdefault(node, now)
            if now - since < grace_s:
                continue
            due = [
                r
                for r in self.replicas.values()
                if r.coordinator == node
                and not r.adopted
                and not r.superseded
                and r.confirmed
                and not r.final
                and r.records
            ]
            if due:
                out[node] = due
        return out

    def down_since(self, coordinator: str) -> float | None:
        return self._down_since.get(coordinator)

    def next_due(self, grace_s: float) -> float | None:
        return min((t + grace_s for t in self._down_since.values()), default=None)


# ---------------------------------------------------------------- worker side


class EpochBook:
    """The newest (epoch, coordinator id, address) a worker knows per task."""

    def __init__(self, kept: int = EPOCHS_KEPT) -> None:
        self.kept = kept
        self._known: dict[str, tuple[int, str, str]] = {}

    def get(self, task_id: str) -> tuple[int, str, str] | None:
        return self._known.get(task_id)

    def learn(self, task_id: str, epoch: int, coordinator: str, addr: str) -> bool:
        """Remember a claim; True if it is newer than what was known (or the first)."""
        known = self._known.get(task_id)
        if known is not None and not newer((epoch, coordinator), known[:2]):
            return False
        self._known.pop(task_id, None)
        self._known[task_id] = (epoch, coordinator, addr)
        while len(self._known) > self.kept:
            del self._known[next(iter(self._known))]
        return True

    def stale(self, task_id: str, epoch: int) -> bool:
        """Whether a message of ``epoch`` for this task is superseded (an older epoch;
        two coordinators of one epoch, the rare tie, are told apart by claims only)."""
        known = self._known.get(task_id)
        return known is not None and epoch < known[0]
