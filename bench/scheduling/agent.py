"""An agent-like LLM workload on heterogeneous nodes, offered above capacity.

Four nodes (:data:`NODES`): a big GPU box with a 32B "deep" model (the only one with the
VRAM for it) and a 1.5B "fast" model, a desktop GPU and two laptops (CPU) with the fast
model, at different tokens/s and concurrency. The work (:func:`workload`): ~500 small
lint/format/syntax prompts (100-300 tokens) and ~10 large ones (2,000-6,000 tokens): most
need the deep model and 40 GiB of VRAM, the rest are whole-repo lint passes any fast
model can run. Priorities are swarmd's four (critical, high, normal, low: ranks 0-3),
mixed; some subtasks carry a deadline. Arrivals are Poisson at ``overload`` (1.5) times
the fast models' total throughput until all have arrived, so a backlog builds.

A request runs ``tokens / tokens_per_s + latency`` seconds on its profile, with
``tokens_per_s`` varying per request (lognormal, sigma 0.15) around the profile's mean;
a profile runs at most ``max_concurrency`` requests at once.

Policies:

* ``swarmd`` — the coordinator's loop: at every arrival or completion, the ready queue
  (the real :class:`~swarmd.core.queue.ReadyQueue`: strict priority with guaranteed
  class shares, then deadline, then submit order; ``swarmd_strict``: no shares) is
  walked and each subtask priced with the real
  :func:`~swarmd.core.pricing.price` against :class:`PeerCapacity` values that mirror the
  simulated nodes (in-flight requests per profile, advertised tokens/s and latency) and
  a :class:`~swarmd.core.pricing.ThroughputTracker` fed every completed request, with
  ``max_queue=0`` as :mod:`swarmd.work` runs it. What cannot be placed waits.
* ``round_robin`` — FIFO: at arrival, to the next node in turn that can run it (has
  the capability and the VRAM), into that node's FIFO queue.
* ``least_loaded`` — FIFO: at arrival, to the node that can run it with the fewest
  requests queued or running per slot of the matching profile.

Metrics (:func:`metrics`): the coefficient of variation of busy time across nodes (time
with at least one request running) and utilization (busy slot-seconds over slot
capacity), both over the whole run (until the last completion) and over the overloaded
window (until the last arrival, when there is always more work than capacity); the
makespan, when the last subtask any node could run finished (the backlog cleared),
deadline hit rate, priority inversions (a subtask
started while a higher-priority one that could have taken that same slot was waiting)
and the mean and 95th-percentile wait per priority class.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from swarmd.core.pricing import (
    Demand,
    GiB,
    ModelOffer,
    PeerCapacity,
    PricingConfig,
    ThroughputTracker,
    price,
)
from swarmd.core.queue import ReadyQueue

__all__ = [
    "CLASSES",
    "NODES",
    "Job",
    "Node",
    "Profile",
    "Start",
    "metrics",
    "priority_inversions",
    "run_policy",
    "workload",
]

CLASSES = ("critical", "high", "normal", "low")  # rank = index
SMALL_CAPS = ("lint", "format", "syntax")
DEEP_CAPS = ("architecture", "refactor", "security")


@dataclass(frozen=True)
class Profile:
    name: str
    capabilities: frozenset[str]
    tokens_per_s: float
    max_concurrency: int
    latency_s: float


@dataclass(frozen=True)
class Node:
    name: str
    vram: int  # bytes on its one GPU; 0 = none
    cores: int
    profiles: tuple[Profile, ...]


def _fast(tps: float, conc: int, latency_s: float) -> Profile:
    return Profile("fast", frozenset(SMALL_CAPS), tps, conc, latency_s)


NODES: tuple[Node, ...] = (
    Node(
        "big",
        48 * GiB,
        16,
        (Profile("deep", frozenset(DEEP_CAPS), 30.0, 2, 0.4), _fast(120.0, 4, 0.05)),
    ),
    Node("desk", 24 * GiB, 8, (_fast(90.0, 4, 0.08),)),
    Node("laptop1", 0, 8, (_fast(25.0, 2, 0.2),)),
    Node("laptop2", 0, 4, (_fast(15.0, 1, 0.3),)),
)


@dataclass(frozen=True)
class Job:
    id: int
    arrival: float
    rank: int  # 0 critical .. 3 low
    capability: str
    min_vram: int
    tokens: int
    deadline: float | None  # absolute
    speed_noise: float  # this request's tokens/s factor


@dataclass(frozen=True)
class Start:
    job: int
    time: float
    node: str
    profile: str
    finish: float


def fits(job: Job, node: Node, profile: Profile) -> bool:
    return job.capability in profile.capabilities and job.min_vram <= node.vram


def workload(
    small: int = 500,
    large: int = 10,
    overload: float = 1.5,
    seed: int = 0,
    nodes: Sequence[Node] = NODES,
) -> list[Job]:
    rng = random.Random(f"agent:{small}:{large}:{overload}:{seed}")
    mean_small = 200.0
    capacity = sum(
        p.max_concurrency * p.tokens_per_s / mean_small
        for n in nodes
        for p in n.profiles
        if p.name == "fast"
    )  # small requests per second the cluster can serve
    rate = overload * capacity
    kinds = ["small"] * small + ["large"] * large
    rng.shuffle(kinds)
    jobs: list[Job] = []
    now = 0.0
    deep_left = math.ceil(large * 0.6)
    for i, kind in enumerate(kinds):
        now += rng.expovariate(rate)
        rank = rng.choices(range(4), weights=(1, 2, 5, 2))[0]
        if kind == "small":
            cap, vram, tokens = rng.choice(SMALL_CAPS), 0, rng.randint(100, 300)
            deadline = now + rng.choice((10.0, 20.0, 40.0)) if rng.random() < 0.3 else None
        else:
            if deep_left > 0:
                deep_left -= 1
                cap, vram, tokens = rng.choice(DEEP_CAPS), 40 * GiB, rng.randint(2000, 6000)
            else:
                cap, vram, tokens = "lint", 0, rng.randint(2000, 4000)
            deadline = now + 300.0 if rng.random() < 0.5 else None
        noise = math.exp(rng.gauss(0.0, 0.15))
        jobs.append(Job(i, now, rank, cap, vram, tokens, deadline, noise))
    return jobs


def _duration(job: Job, profile: Profile) -> float:
    return job.tokens / (profile.tokens_per_s * job.speed_noise) + profile.latency_s


class _Cluster:
    """Slots per (node, profile) and the event heap of completions."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.in_flight = {(n.name, p.name): 0 for n in nodes for p in n.profiles}
        self.events: list[tuple[float, int, str, str]] = []  # (finish, job, node, profile)
        self.starts: list[Start] = []

    def profile(self, node: str, name: str) -> Profile:
        return next(p for p in self.nodes[node].profiles if p.name == name)

    def free(self, node: str, name: str) -> bool:
        return self.in_flight[(node, name)] < self.profile(node, name).max_concurrency

    def start(self, job: Job, node: str, name: str, now: float) -> Start:
        finish = now + _duration(job, self.profile(node, name))
        self.in_flight[(node, name)] += 1
        heapq.heappush(self.events, (finish, job.id, node, name))
        started = Start(job.id, now, node, name, finish)
        self.starts.append(started)
        return started


