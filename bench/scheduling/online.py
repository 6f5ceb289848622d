"""swarmd's online placement of a task graph, simulated in virtual time, with the
workers' queues, earliest-finish pricing, look-ahead and data locality.

What the coordinator does (:mod:`swarmd.core.tasks.scheduler`), with the real
:class:`~swarmd.core.queue.ReadyQueue` and :func:`~swarmd.core.pricing.price`:

* a task is seen only once all its parents have finished; ready tasks are walked in
  queue order (one job: one priority; the greater urgency — the upward rank from the
  run estimates — first; ``readiness_order=True`` gives every task urgency 0);
* each processor is a worker with one slot and a FIFO queue of ``queue`` tasks beyond it
  (``[node] max_queue``; swarmd's adaptive default is one per slot for work of 50 ms or
  more); a dispatched task starts on its processor once the slot is free and its inputs
  have arrived (its parents' finish, plus the edge cost from another processor); a task
  goes into a busy worker's queue only when that slot is due within ``queue_ahead_s``
  (late binding: further ahead the coordinator keeps it and decides again);
* pricing sees each processor's ``free_in_s``, estimated from the tasks the coordinator
  sent there (:func:`swarmd.core.pricing_eft.free_in`: their run estimates, in order);
  the run estimate is ``Demand.est_seconds`` (the cost on a speed-1 processor in the
  related model, the mean cost in the unrelated one) over the declared ``speed``;
* ``lookahead``: a task whose best finish is on a processor with a full queue waits in
  the coordinator's queue for it (``Placement.wait_for``), and the next tasks in the
  pass see that processor as reserved;
* ``locality``: ``Demand.input_s`` gives, per processor, when the task's inputs would
  be there — the edge costs, which a coordinator estimates from the artifacts' sizes
  and the measured bandwidth between peers (:mod:`swarmd.core.locality`); here they are
  taken as exact, as HEFT takes them.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import replace

from swarmd.core.pricing import Demand, PeerCapacity, PricingConfig, price
from swarmd.core.pricing_eft import Held, after_dispatch, free_in
from swarmd.core.queue import ReadyQueue

from .dag import Dag
from .heft import Schedule
from .policies import processor

__all__ = ["swarmd_online"]

NORMAL = 2  # swarmd's rank for priority "normal"; a job's subtasks share it


class _Workers:
    """Processors with one slot and a FIFO queue each, in virtual time."""

    def __init__(self, dag: Dag) -> None:
        self.dag = dag
        self.pred, self.succ = dag.pred, dag.succ
        self.waiting = [len(p) for p in self.pred]
        self.proc = [-1] * dag.n
        self.start = [0.0] * dag.n
        self.finish = [0.0] * dag.n
        self.running: list[int | None] = [None] * dag.procs
        self.queues: list[deque[int]] = [deque() for _ in range(dag.procs)]
        self.held: list[dict[int, Held]] = [{} for _ in range(dag.procs)]  # estimates
        self.events: list[tuple[float, int]] = []
        self.wakes: dict[int, float] = {}  # processor -> its pending wake-up
        self.done = 0

    def data_ready(self, task: int, p: int) -> float:
        return max(
            (
                self.finish[j] + (0.0 if self.proc[j] == p else self.dag.edges[(j, task)])
                for j in self.pred[task]
            ),
            default=0.0,
        )

    def dispatch(self, task: int, p: int, held: Held, now: float) -> None:
        self.proc[task] = p
        self.held[p][task] = held
        self.queues[p].append(task)
        self._next(p, now)

    def _next(self, p: int, now: float) -> None:
        if self.running[p] is None and self.queues[p]:
            task = self.queues[p].popleft()
            self.running[p] = task
            self.start[task] = max(now, self.data_ready(task, self.proc[task]))
            self.finish[task] = self.start[task] + self.dag.cost[task][p]
            heapq.heappush(self.events, (self.finish[task], task))

    def advance(self) -> tuple[float, list[int]]:
        """Finish every task due at the next event time; the tasks that became ready.
        A wake-up (task -1, see :meth:`wake`) finishes nothing: a pass runs then."""
        now, task = heapq.heappop(self.events)
        finished = [task]
        while self.events and self.events[0][0] <= now:
            finished.append(heapq.heappop(self.events)[1])
        ready: list[int] = []
        for t in sorted(finished):
            if t < 0:
                continue
            p = self.proc[t]
            self.running[p] = None
            del self.held[p][t]
            self.done += 1
            for child in self.succ[t]:
                self.waiting[child] -= 1
                if self.waiting[child] == 0:
                    ready.append(child)
            self._next(p, now)
        return now, sorted(ready)

    def wake(self, p: int, at: float, now: float) -> None:
        """A pass at ``at``: the coordinator prices its held subtasks again when the
        processor ``p`` they wait for was due to free (the daemon's loop passes every
        0.5 s); one such wake-up pending per processor."""
        if self.wakes.get(p, -math.inf) > now:
            return
        self.wakes[p] = at
        heapq.heappush(self.events, (at, -1))

    def peer(self, p: int, speed: float, queue: int, now: float) -> PeerCapacity:
        return replace(
            processor(p, False, speed),
            slots_busy=len(self.held[p]),
            queue_max=queue,
            free_in_s=free_in(1, self.held[p].values(), now),
        )

    def schedule(self) -> Schedule:
        return Schedule(tuple(self.proc), tuple(self.start), tuple(self.finish))


def swarmd_online(
    dag: Dag,
    *,
    queue: int = 1,
    lookahead: bool = True,
    locality: bool = True,
    readiness_order: bool = False,
    queue_ahead_s: float = 1.0,
) -> Schedule:
    sim = _Workers(dag)
    urgency = [0.0] * dag.n if readiness_order else _estimated_upward_rank(dag)
    config = PricingConfig(
        max_queue=0,
        lookahead_max_s=math.inf if lookahead else 0.0,
        queue_slot_wait_s=0.0,
        queue_ahead_s=queue_ahead_s,
    )
    speeds = dag.speeds or (1.0,) * dag.procs
    ready = ReadyQueue()
    now = 0.0
    for task in range(dag.n):
        if not sim.pred[task]:
            ready.push(("job", str(task)), NORMAL, None, now, urgency[task])
    while True:
        _pass(sim, ready, config, speeds, queue, locality, now)
        if sim.done == dag.n:
            break
        now, became = sim.advance()
        for task in became:
            ready.push(("job", str(task)), NORMAL, None, now, urgency[task])
    return sim.schedule()


def _pass(
    sim: _Workers,
    ready: ReadyQueue,
    config: PricingConfig,
    speeds: tuple[float, ...],
    queue: int,
    locality: bool,
    now: float,
    wake: bool = True,
) -> None:
    """One schedule pass: each ready task in order to its winner, or held for a busier
    processor (then reserved there for the rest of the pass)."""
    peers = [sim.peer(p, speeds[p], queue, now) for p in range(sim.dag.procs)]
    for key in list(ready.walk(now)):
        task = int(key[1])
        input_s: tuple[tuple[str, float], ...] = ()
        if locality:
            input_s = tuple(
                (f"p{p:03d}", max(0.0, sim.data_ready(task, p) - now)) for p in range(sim.dag.procs)
            )
        demand = Demand("shell", est_seconds=sim.dag.estimate(task), input_s=input_s)
        placement = price(demand, peers, config)
        if placement.winner is None:
            break  # every processor's queue is full: nothing else fits this pass
        chosen = placement.wait_for or placement.winner
        p = int(chosen.node_id[1:])
        run_s = (sim.dag.estimate(task)) / speeds[p]
        peer = peers[p]
        free = after_dispatch(peer.free_in_s, run_s, chosen.input_s)
        if placement.wait_for is not None:  # held: reserved for the rest of this pass
            if wake and peer.free_in_s and peer.free_in_s[0] > 1e-6:
                sim.wake(p, now + peer.free_in_s[0], now)
            peers[p] = _replace(peer, free, peer.slots_busy)
            continue
        ready.remove(key)
        sim.dispatch(task, p, Held(now, run_s, chosen.input_s), now)
        peers[p] = _replace(peer, free, peer.slots_busy + 1)


def _replace(peer: PeerCapacity, free: tuple[float, ...], busy: int) -> PeerCapacity:
    return replace(peer, free_in_s=free, slots_busy=busy)


def _estimated_upward_rank(dag: Dag) -> list[float]:
    """Upward rank from one estimate per task, as the Coordinator's urgency (without
    edges: the sizes of a task's outputs are not known before it runs)."""
    succ = dag.succ
    rank = [0.0] * dag.n
    for i in reversed(range(dag.n)):
        rank[i] = dag.estimate(i) + max((rank[j] for j in succ[i]), default=0.0)
    return rank
