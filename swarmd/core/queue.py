"""The ready queue: which ready subtask the coordinator should try to place next.

Subtasks whose dependencies are done wait here, keyed by ``(task id, subtask id)``.
They are ordered by

1. **effective rank** — the priority rank (critical 0, high 1, normal 2, low 3) minus
   one level for every full ``aging_s`` (default 30 s) the subtask has waited:
   ``rank - floor((now - pushed_at) / aging_s)``. Ranks may go below 0, so a waiting
   subtask eventually passes *any* newer one and nothing starves: a low subtask that
   has waited 60 s ranks with a fresh high one (and wins the tie if it has the earlier
   deadline or, both without one, by submit order), after 90 s with a fresh critical
   one;
2. **deadline** — earliest first, none last (absolute, on the same clock as ``now``);
3. **urgency** — greater first: the coordinator passes a subtask's upward rank (the
   estimated seconds of the longest chain from it to the end of its job), so that
   within a job the critical path goes first, as in list scheduling (HEFT);
4. **submit order** — first pushed, first out.

``aging_s = math.inf`` switches aging off. ``now`` must not go backwards between
pushes; an earlier ``now`` is taken as the latest one seen.

:meth:`ReadyQueue.walk` yields the order lazily for one scheduling pass (the
coordinator walks it, may skip what it cannot place now and stops when nothing more
fits); :meth:`ReadyQueue.ordered` is the whole list; :meth:`ReadyQueue.pop` takes the
first. Costs: push, pop, peek and remove are O(log n) amortised (one lane per rank in
push order, with a min-tree over (deadline, -urgency, submit order)); a walk costs
O(log n) per subtask it yields.
"""

from __future__ import annotations

import heapq
import math
import sys
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_AGING_S", "Key", "ReadyQueue"]

Key = tuple[str, str]  # (task id, subtask id)

DEFAULT_AGING_S: Final = 30.0

# (deadline or inf, -urgency, submit order, position in the lane)
_Leaf = tuple[float, float, int, int]
_EMPTY: Final[_Leaf] = (math.inf, math.inf, sys.maxsize, -1)
_MIN_SIZE: Final = 16


@dataclass(slots=True)
class _Entry:
    key: Key
    rank: int
    deadline: float | None
    since: float  # when it was pushed
    seq: int  # submit order
    urgency: float = 0.0  # greater first, after the deadline
    pos: int = -1  # index in its lane

    @property
    def deadline_key(self) -> float:
        return math.inf if self.deadline is None else self.deadline

    def leaf(self) -> _Leaf:
        return (self.deadline_key, -self.urgency, self.seq, self.pos)


class _Lane:
    """The entries of one priority rank, in push order (so ``since`` never decreases).

    Removed entries leave a hole (None) until the next compaction. ``tree`` is a segment
    tree of (deadline, -urgency, seq, pos) minima over the positions, for "best entry among the
    oldest k" queries.
    """

    __slots__ = ("entries", "head", "live", "size", "times", "tree")

    def __init__(self) -> None:
        self.entries: list[_Entry | None] = []
        self.times: list[float] = []
        self.size = _MIN_SIZE
        self.tree: list[_Leaf] = [_EMPTY] * (2 * _MIN_SIZE)
        self.head = 0  # first live position (== len(entries) when empty)
        self.live = 0

    def _rebuild(self) -> None:
        """Compact out the holes and size the tree for twice the live entries."""
        live = [e for e in self.entries[self.head :] if e is not None]
        size = _MIN_SIZE
        while size < 2 * (len(live) + 1):
            size *= 2
        tree = [_EMPTY] * (2 * size)
        for i, entry in enumerate(live):
            entry.pos = i
            tree[size + i] = entry.leaf()
        for i in range(size - 1, 0, -1):
            left, right = tree[2 * i], tree[2 * i + 1]
            tree[i] = left if left < right else right
        self.entries = list(live)
        self.times = [e.since for e in live]
        self.size = size
        self.tree = tree
        self.head = 0

    def _set(self, pos: int, leaf: _Leaf) -> None:
        tree = self.tree
        i = pos + self.size
        tree[i] = leaf
        i >>= 1
        while i:
            left, right = tree[2 * i], tree[2 * i + 1]
            tree[i] = left if left < right else right
            i >>= 1

    def append(self, entry: _Entry) -> None:
        if len(self.entries) >= self.size:
            self._rebuild()
        entry.pos = len(self.entries)
        self.entries.append(entry)
        self.times.append(entry.since)
        self._set(entry.pos, entry.leaf())
        self.live += 1

    def delete(self, entry: _Entry) -> None:
        self.entries[entry.pos] = None
        self._set(entry.pos, _EMPTY)
        self.live -= 1
        entries = self.entries
        head = self.head
        while head < len(entries) and entries[head] is None:
            head += 1
        self.head = head

    def oldest(self) -> _Entry | None:
        return self.entries[self.head] if self.head < len(self.entries) else None

    def best(self, lo: int, hi: int) -> _Entry | None:
        """The entry with the least (deadline, -urgency, seq) among positions [lo, hi)."""
        tree = self.tree
        found = _EMPTY
        left, right = lo + self.size, hi + self.size
        while left < right:
            if left & 1:
                if tree[left] < found:
                    found = tree[left]
                left += 1
            if right & 1:
                right -= 1
                if tree[right] < found:
                    found = tree[right]
            left >>= 1
            right >>= 1
        return None if found[3] < 0 else self.entries[found[3]]


