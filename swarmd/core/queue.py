"""The ready queue: which ready subtask the coordinator should try to place next.

Subtasks whose dependencies are done wait here, keyed by ``(task id, subtask id)``, one
*lane* per priority class (rank: critical 0, high 1, normal 2, low 3). Within a lane
the order is

1. **deadline** — earliest first, none last (absolute, on the clock of ``now``; the
   coordinator passes each subtask's own latest finish: its task's deadline less the
   estimated chain of work that must still follow it, so a job's early steps carry an
   earlier deadline than its last one);
2. **urgency** — greater first: the upward rank (estimated seconds of the longest chain
   from the subtask to the end of its job), so that within a job the critical path
   goes first, as in list scheduling (HEFT);
3. **submit order** — first pushed, first out.

Between lanes the order is **strict priority with a guaranteed share** ("class shares"),
which replaced one level of aging per 30 s:

* **critical** always goes first: nothing ever passes it;
* every other class ``c`` has a guaranteed minimum share ``shares[c]`` of the starts
  (:data:`DEFAULT_SHARES`: high 10 %, normal 5 %, low 5 %) once it is *starved*: its
  oldest queued subtask has waited ``patience_s`` (:data:`DEFAULT_PATIENCE_S`, 30 s).
  Each start of another class adds ``shares[c]`` to the credit of every starved class
  (capped at 1: no banking); a start of ``c`` itself takes 1 off (not below 0). A class
  whose credit reached 1 is *owed*: its lane goes right after critical, ahead of the
  classes above it, until it has had its start;
* otherwise, by rank: a lower class never starts while a higher one waits, unless the
  higher one's subtasks do not fit where a slot is free (the coordinator walks on
  past what it cannot place).

Why this and not aging or a weighted fair queue: aging (and WFQ, which serves every
backlogged class by its weight all the time) starts lower-priority work ahead of
higher-priority work as a matter of course — 172 of 510 starts on the agent workload of
``bench/scheduling``. A guaranteed share does it only for a class that has been starved
for ``patience_s`` and then ``1 / shares[c]`` starts, and then only once: the share is a
reservation, like a guaranteed capacity. Under 100 % of capacity the classes above
rarely keep a class waiting that long, so the order is strict priority (on the agent
workload at 0.8x: no start out of order at all); under sustained overload by the classes
above, the share is what keeps a class moving. The count is in starts, not seconds,
because starts are what a waiting subtask needs, and they bound its wait whatever the
run times are.

**The guarantee** (``tests/test_queue.py`` checks it with hypothesis): once the oldest
subtask of class ``c`` (not critical) has waited ``patience_s``, at most
``ceil(1 / shares[c]) + 2`` starts of other classes, not counting critical ones, go by
before one of ``c``'s, provided its subtask fits the freed slot (the 2: other owed
classes taking their turn first). With ``shares[c] = 0`` the class has no guarantee
(strict priority). **Priority respected**: a start passes a waiting higher class only
when the class started was owed (its credit reached 1) and never when critical waits.

Time enters only through ``patience_s``: the queue's clock is the latest ``now`` given
to :meth:`~ReadyQueue.push`, :meth:`~ReadyQueue.pop` or :meth:`~ReadyQueue.walk` (it
never goes back). ``push`` must not be called during a :meth:`ReadyQueue.walk`.

:meth:`ReadyQueue.walk` yields the order lazily for one scheduling pass (the
coordinator walks it, may skip what it cannot place now and stops when nothing more
fits; every subtask it places is taken out with ``remove(key, started=True)``, which
moves the credits, so the walk puts an owed class next at once);
:meth:`ReadyQueue.ordered` is the whole list; :meth:`ReadyQueue.pop` takes the first
(and counts it as started). Costs: push, pop, remove are O(log n) amortised (a heap per
lane, removed entries are left in place and compacted when they outnumber the live
ones); a walk costs O(log n) per subtask it yields.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["CRITICAL", "DEFAULT_PATIENCE_S", "DEFAULT_SHARES", "Key", "ReadyQueue", "share_bound"]

Key = tuple[str, str]  # (task id, subtask id)

CRITICAL: Final = 0  # the rank nothing passes
# rank -> guaranteed minimum share of the starts while it has work waiting
DEFAULT_SHARES: Final[Mapping[int, float]] = {1: 0.10, 2: 0.05, 3: 0.05}
DEFAULT_PATIENCE_S: Final = 30.0  # a class's oldest has waited this long: it is starved
_OWED: Final = 1.0 - 1e-9


def share_bound(share: float) -> int | None:
    """Starts of other (non-critical) classes that may go by before a waiting class with
    this share gets one: ``ceil(1 / share)``; None without a share (no guarantee)."""
    return None if share <= 0.0 else math.ceil(1.0 / share - 1e-9)


@dataclass(slots=True)
class _Entry:
    key: Key
    rank: int
    deadline: float | None
    urgency: float
    seq: int  # submit order
    since: float = 0.0  # when it was pushed (on the queue's clock)
    live: bool = True

    def sort_key(self) -> tuple[float, float, int]:
        deadline = math.inf if self.deadline is None else self.deadline
        return (deadline, -self.urgency, self.seq)


_Item = tuple[float, float, int, _Entry]  # (deadline or inf, -urgency, seq, entry)


class _Lane:
    """One class's entries in a binary heap, and in push order (for the oldest);
    removed entries stay in both until compaction."""

    __slots__ = ("arrivals", "heap", "live")

    def __init__(self) -> None:
        self.heap: list[_Item] = []
        self.arrivals: deque[_Entry] = deque()
        self.live = 0

    def push(self, entry: _Entry) -> None:
        heapq.heappush(self.heap, (*entry.sort_key(), entry))
        self.arrivals.append(entry)
        self.live += 1

    def oldest(self) -> _Entry | None:
        arrivals = self.arrivals
        while arrivals and not arrivals[0].live:
            arrivals.popleft()
        return arrivals[0] if arrivals else None

    def compact(self) -> bool:
        """Drop removed entries when they outnumber the live ones; True if it did."""
        if len(self.heap) - self.live <= max(16, self.live):
            return False
        self.heap = [item for item in self.heap if item[3].live]
        heapq.heapify(self.heap)
        self.arrivals = deque(e for e in self.arrivals if e.live)
        return True

    def first(self) -> tuple[_Entry | None, bool]:
        """The best live entry, dropping removed ones off the top (True: it did)."""
        heap = self.heap
        dropped = False
        while heap and not heap[0][3].live:
            heapq.heappop(heap)
            dropped = True
        return (heap[0][3] if heap else None), dropped

    def cursor(self) -> _Cursor:
        return _Cursor(self.heap)


class _Cursor:
    """Live entries of a heap in order, lazily: a frontier of heap positions (the heap
    array is not changed while a cursor runs: removals only mark entries)."""

    __slots__ = ("frontier", "heap")

    def __init__(self, heap: list[_Item]) -> None:
        self.heap = heap
        self.frontier: list[tuple[_Item, int]] = [(heap[0], 0)] if heap else []

    def peek(self) -> _Entry | None:
        frontier = self.frontier
        while frontier:
            entry = frontier[0][0][3]
            if entry.live:
                return entry
            self._advance()
        return None

    def _advance(self) -> None:
        heap, frontier = self.heap, self.frontier
        _, i = heapq.heappop(frontier)
        for child in (2 * i + 1, 2 * i + 2):
            if child < len(heap):
                heapq.heappush(frontier, (heap[child], child))

    def next(self) -> _Entry | None:
        entry = self.peek()
        if entry is not None:
            self._advance()
        return entry


class ReadyQueue:
    """Ready subtasks: strict priority with a guaranteed share per class (critical
    never passed), then deadline, urgency, submit order within a class."""

    def __init__(
        self, shares: Mapping[int, float] | None = None, patience_s: float = DEFAULT_PATIENCE_S
    ) -> None:
        if not patience_s >= 0.0 or math.isinf(patience_s):
            raise ValueError(f"patience_s must be a finite number >= 0, got {patience_s!r}")
        self.patience_s = patience_s
        self._clock = -math.inf
        shares = dict(DEFAULT_SHARES if shares is None else shares)
        for rank, share in shares.items():
            if isinstance(rank, bool) or not isinstance(rank, int) or rank <= CRITICAL:
                raise ValueError(f"shares are for ranks above critical (>= 1), got {rank!r}")
            if not 0.0 <= share < 1.0:
                raise ValueError(f"share of rank {rank} must be in [0, 1), got {share!r}")
        if sum(shares.values()) > 1.0:
            raise ValueError(f"the shares add up to more than 1: {shares!r}")
        self.shares: dict[int, float] = {r: s for r, s in shares.items() if s > 0.0}
        self._credit: dict[int, float] = dict.fromkeys(self.shares, 0.0)
        self._entries: dict[Key, _Entry] = {}
        self._lanes: dict[int, _Lane] = {}
        self._seq = 0
        self._version = 0  # pushes, pops and compactions (a walk must not see one)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def credit(self, rank: int) -> float:
        """The class's credit toward its guaranteed share (1: owed a start)."""
        return self._credit.get(rank, 0.0)

    def owed(self) -> list[int]:
        """The classes owed a start that have subtasks waiting, most important first."""
        return sorted(
            r
            for r, c in self._credit.items()
            if c >= _OWED and (lane := self._lanes.get(r)) is not None and lane.live
        )

    def push(
        self,
        key: Key,
        priority_rank: int,
        deadline: float | None,
        now: float = 0.0,
        urgency: float = 0.0,
    ) -> None:
        """Queue a ready subtask. Raises ValueError if it is already queued."""
        if key in self._entries:
            raise ValueError(f"subtask {key!r} is already in the ready queue")
        if isinstance(priority_rank, bool) or not isinstance(priority_rank, int):
            raise ValueError(f"priority rank must be an int, got {priority_rank!r}")
        if priority_rank < 0:
            raise ValueError(f"priority rank must be >= 0, got {priority_rank!r}")
        if deadline is not None and math.isnan(deadline):
            raise ValueError("deadline must be a time or None, got NaN")
        if not math.isfinite(urgency):
            raise ValueError(f"urgency must be a finite number, got {urgency!r}")
        self._tick(now)
        entry = _Entry(key, priority_rank, deadline, urgency, self._seq, self._clock)
        self._seq += 1
        self._version += 1
        lane = self._lanes.get(priority_rank)
        if lane is None:
            lane = self._lanes[priority_rank] = _Lane()
        lane.compact()
        lane.push(entry)
        self._entries[key] = entry

    def _tick(self, now: float) -> None:
        if now > self._clock:
            self._clock = now

    def starved(self, rank: int) -> bool:
        """Whether the class's oldest queued subtask has waited ``patience_s``."""
        lane = self._lanes.get(rank)
        oldest = None if lane is None else lane.oldest()
        return oldest is not None and self._clock - oldest.since >= self.patience_s

    def _order(self) -> list[int]:
        """The lanes in the order they are served now: critical, owed, the rest."""
        owed = self.owed()
        rest = sorted(r for r, lane in self._lanes.items() if lane.live and r not in owed)
        if rest and rest[0] == CRITICAL:
            return [CRITICAL, *owed, *rest[1:]]
        return [*owed, *rest]

    def peek(self, now: float = 0.0) -> Key | None:
        """The subtask :meth:`pop` would return, left in the queue."""
        for rank in self._order():
            entry, dropped = self._lanes[rank].first()
            if dropped:
                self._version += 1  # the heap moved: a walk must not go on
            if entry is not None:
                return entry.key
        return None

    def pop(self, now: float = 0.0) -> Key | None:
        """Take out the first subtask (it counts as started); None when empty."""
        self._tick(now)
        key = self.peek(now)
        if key is not None:
            self._version += 1
            self.remove(key, started=True)
        return key

    def remove(self, key: Key, *, started: bool = False) -> bool:
        """Take ``key`` out: ``started`` when it is being placed (the shares count it),
        else cancelled, failed, ... False if it was not queued."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        entry.live = False
        self._lanes[entry.rank].live -= 1
        if started:
            self._count_start(entry.rank)
        return True

    def _count_start(self, rank: int) -> None:
        credit = self._credit
        for other, share in self.shares.items():
            if other == rank:
                credit[other] = max(0.0, credit[other] - 1.0)
            elif self.starved(other):
                credit[other] = min(1.0, credit[other] + share)

    def ordered(self, now: float = 0.0) -> list[Key]:
        """Every queued subtask, first to last (as a walk that places nothing)."""
        out: list[Key] = []
        for rank in self._order():
            items = sorted(i for i in self._lanes[rank].heap if i[3].live)
            out += [i[3].key for i in items]
        return out

    def walk(self, now: float = 0.0) -> Iterator[Key]:
        """The queued subtasks, first to last, produced lazily: a scheduling pass that
        stops after k subtasks costs O(k log n), not a sort of the queue.

        The caller may :meth:`remove` keys while walking (a removed key is not
        yielded); one removed with ``started=True`` may make a class owed, and the walk
        goes on with that class first. Pushing or popping during a walk ends it with
        RuntimeError.
        """
        self._tick(now)
        for lane in self._lanes.values():
            # Subtasks taken from the front leave removed entries on top of the heap:
            # dropped here, or every walk would step over all of them again.
            if lane.compact() | lane.first()[1]:
                self._version += 1
        version = self._version
        cursors = {rank: lane.cursor() for rank, lane in self._lanes.items()}
        while True:
            if self._version != version:
                raise RuntimeError("the ready queue was pushed to during a walk")
            entry: _Entry | None = None
            for rank in self._order():
                cursor = cursors.get(rank)
                if cursor is not None and (entry := cursor.next()) is not None:
                    break
            if entry is None:
                return
            yield entry.key
