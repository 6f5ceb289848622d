"""swarmd on the agent workload with its scheduling contract, in virtual time.

The coordinator's loop of :mod:`.agent` (the real :class:`~swarmd.core.queue.ReadyQueue`
and :func:`~swarmd.core.pricing.price`), plus what the coordinator does with deadlines:

* **admission** — a job with a deadline is planned at arrival with the real
  :class:`~swarmd.core.deadlines.Planner` (attempts in flight held until their
  estimated end, then the queued jobs that go ahead of it: a higher class, or its class
  with an earlier deadline, then the job) and refused when its estimated finish is past
  its deadline;
* **outlook** — every second (virtual) while a job with a deadline is open, and just
  after a running one's estimated end, the open jobs are planned in queue order (a
  running job past its estimated end taken to need 15 % of its estimate more); a job
  whose estimate passed its deadline is *reported* (the first time is recorded);
* **deadline passing** — a job not done at its deadline is failed, as
  :mod:`swarmd.core.tasks.timeouts` does: taken out of the queue, or its request
  cancelled and the slot freed.

Each start records whether its class was owed a start (the guaranteed share).
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from swarmd.core.deadlines import ClassLoad, Planner, Step, next_look
from swarmd.core.pricing import Demand, PricingConfig, ThroughputTracker, price
from swarmd.core.queue import ReadyQueue
from swarmd.core.tasks.outlook import MIN_LOOK_GAP_S, OUTLOOK_EVERY_S, PLANNED_PER_S

from .agent import Job, Node, Start, _Cluster, _duration, _events, _peer

__all__ = ["Outcome", "run_swarmd"]


@dataclass
class Outcome:
    starts: list[Start]  # a cancelled request's finish is when it was cancelled
    refused: dict[int, float] = field(default_factory=dict)  # job -> estimated finish
    dropped: dict[int, float] = field(default_factory=dict)  # job -> failed at (deadline)
    flagged: dict[int, float] = field(default_factory=dict)  # job -> first reported late
    owed: set[int] = field(default_factory=set)  # jobs started on their class's share
    estimated_end: dict[int, float] = field(default_factory=dict)  # job -> at its start
    pass_ms: list[float] = field(default_factory=list)  # wall ms per scheduling pass
    admit_ms: list[float] = field(default_factory=list)  # wall ms per admission check


def _demand(job: Job) -> Demand:
    return Demand("llm", capability=job.capability, min_vram=job.min_vram, est_tokens=job.tokens)


class _Sim:
    def __init__(self, jobs: Sequence[Job], nodes: Sequence[Node], shares: dict[int, float] | None):
        self.nodes = nodes
        self.by_id = {j.id: j for j in jobs}
        self.cluster = _Cluster(nodes)
        self.config = PricingConfig(max_queue=0)
        self.tracker = ThroughputTracker()
        self.queue = ReadyQueue(shares)
        self.running: dict[int, tuple[str, str, int, float]] = {}  # node, model, start, end
        self.done: set[int] = set()
        self.due: list[tuple[float, int]] = []  # (deadline, job) of admitted jobs
        self.load = ClassLoad()
        self.out = Outcome(starts=self.cluster.starts)

    def peers(self) -> list:  # type: ignore[type-arg]
        return [_peer(n, self.cluster) for n in self.nodes]

    def _plan(self, now: float) -> Planner:
        plan = Planner(self.peers(), self.config, now, throughput=self.tracker)
        for job_id, (node, model, index, end) in self.running.items():
            plan.hold(job_id, node, model, end, self.cluster.starts[index].time)
        return plan

    def admit(self, job: Job, now: float) -> bool:
        if job.deadline is None:
            return True
        started = time.perf_counter()
        plan = self._plan(now)
        mine = (job.rank, job.deadline)
        for key in self.queue.ordered(now):
            other = self.by_id[int(key[1])]
            if (other.rank, math.inf if other.deadline is None else other.deadline) <= mine:
                plan.place(Step(other.id, _demand(other)))
        pressure = self.load.pressure(job.rank, now, plan.capacity())
        finish = plan.place(Step(job.id, _demand(job)), pressure)
        self.out.admit_ms.append(1000.0 * (time.perf_counter() - started))
        if finish > job.deadline:
            self.out.refused[job.id] = finish
            return False
        return True

    def outlook(self, now: float) -> float:
        """Report the jobs whose estimate passed their deadline; when to look again (as
        the coordinator does: swarmd/core/tasks/outlook.py)."""
        plan = self._plan(now)
        queued = self.queue.ordered(now)
        for key in queued:
            plan.place(Step(int(key[1]), _demand(self.by_id[int(key[1])])))
        for deadline, job_id in self.due:
            finish = plan.finish_of(job_id)
            if finish is not None and finish > deadline and job_id not in self.out.flagged:
                self.out.flagged[job_id] = now
        ends = [end for j, (_, _, _, end) in self.running.items() if self.by_id[j].deadline]
        every = max(OUTLOOK_EVERY_S, len(queued) / PLANNED_PER_S)
        return next_look(now, every, ends, max(MIN_LOOK_GAP_S, len(queued) / PLANNED_PER_S))

    def expire(self, now: float) -> None:
        while self.due and self.due[0][0] <= now:
            _, job_id = heapq.heappop(self.due)
            if job_id in self.done:
                continue
            self.out.dropped[job_id] = now
            if self.queue.remove(("agent", str(job_id))):
                continue
            node, model, index, _ = self.running.pop(job_id)
            self.cluster.in_flight[(node, model)] -= 1
            self.cluster.starts[index] = replace(self.cluster.starts[index], finish=now)

    def complete(self, now: float) -> None:
        events = self.cluster.events
        while events and events[0][0] <= now:
            _, job_id, node, name = heapq.heappop(events)
            if job_id not in self.running:
                continue  # cancelled at its deadline
            del self.running[job_id]
            self.done.add(job_id)
            self.cluster.in_flight[(node, name)] -= 1
            job, profile = self.by_id[job_id], self.cluster.profile(node, name)
            self.tracker.observe(
                node, name, job.tokens, _duration(job, profile), latency_s=profile.latency_s
            )

    def schedule(self, now: float) -> None:
        started = time.perf_counter()
        infeasible: set[tuple[str, int]] = set()
        cluster = self.cluster
        for key in self.queue.walk(now):
            if not any(cluster.free(n, p) for n, p in cluster.in_flight):
                break
            job = self.by_id[int(key[1])]
            if (job.capability, job.min_vram) in infeasible:
                continue
            winner = price(_demand(job), self.peers(), self.config, throughput=self.tracker).winner
            if winner is None or winner.model is None:
                infeasible.add((job.capability, job.min_vram))
                continue
            if job.rank in self.queue.owed():
                self.out.owed.add(job.id)
            self.queue.remove(key, started=True)
            cluster.start(job, winner.node_id, winner.model, now)
            end = now + winner.rtt_s + (winner.run_s or 0.0)
            self.load.started(job.rank, winner.node_id, winner.model, end - now, now)
            self.out.estimated_end[job.id] = end
            self.running[job.id] = (winner.node_id, winner.model, len(cluster.starts) - 1, end)
        self.out.pass_ms.append(1000.0 * (time.perf_counter() - started))


def run_swarmd(
    jobs: Sequence[Job], nodes: Sequence[Node], shares: dict[int, float] | None = None
) -> Outcome:
    sim = _Sim(jobs, nodes, shares)
    arrivals = deque(_events(jobs))
    next_outlook = 0.0
    while arrivals or sim.cluster.events or len(sim.queue):
        now = min(
            arrivals[0][0] if arrivals else math.inf,
            sim.cluster.events[0][0] if sim.cluster.events else math.inf,
            sim.due[0][0] if sim.due else math.inf,
            max(next_outlook, 0.0) if sim.due else math.inf,
        )
        sim.complete(now)
        sim.expire(now)
        while arrivals and arrivals[0][0] <= now:
            job = sim.by_id[arrivals.popleft()[1]]
            if sim.admit(job, now):
                sim.queue.push(("agent", str(job.id)), job.rank, job.deadline, now)
                if job.deadline is not None:
                    heapq.heappush(sim.due, (job.deadline, job.id))
        sim.schedule(now)
        if sim.due and now >= next_outlook:
            next_outlook = sim.outlook(now)
    return sim.out
