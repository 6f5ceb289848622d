"""Deadline estimates: when would this work finish, given what runs and what waits ahead
of it? Used at submit time (a deadline the cluster cannot meet is refused) and while a
task runs (a deadline that became unreachable is reported).

A :class:`Planner` is a list-scheduling simulation of the cluster from ``now`` on. Each
peer offers *pools* of slots — its shell/python slots (``slots_total``), and each llm
model profile (``max_concurrency``) — every slot free at ``now`` unless an attempt in
flight holds it (:meth:`Planner.hold`, until its estimated end). Work is then placed in
the order the ready queue would start it (:meth:`Planner.place`): each step goes to the
pool where it would *finish* first (earliest-finish-time), not before its dependencies
finish, taking the run estimate that :func:`swarmd.core.pricing.price` gives for that
peer when idle (``run_s + rtt_s``: the same estimate placement uses; queue waits come
from the simulation instead of pricing's guess).

It is an estimate, and an optimistic one where it knows nothing: busy slots whose work
this coordinator did not send are taken as free now, work that has not become ready is
taken to be ready as soon as its dependencies finish, and work submitted later (even of
a higher class) is not foreseen. So a refusal means the deadline cannot be met even if
things go well; an accepted deadline may still be missed, which the running task's
outlook then reports. The planner places at most ``limit`` steps (default
:data:`MAX_STEPS`); steps beyond are not simulated and :attr:`Planner.truncated` says so.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final

from swarmd.core.pricing import (
    Demand,
    ModelOffer,
    PeerCapacity,
    PricingConfig,
    ThroughputTracker,
    price,
)

__all__ = ["MAX_STEPS", "OVERRUN_SHARE", "ClassLoad", "Planner", "Step", "next_look"]

MAX_STEPS: Final = 5000
# An attempt still running past its estimated end is taken to need this share of its
# estimate again (request speeds vary by ~15 %): an overrun shows as soon as it starts.
OVERRUN_SHARE: Final = 0.15
LOOK_AFTER_END_S: Final = 0.05  # look again this long after an attempt's estimated end
PRESSURE_WINDOW_S: Final = 60.0
MAX_PRESSURE: Final = 0.95  # a wait is stretched at most 20x
_Pool = tuple[str, str | None]  # (node id, model profile or None for slots)


@dataclass(frozen=True, slots=True)
class Step:
    """One subtask to plan: ``key`` names it, ``after`` the keys it waits for (those
    not planned are taken as done)."""

    key: Hashable
    demand: Demand
    after: tuple[Hashable, ...] = ()


def _idle(peer: PeerCapacity) -> PeerCapacity:
    """The peer with nothing running: pricing's run estimate without its queue guess."""
    models = tuple(replace(m, in_flight=0) for m in peer.models)
    return replace(peer, slots_busy=0, queue=0, models=models)


def _capacity(peer: PeerCapacity, model: str | None) -> int:
    if model is None:
        return max(1, peer.slots_total)
    offer: ModelOffer | None = next((m for m in peer.models if m.name == model), None)
    return max(1, offer.max_concurrency if offer is not None else 1)


class ClassLoad:
    """Recent starts per class and pool: how much of each pool the classes above a rank
    took over the last ``window_s`` — the *pressure* that work of those classes, still
    to come, puts on a subtask of that rank while it waits (strict priority lets it
    pass). Admission stretches a wait on a pool by ``1 / (1 - pressure)``: if the
    classes above kept 60 % of a pool busy, a subtask there moves at 40 % of the pool's
    speed. An estimate of the future from the recent past, and the only way a deadline
    check sees the work that arrives after it."""

    def __init__(self, window_s: float = PRESSURE_WINDOW_S) -> None:
        self.window_s = window_s
        self._starts: deque[tuple[float, int, _Pool, float]] = deque()
        self._first = math.inf  # the first start seen: the window is shorter until then

    def started(self, rank: int, node_id: str, model: str | None, run_s: float, now: float) -> None:
        """A subtask of ``rank`` went to that pool, estimated to run ``run_s``."""
        self._first = min(self._first, now)
        self._starts.append((now, rank, (node_id, model), min(max(0.0, run_s), self.window_s)))
        self._forget(now)

    def _forget(self, now: float) -> None:
        starts = self._starts
        while starts and starts[0][0] < now - self.window_s:
            starts.popleft()

    def pressure(self, rank: int, now: float, capacity: Mapping[_Pool, int]) -> dict[_Pool, float]:
        """Per pool: the share of it that classes above ``rank`` took (at most
        :data:`MAX_PRESSURE`); pools they did not use are left out."""
        self._forget(now)
        busy: dict[_Pool, float] = {}
        for _, r, pool, run_s in self._starts:
            if r < rank:
                busy[pool] = busy.get(pool, 0.0) + run_s
        # Seen for less than a window: over what was seen (at least a tenth of one).
        span = min(self.window_s, max(now - self._first, self.window_s / 10))
        return {
            pool: min(MAX_PRESSURE, seconds / (span * max(1, capacity.get(pool, 1))))
            for pool, seconds in busy.items()
        }