class ReadyQueue:
    """Ready subtasks by effective rank (priority with aging), deadline, urgency, submit
    order."""

    def __init__(self, aging_s: float = DEFAULT_AGING_S) -> None:
        if not aging_s > 0.0:
            raise ValueError(f"aging_s must be > 0 (math.inf for no aging), got {aging_s!r}")
        self.aging_s = aging_s
        self._entries: dict[Key, _Entry] = {}
        self._lanes: dict[int, _Lane] = {}
        self._seq = 0
        self._clock = -math.inf

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def _level(self, since: float, now: float) -> int:
        """Levels gained by waiting from ``since`` to ``now``."""
        waited = now - since
        if not waited > 0.0:
            return 0
        levels = waited / self.aging_s
        return math.floor(levels) if math.isfinite(levels) else 0

    def effective_rank(self, key: Key, now: float) -> int:
        """The rank ``key`` sorts by at ``now`` (its priority rank minus levels gained)."""
        entry = self._entries[key]
        return entry.rank - self._level(entry.since, now)

    def push(
        self,
        key: Key,
        priority_rank: int,
        deadline: float | None,
        now: float,
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
        if now > self._clock:
            self._clock = now
        entry = _Entry(key, priority_rank, deadline, self._clock, self._seq, urgency)
        self._seq += 1
        lane = self._lanes.get(priority_rank)
        if lane is None:
            lane = self._lanes[priority_rank] = _Lane()
        lane.append(entry)
        self._entries[key] = entry

    def _first(self, now: float) -> _Entry | None:
        # The least effective rank: in each lane the oldest entry has gained the most.
        tops: list[tuple[int, int, _Lane]] = []  # (effective rank, levels, lane)
        for rank, lane in self._lanes.items():
            oldest = lane.oldest()
            if oldest is not None:
                levels = self._level(oldest.since, now)
                tops.append((rank - levels, levels, lane))
        if not tops:
            return None
        least = min(t[0] for t in tops)
        best: _Entry | None = None

        def minus_level(since: float) -> int:
            return -self._level(since, now)

        for effective, levels, lane in tops:
            if effective != least:
                continue
            # Levels never increase along a lane, and none exceeds the oldest's, so the
            # entries at this effective rank are the prefix [head, end) of the lane.
            end = bisect_right(lane.times, -levels, lane.head, key=minus_level)
            entry = lane.best(lane.head, end)
            if entry is not None and (best is None or entry.leaf()[:3] < best.leaf()[:3]):
                best = entry
        return best

    def peek(self, now: float) -> Key | None:
        """The subtask :meth:`pop` would return, left in the queue."""
        entry = self._first(now)
        return None if entry is None else entry.key

    def pop(self, now: float) -> Key | None:
        """Take out and return the first subtask at ``now``; None when empty."""
        entry = self._first(now)
        if entry is None:
            return None
        self._delete(entry)
        return entry.key

    def remove(self, key: Key) -> bool:
        """Take ``key`` out (placed, cancelled, ...). False if it was not queued."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        self._delete(entry)
        return True

    def _delete(self, entry: _Entry) -> None:
        del self._entries[entry.key]
        self._lanes[entry.rank].delete(entry)

    def ordered(self, now: float) -> list[Key]:
        """Every queued subtask, first to last at ``now`` (one sort: cheaper than a
        whole :meth:`walk` when every entry is wanted)."""
        level = self._level
        entries = sorted(
            self._entries.values(),
            key=lambda e: (e.rank - level(e.since, now), e.deadline_key, -e.urgency, e.seq),
        )
        return [e.key for e in entries]

    def walk(self, now: float) -> Iterator[Key]:
        """The queued subtasks, first to last at ``now``, produced lazily: a scheduling
        pass that stops after k subtasks costs O(k log n), not a sort of the queue.

        The caller may :meth:`remove` keys while walking (those yielded or not: a
        removed key is not yielded); pushing during a walk ends it with RuntimeError.
        Each lane splits into runs of equal effective rank (levels only fall along a
        lane); a heap holds the best entry of each run's unvisited ranges, found with
        the lane's (deadline, -urgency, seq) segment tree.
        """
        pushes = self._seq
        heap: list[tuple[int, float, float, int, _Lane, int, int, _Entry]] = []

        def add(effective: int, lane: _Lane, lo: int, hi: int) -> None:
            if lo < hi and (entry := lane.best(lo, hi)) is not None:
                leaf = (effective, entry.deadline_key, -entry.urgency, entry.seq)
                heapq.heappush(heap, (*leaf, lane, lo, hi, entry))

        def minus_level(since: float) -> int:
            return -self._level(since, now)

        for rank, lane in self._lanes.items():
            lo, end = lane.head, len(lane.entries)
            while lo < end:
                levels = self._level(lane.times[lo], now)
                hi = bisect_right(lane.times, -levels, lo, end, key=minus_level)
                add(rank - levels, lane, lo, hi)
                lo = hi
        while heap:
            effective, _, _, _, lane, lo, hi, entry = heapq.heappop(heap)
            if self._seq != pushes:
                raise RuntimeError("the ready queue was pushed to during a walk")
            if self._entries.get(entry.key) is not entry:  # removed since it was found
                add(effective, lane, lo, hi)
                continue
            pos = entry.pos
            yield entry.key
            add(effective, lane, lo, pos)
            add(effective, lane, pos + 1, hi)
