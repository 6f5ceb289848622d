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
from collections.abc import Hashable, Sequence
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

__all__ = ["MAX_STEPS", "Planner", "Step"]

MAX_STEPS: Final = 5000
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

    def hold(self, key: Hashable, node_id: str, model: str | None, until: float) -> None:
        """An attempt in flight on ``node_id`` (``model`` for llm) estimated to end at
        ``until``: it holds one slot of that pool until then."""
        until = max(until, self.now)
        self._finish[key] = until
        heap = self._pool((node_id, model))
        if heap is not None:
            heapq.heapreplace(heap, max(heap[0], until))

    def ready_at(self, step: Step) -> float:
        return max((self._finish.get(k, self.now) for k in step.after), default=self.now)

    def place(self, step: Step) -> float:
        """Plan ``step`` on the pool where it finishes first; its estimated finish (inf
        when no peer can run it; ``now`` past the limit: not simulated)."""
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
            finish = max(ready, heap[0]) + run_s
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