class Planner:
    def __init__(
        self,
        peers: Sequence[PeerCapacity],
        pricing: PricingConfig,
        now: float,
        *,
        throughput: ThroughputTracker | None = None,
        limit: int = MAX_STEPS,
    ) -> None:
        self.now = now
        self.limit = limit
        self.truncated = 0  # steps not simulated past the limit
        self.unplaceable = 0  # steps no peer can run
        self._peers = {p.node_id: p for p in peers}
        self._idle = [_idle(p) for p in peers]
        self._pricing = replace(pricing, max_queue=0)
        self._throughput = throughput
        self._options: dict[Demand, list[tuple[_Pool, float]]] = {}
        self._pools: dict[_Pool, list[float]] = {}  # heap of slot free times
        self._finish: dict[Hashable, float] = {}
        self._placed = 0

    def _pool(self, pool: _Pool) -> list[float] | None:
        heap = self._pools.get(pool)
        if heap is None:
            peer = self._peers.get(pool[0])
            if peer is None:
                return None
            heap = self._pools[pool] = [self.now] * _capacity(peer, pool[1])
        return heap

    def options(self, demand: Demand) -> list[tuple[_Pool, float]]:
        """Where ``demand`` can run, with its run estimate there (seconds)."""
        known = self._options.get(demand)
        if known is None:
            placement = price(demand, self._idle, self._pricing, throughput=self._throughput)
            known = [
                ((c.node_id, c.model if demand.kind == "llm" else None), c.rtt_s + (c.run_s or 0.0))
                for c in placement.candidates
                if c.feasible
            ]
            self._options[demand] = known
        return known

    def hold(
        self,
        key: Hashable,
        node_id: str,
        model: str | None,
        until: float,
        started: float | None = None,
    ) -> None:
        """An attempt in flight on ``node_id`` (``model`` for llm) estimated to end at
        ``until``: it holds one slot of that pool until then. One past ``until`` that
        ``started`` then is taken to need :data:`OVERRUN_SHARE` of its estimate more."""
        if until <= self.now and started is not None:
            until = self.now + OVERRUN_SHARE * max(0.0, until - started)
        until = max(until, self.now)
        self._finish[key] = until
        heap = self._pool((node_id, model))
        if heap is not None:
            heapq.heapreplace(heap, max(heap[0], until))

    def ready_at(self, step: Step) -> float:
        return max((self._finish.get(k, self.now) for k in step.after), default=self.now)

    def capacity(self) -> dict[_Pool, int]:
        """Slots per pool of every peer (shell slots, and each model's concurrency)."""
        out: dict[_Pool, int] = {}
        for peer in self._peers.values():
            out[(peer.node_id, None)] = _capacity(peer, None)
            for offer in peer.models:
                out[(peer.node_id, offer.name)] = _capacity(peer, offer.name)
        return out

    def place(self, step: Step, pressure: Mapping[_Pool, float] | None = None) -> float:
        """Plan ``step`` on the pool where it finishes first; its estimated finish (inf
        when no peer can run it; ``now`` past the limit: not simulated). ``pressure``
        (:meth:`ClassLoad.pressure`) stretches its wait for a slot on each pool."""
        if self._placed >= self.limit:
            self.truncated += 1
            return self.now
        self._placed += 1
        ready = self.ready_at(step)
        best: tuple[float, list[float]] | None = None
        for pool, run_s in self.options(step.demand):
            heap = self._pool(pool)
            if heap is None:
                continue
            wait = max(0.0, heap[0] - ready)
            if pressure:
                wait /= 1.0 - pressure.get(pool, 0.0)
            finish = ready + wait + run_s
            if best is None or finish < best[0]:
                best = (finish, heap)
        if best is None:
            self.unplaceable += 1
            self._finish[step.key] = math.inf
            return math.inf
        finish, heap = best
        heapq.heapreplace(heap, max(heap[0], finish))
        self._finish[step.key] = finish
        return finish

    def finish_of(self, key: Hashable) -> float | None:
        return self._finish.get(key)


def next_look(now: float, every: float, ends: Iterable[float], min_gap: float) -> float:
    """When to plan again: after ``every`` seconds, or just after the first of ``ends``
    (estimated ends of attempts in flight for a deadline) that comes sooner, so that an
    attempt running past its estimate is reported before a deadline close behind it
    passes; never sooner than ``min_gap`` (what keeps planning within its budget)."""
    soonest = min((e for e in ends if e > now), default=math.inf) + LOOK_AFTER_END_S
    return max(now + min_gap, min(now + every, soonest))
