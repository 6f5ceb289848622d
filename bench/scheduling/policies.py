"""Online schedulers for a task graph, simulated in virtual time.

Every policy here is *online*: it sees a task only once all its parents have finished,
knows one run estimate per task (not the per-processor costs), and decides as time goes.
The simulation is faithful to the data model of :mod:`bench.scheduling.heft`: a task runs
on one processor at a time, for its cost on that processor, and cannot start before its
parents' outputs have arrived (their finish time, plus the edge cost when the parent ran
on another processor). Pricing knows nothing of that transfer, so the processor is held
while the data travel — the slot is taken at dispatch, as a swarmd worker's is.

* :func:`swarmd` — swarmd's placement before it priced the workers' queues (today's is
  :mod:`bench.scheduling.online`): whenever a processor frees or a task
  becomes ready, the ready tasks are walked in :class:`swarmd.core.queue.ReadyQueue`
  order (all subtasks of one job share its priority; among them the greater urgency —
  the upward rank from the run estimates, as :class:`swarmd.core.tasks.Coordinator`
  computes it — goes first; ``readiness_order=True`` gives every task urgency 0, which
  is what swarmd did before, so ready tasks go in the order they became ready), and
  each is placed by :func:`swarmd.core.pricing.price` against :class:`PeerCapacity`
  values that mirror the simulated state: one slot per processor, busy or not, the
  declared ``speed`` (related model) or 1.0 (unrelated: a node has no speed that holds
  for every task), and ``max_queue=0`` as :mod:`swarmd.work` configures it (a busy peer
  is not a candidate; the task waits in the coordinator's queue). ``Demand.est_seconds``
  is the task's cost on a speed-1 processor (related) or its mean cost (unrelated).
  With ``locality=True`` each demand also carries ``input_s``: when the task's inputs
  would be on each processor (see :mod:`swarmd.core.pricing`).
* :func:`round_robin` — each task, as it becomes ready, goes to the next processor in
  turn and waits in that processor's FIFO queue.
* :func:`least_loaded` — each task, as it becomes ready, goes to the processor with the
  fewest tasks queued or running there (ties: the lowest number), FIFO there.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable

from swarmd.core.pricing import Demand, PeerCapacity, PricingConfig, price
from swarmd.core.queue import ReadyQueue

from .dag import Dag
from .heft import Schedule

__all__ = ["POLICIES", "least_loaded", "round_robin", "swarmd"]

NORMAL = 2  # swarmd's rank for priority "normal"; a job's subtasks share it


def processor(j: int, busy: bool, speed: float) -> PeerCapacity:
    """Processor ``j`` of a task graph as a one-slot peer (bench/scheduling/online.py too)."""
    return PeerCapacity(
        node_id=f"p{j:03d}",
        name=f"p{j}",
        alive=True,
        draining=False,
        on_battery=False,
        battery_policy="run",
        cores=1,
        load=0.0,
        ram_available=1 << 34,
        gpus_vram_free=(),
        gpus_vram_total=(),
        slots_total=1,
        slots_busy=1 if busy else 0,
        queue=0,
        rtt_s=None,
        cost_per_hour=0.0,
        models=(),
        speed=speed,
    )


class _Sim:
    """Shared bookkeeping: finished tasks, their processors, the event heap."""

    def __init__(self, dag: Dag) -> None:
        self.dag = dag
        self.pred = dag.pred
        self.succ = dag.succ
        self.waiting = [len(p) for p in self.pred]
        self.proc = [-1] * dag.n
        self.start = [0.0] * dag.n
        self.finish = [0.0] * dag.n
        self.free = [True] * dag.procs
        self.events: list[tuple[float, int]] = []  # (finish, task)
        self.done = 0

    def data_ready(self, task: int, p: int) -> float:
        return max(
            (
                self.finish[j] + (0.0 if self.proc[j] == p else self.dag.edges[(j, task)])
                for j in self.pred[task]
            ),
            default=0.0,
        )

    def run(self, task: int, p: int, now: float) -> None:
        start = max(now, self.data_ready(task, p))
        self.proc[task], self.start[task] = p, start
        self.finish[task] = start + self.dag.cost[task][p]
        self.free[p] = False
        heapq.heappush(self.events, (self.finish[task], task))

    def entries(self) -> list[int]:
        return [i for i in range(self.dag.n) if not self.pred[i]]

    def advance(self) -> tuple[float, list[int]]:
        """Finish every task due at the next event time; the tasks that became ready."""
        now, task = heapq.heappop(self.events)
        finished = [task]
        while self.events and self.events[0][0] <= now:
            finished.append(heapq.heappop(self.events)[1])
        ready: list[int] = []
        for t in sorted(finished):
            self.free[self.proc[t]] = True
            self.done += 1
            for child in self.succ[t]:
                self.waiting[child] -= 1
                if self.waiting[child] == 0:
                    ready.append(child)
        return now, sorted(ready)

    def schedule(self) -> Schedule:
        return Schedule(tuple(self.proc), tuple(self.start), tuple(self.finish))


def swarmd(dag: Dag, *, locality: bool = False, readiness_order: bool = False) -> Schedule:
    sim = _Sim(dag)
    urgency = [0.0] * dag.n if readiness_order else _estimated_upward_rank(dag)

    def push(task: int, now: float) -> None:
        queue.push(("job", str(task)), NORMAL, None, now, urgency[task])

    config = PricingConfig(max_queue=0)  # as swarmd.work.Coordination sets it
    speeds = dag.speeds or (1.0,) * dag.procs
    queue = ReadyQueue()
    now = 0.0
    for task in sim.entries():
        push(task, now)
    while True:
        if any(sim.free):
            for key in queue.walk(now):
                if not any(sim.free):
                    break  # every peer is full: nothing else is feasible this pass
                task = int(key[1])
                input_s: tuple[tuple[str, float], ...] = ()
                if locality:
                    input_s = tuple(
                        (f"p{j:03d}", max(0.0, sim.data_ready(task, j) - now))
                        for j in range(dag.procs)
                    )
                demand = Demand("shell", est_seconds=dag.estimate(task), input_s=input_s)
                peers = [processor(j, not sim.free[j], speeds[j]) for j in range(dag.procs)]
                winner = price(demand, peers, config).winner
                assert winner is not None
                queue.remove(key)
                sim.run(task, int(winner.node_id[1:]), now)
        if sim.done == dag.n and not sim.events:
            break
        now, ready = sim.advance()
        for task in ready:
            push(task, now)
    return sim.schedule()


def _estimated_upward_rank(dag: Dag) -> list[float]:
    """Upward rank from what the coordinator knows: one estimate per task (edges not
    counted: swarmd has no transfer estimate), as Coordinator's urgency."""
    succ = dag.succ
    rank = [0.0] * dag.n
    for i in reversed(range(dag.n)):
        rank[i] = dag.estimate(i) + max((rank[j] for j in succ[i]), default=0.0)
    return rank


