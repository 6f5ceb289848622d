"""The backlog: the coordinator's ready subtasks waiting for a placement.

It keeps three things in step: the :class:`~swarmd.core.queue.ReadyQueue` (priority
with guaranteed class shares, then each subtask's own latest finish, urgency), when
each subtask that backs off may go again, and the
*kind* of each queued subtask (its demand and the nodes it failed on) with how many
queued subtasks share each kind — which lets a schedule pass stop once every kind of
queued demand has found no peer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import TypeAlias

from swarmd.core.jobspec import PRIORITY_RANK
from swarmd.core.pricing import Demand
from swarmd.core.queue import DEFAULT_PATIENCE_S, Key, ReadyQueue
from swarmd.core.tasks.records import SubtaskRecord, TaskRecord

Kind: TypeAlias = tuple[Demand | None, frozenset[str]]  # a queued demand, failed nodes


class Backlog:
    def __init__(
        self, shares: Mapping[int, float] | None = None, patience_s: float = DEFAULT_PATIENCE_S
    ) -> None:
        self._queue = ReadyQueue(shares, patience_s)
        self._backoff: dict[Key, float] = {}  # ready subtasks waiting until a time
        self._kind: dict[Key, Kind] = {}
        self._kinds: Counter[Kind] = Counter()

    def __len__(self) -> int:
        return len(self._queue)

    def __contains__(self, key: object) -> bool:
        return key in self._queue

    def walk(self, now: float) -> Iterator[Key]:
        """The queued keys, best first (see :meth:`ReadyQueue.walk`)."""
        return self._queue.walk(now)

    def push(self, task: TaskRecord, rec: SubtaskRecord, now: float) -> None:
        """Queue the subtask (if it is not queued yet), not before ``rec.not_before``;
        its kind is taken afresh."""
        key = (task.id, rec.id)
        if rec.not_before > now:
            self._backoff[key] = rec.not_before
        if key not in self._queue:
            rank = PRIORITY_RANK.get(rec.spec.priority, PRIORITY_RANK["normal"])
            deadline = task.latest_finish(rec.id)
            self._queue.push(key, rank, deadline, now, task.urgency.get(rec.id, 0.0))
        self._unkind(key)
        kind = self._kind[key] = (rec.demand, rec.failed_nodes())
        self._kinds[kind] += 1

    def take(self, key: Key) -> None:
        """Out of the queue: it is being dispatched (a start, for the class shares)."""
        self._queue.remove(key, started=True)
        self._unkind(key)

    def drop(self, key: Key) -> None:
        """Out of the queue and its backoff forgotten (it is final)."""
        self._queue.remove(key)
        self._unkind(key)
        self._backoff.pop(key, None)

    def kind(self, key: Key) -> Kind:
        return self._kind[key]

    def kinds(self) -> int:
        """How many different kinds of demand are queued."""
        return len(self._kinds)

    def wakeups(self, now: float) -> list[float]:
        """When queued subtasks that back off may go; ``now`` for those whose wait has
        ended since a pass last looked. Forgets the waits that are over."""
        times: list[float] = []
        for key, not_before in list(self._backoff.items()):
            if not_before > now and key in self._queue:
                times.append(not_before)
                continue
            if key in self._queue:
                # Ended since the last pass looked (a wait that woke a little early):
                # a pass is due now, not at the caller's idle interval.
                times.append(now)
            del self._backoff[key]
        return times

    def _unkind(self, key: Key) -> None:
        kind = self._kind.pop(key, None)
        if kind is not None:
            self._kinds[kind] -= 1
            if not self._kinds[kind]:
                del self._kinds[kind]