def _peer(node: Node, cluster: _Cluster) -> PeerCapacity:
    return PeerCapacity(
        node_id=node.name,
        name=node.name,
        alive=True,
        draining=False,
        on_battery=False,
        battery_policy="run",
        cores=node.cores,
        load=0.0,
        ram_available=64 * GiB,
        gpus_vram_free=(node.vram,) if node.vram else (),
        gpus_vram_total=(node.vram,) if node.vram else (),
        slots_total=0,
        slots_busy=0,
        queue=0,
        rtt_s=0.002,
        cost_per_hour=0.0,
        models=tuple(
            ModelOffer(
                name=p.name,
                model=p.name,
                capabilities=p.capabilities,
                max_concurrency=p.max_concurrency,
                cost_per_mtok=0.0,
                latency_ms=p.latency_s * 1000.0,
                tokens_per_s=p.tokens_per_s,
                in_flight=cluster.in_flight[(node.name, p.name)],
            )
            for p in node.profiles
        ),
    )


def _events(jobs: Sequence[Job]) -> list[tuple[float, int]]:
    return sorted((j.arrival, j.id) for j in jobs)


def _swarmd(
    jobs: Sequence[Job], nodes: Sequence[Node], shares: dict[int, float] | None
) -> list[Start]:
    cluster = _Cluster(nodes)
    config = PricingConfig(max_queue=0)
    tracker = ThroughputTracker()
    queue = ReadyQueue(shares)
    arrivals = deque(_events(jobs))
    by_id = {j.id: j for j in jobs}
    while arrivals or cluster.events or len(queue):
        now = min(
            arrivals[0][0] if arrivals else math.inf,
            cluster.events[0][0] if cluster.events else math.inf,
        )
        while cluster.events and cluster.events[0][0] <= now:
            _, job_id, node, name = heapq.heappop(cluster.events)
            cluster.in_flight[(node, name)] -= 1
            job, profile = by_id[job_id], cluster.profile(node, name)
            seconds = _duration(job, profile)
            tracker.observe(node, name, job.tokens, seconds, latency_s=profile.latency_s)
        while arrivals and arrivals[0][0] <= now:
            job = by_id[arrivals.popleft()[1]]
            queue.push(("agent", str(job.id)), job.rank, job.deadline, now)
        infeasible: set[tuple[str, int]] = set()
        for key in queue.walk(now):
            if not any(cluster.free(n, p) for n, p in cluster.in_flight):
                break
            job = by_id[int(key[1])]
            if (job.capability, job.min_vram) in infeasible:
                continue  # placements only fill slots: it stays infeasible this pass
            demand = Demand(
                "llm", capability=job.capability, min_vram=job.min_vram, est_tokens=job.tokens
            )
            peers = [_peer(n, cluster) for n in nodes]
            winner = price(demand, peers, config, throughput=tracker).winner
            if winner is None or winner.model is None:
                infeasible.add((job.capability, job.min_vram))
                continue
            queue.remove(key, started=True)
            cluster.start(job, winner.node_id, winner.model, now)
    return cluster.starts