def _local_queues(dag: Dag, choose: Callable[[list[deque[int]], _Sim], int]) -> Schedule:
    sim = _Sim(dag)
    queues: list[deque[int]] = [deque() for _ in range(dag.procs)]
    now = 0.0
    for task in sim.entries():
        queues[choose(queues, sim)].append(task)
    while True:
        for p in range(dag.procs):
            if sim.free[p] and queues[p]:
                sim.run(queues[p].popleft(), p, now)
        if sim.done == dag.n and not sim.events:
            break
        now, ready = sim.advance()
        for task in ready:
            queues[choose(queues, sim)].append(task)
    return sim.schedule()


def round_robin(dag: Dag) -> Schedule:
    turn = [0]

    def choose(queues: list[deque[int]], sim: _Sim) -> int:
        p = turn[0] % len(queues)
        turn[0] += 1
        return p

    return _local_queues(dag, choose)


def least_loaded(dag: Dag) -> Schedule:
    def choose(queues: list[deque[int]], sim: _Sim) -> int:
        return min(range(len(queues)), key=lambda p: (len(queues[p]) + (not sim.free[p]), p))

    return _local_queues(dag, choose)


POLICIES: dict[str, Callable[[Dag], Schedule]] = {
    "swarmd": swarmd,
    "round_robin": round_robin,
    "least_loaded": least_loaded,
}