def _fifo(
    jobs: Sequence[Job],
    nodes: Sequence[Node],
    choose: Callable[[Job, list[tuple[Node, Profile]], _Cluster, dict[Any, deque[Job]]], int],
) -> list[Start]:
    cluster = _Cluster(nodes)
    queues: dict[tuple[str, str], deque[Job]] = {k: deque() for k in cluster.in_flight}
    arrivals = deque(_events(jobs))
    by_id = {j.id: j for j in jobs}
    while arrivals or cluster.events or any(queues.values()):
        now = min(
            arrivals[0][0] if arrivals else math.inf,
            cluster.events[0][0] if cluster.events else math.inf,
        )
        while cluster.events and cluster.events[0][0] <= now:
            _, _, done_on, done_profile = heapq.heappop(cluster.events)
            cluster.in_flight[(done_on, done_profile)] -= 1
        while arrivals and arrivals[0][0] <= now:
            job = by_id[arrivals.popleft()[1]]
            options = [(n, p) for n in nodes for p in n.profiles if fits(job, n, p)]
            if not options:
                raise ValueError(f"job {job.id} fits no node")
            node, profile = options[choose(job, options, cluster, queues)]
            queues[(node.name, profile.name)].append(job)
        for (node_name, name), waiting in queues.items():
            while waiting and cluster.free(node_name, name):
                cluster.start(waiting.popleft(), node_name, name, now)
    return cluster.starts


def _round_robin(jobs: Sequence[Job], nodes: Sequence[Node]) -> list[Start]:
    turn = [0]
    order = [n.name for n in nodes]

    def choose(
        job: Job, options: list[tuple[Node, Profile]], cluster: _Cluster, queues: Any
    ) -> int:
        # The next node in turn (from the pointer on) that can run it.
        for step in range(len(order)):
            name = order[(turn[0] + step) % len(order)]
            for i, (node, _) in enumerate(options):
                if node.name == name:
                    turn[0] = (turn[0] + step + 1) % len(order)
                    return i
        raise AssertionError("no option")

    return _fifo(jobs, nodes, choose)


def _least_loaded(jobs: Sequence[Job], nodes: Sequence[Node]) -> list[Start]:
    def choose(
        job: Job,
        options: list[tuple[Node, Profile]],
        cluster: _Cluster,
        queues: dict[Any, deque[Job]],
    ) -> int:
        def load(i: int) -> tuple[float, int]:
            node, profile = options[i]
            key = (node.name, profile.name)
            return (len(queues[key]) + cluster.in_flight[key]) / profile.max_concurrency, i

        return min(range(len(options)), key=load)

    return _fifo(jobs, nodes, choose)


def run_policy(policy: str, jobs: Sequence[Job], nodes: Sequence[Node] = NODES) -> list[Start]:
    if policy == "swarmd":
        return _swarmd(jobs, nodes, None)
    if policy == "swarmd_strict":
        return _swarmd(jobs, nodes, {})
    if policy == "round_robin":
        return _round_robin(jobs, nodes)
    if policy == "least_loaded":
        return _least_loaded(jobs, nodes)
    raise ValueError(f"unknown policy {policy!r}")


# ---------------------------------------------------------------- metrics


def priority_inversions(
    jobs: Sequence[Job], starts: Sequence[Start], nodes: Sequence[Node] = NODES
) -> int:
    """Starts of a subtask while a higher-priority one (lower rank) that could have taken
    the same slot (same node and profile: capability and VRAM) had arrived and was still
    waiting (it started strictly later)."""
    by_id = {j.id: j for j in jobs}
    started_at = {s.job: s.time for s in starts}
    node_of = {n.name: n for n in nodes}
    count = 0
    for s in starts:
        low = by_id[s.job]
        node = node_of[s.node]
        profile = next(p for p in node.profiles if p.name == s.profile)
        for high in jobs:
            if (
                high.rank < low.rank
                and high.arrival <= s.time
                and started_at.get(high.id, math.inf) > s.time
                and fits(high, node, profile)
            ):
                count += 1
                break
    return count


def _busy_union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _p95(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def _balance(
    starts: Sequence[Start], nodes: Sequence[Node], until: float
) -> tuple[dict[str, float], float, float]:
    """Busy time per node, its coefficient of variation and the slot utilization, all
    over [0, until]."""
    clipped = [(s.node, s.time, min(s.finish, until)) for s in starts if s.time < until]
    busy = {
        n.name: _busy_union([(a, b) for node, a, b in clipped if node == n.name]) for n in nodes
    }
    values = list(busy.values())
    mean_busy = statistics.fmean(values)
    cv = statistics.pstdev(values) / mean_busy if mean_busy > 0 else 0.0
    slots = sum(p.max_concurrency for n in nodes for p in n.profiles)
    used = sum(b - a for _, a, b in clipped)
    return busy, cv, used / (slots * until) if until > 0 else 0.0


def metrics(
    jobs: Sequence[Job], starts: Sequence[Start], nodes: Sequence[Node] = NODES
) -> dict[str, Any]:
    by_id = {j.id: j for j in jobs}
    assert len(starts) == len(jobs) and {s.job for s in starts} == set(by_id)
    makespan = max(s.finish for s in starts)
    window = max(j.arrival for j in jobs)
    busy_window, cv_window, util_window = _balance(starts, nodes, window)
    busy_total, cv_total, util_total = _balance(starts, nodes, makespan)
    with_deadline = [s for s in starts if by_id[s.job].deadline is not None]
    hits = sum(1 for s in with_deadline if s.finish <= (by_id[s.job].deadline or 0.0))
    waits: dict[str, list[float]] = {c: [] for c in CLASSES}
    for s in starts:
        job = by_id[s.job]
        waits[CLASSES[job.rank]].append(s.time - job.arrival)
    return {
        "makespan_s": makespan,
        "window_s": window,
        "busy_s": busy_total,
        "busy_window_s": busy_window,
        "busy_cv": cv_total,
        "utilization": util_total,
        "busy_cv_window": cv_window,
        "utilization_window": util_window,
        "backlog_cleared_s": max(
            (s.finish for s in starts if by_id[s.job].min_vram == 0), default=0.0
        ),
        "deadline_hit_rate": hits / len(with_deadline) if with_deadline else 1.0,
        "deadlines": len(with_deadline),
        "priority_inversions": priority_inversions(jobs, starts, nodes),
        "starts": len(starts),
        "wait_mean_s": {c: statistics.fmean(w) if w else 0.0 for c, w in waits.items()},
        "wait_p95_s": {c: _p95(w) for c, w in waits.items()},
    }
