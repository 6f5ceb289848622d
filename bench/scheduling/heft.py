"""HEFT and CPOP's critical path (Topcuoglu, Hariri, Wu, IEEE TPDS 2002), from the paper.

HEFT (Heterogeneous Earliest Finish Time) is an offline list scheduler:

1. every task gets its *upward rank*: its mean computation cost plus the largest
   (mean edge cost + upward rank) over its children — the length of the longest path
   from it to an exit task, with mean costs; with the paper's uniform network the mean
   communication cost of an edge is its cost;
2. tasks are taken in decreasing upward rank (a topological order); each goes to the
   processor with the earliest finish time, where its earliest start on a processor is
   the first idle gap there, at or after its data are ready, long enough to hold it
   (*insertion*: a task may fill a hole left between two tasks already placed).

A task's data are ready on processor ``p`` when every parent has finished and, for a
parent on another processor, its edge cost has passed.

The schedule length ratio divides a makespan by a lower bound: the sum, over the tasks of
the critical path, of each task's least cost over the processors. The critical path is
CPOP's: the tasks whose upward + downward rank (with mean costs) equals the largest, the
path from the entry task with the highest priority following, at each step, a child of
the same priority.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

from .dag import Dag

__all__ = [
    "Schedule",
    "critical_path",
    "downward_rank",
    "heft",
    "slr_bound",
    "upward_rank",
    "violations",
]

_EPS = 1e-9


@dataclass(frozen=True)
class Schedule:
    """Where and when each task ran: ``proc[i]``, ``start[i]``, ``finish[i]``."""

    proc: tuple[int, ...]
    start: tuple[float, ...]
    finish: tuple[float, ...]

    @property
    def makespan(self) -> float:
        return max(self.finish, default=0.0)


def upward_rank(dag: Dag) -> list[float]:
    mean, succ = dag.mean_cost, dag.succ
    rank = [0.0] * dag.n
    for i in reversed(range(dag.n)):  # edges go forward: children are done first
        tail = max((dag.edges[(i, j)] + rank[j] for j in succ[i]), default=0.0)
        rank[i] = mean[i] + tail
    return rank


def downward_rank(dag: Dag) -> list[float]:
    mean, pred = dag.mean_cost, dag.pred
    rank = [0.0] * dag.n
    for i in range(dag.n):
        rank[i] = max((rank[j] + mean[j] + dag.edges[(j, i)] for j in pred[i]), default=0.0)
    return rank


def critical_path(dag: Dag) -> list[int]:
    """CPOP's critical path by mean costs (task indices, entry to exit)."""
    up, down, succ = upward_rank(dag), downward_rank(dag), dag.succ
    prio = [u + d for u, d in zip(up, down, strict=True)]
    entries = [i for i in range(dag.n) if not dag.pred[i]]
    task = max(entries, key=lambda i: (prio[i], -i))
    length = prio[task]
    path = [task]
    while succ[task]:
        on_path = [j for j in succ[task] if abs(prio[j] - length) <= _EPS * max(1.0, length)]
        task = (
            min(on_path) if on_path else max(succ[task], key=lambda j: (prio[j], -j))
        )  # on_path is never empty in exact arithmetic; the max only guards rounding
        path.append(task)
    return path


def slr_bound(dag: Dag) -> float:
    """SLR's denominator: sum over the critical path of each task's minimum cost."""
    return sum(min(dag.cost[i]) for i in critical_path(dag))


def _earliest_gap(busy: list[tuple[float, float]], ready: float, length: float) -> float:
    """The earliest start >= ready of an idle gap of ``length`` on a processor whose
    ``busy`` intervals are sorted by start and do not overlap."""
    start = ready
    # Skip intervals that end before we could start anyway.
    k = bisect.bisect_left(busy, (ready, -1.0))
    if k > 0 and busy[k - 1][1] > start:
        start = busy[k - 1][1]
    for s, f in busy[k:]:
        if start + length <= s + _EPS:
            return start
        start = max(start, f)
    return start


def heft(dag: Dag) -> Schedule:
    rank = upward_rank(dag)
    order = sorted(range(dag.n), key=lambda i: (-rank[i], i))
    pred = dag.pred
    proc = [-1] * dag.n
    start = [0.0] * dag.n
    finish = [0.0] * dag.n
    busy: list[list[tuple[float, float]]] = [[] for _ in range(dag.procs)]
    for i in order:
        best: tuple[float, float, int] | None = None  # (eft, est, processor)
        for p in range(dag.procs):
            ready = max(
                (finish[j] + (0.0 if proc[j] == p else dag.edges[(j, i)]) for j in pred[i]),
                default=0.0,
            )
            est = _earliest_gap(busy[p], ready, dag.cost[i][p])
            eft = est + dag.cost[i][p]
            if best is None or eft < best[0] - _EPS:
                best = (eft, est, p)
        assert best is not None
        eft, est, p = best
        proc[i], start[i], finish[i] = p, est, eft
        bisect.insort(busy[p], (est, eft))
    return Schedule(tuple(proc), tuple(start), tuple(finish))


def violations(dag: Dag, schedule: Schedule) -> list[str]:
    """Why ``schedule`` is not a valid schedule of ``dag`` (empty when it is): every task
    on a real processor for exactly its cost there, after its parents' data arrived
    (their finish, plus the edge cost across processors), and no two tasks overlapping
    on one processor."""
    out: list[str] = []
    if len(schedule.proc) != dag.n:
        return [f"{len(schedule.proc)} tasks scheduled, the graph has {dag.n}"]
    for i in range(dag.n):
        p = schedule.proc[i]
        if not 0 <= p < dag.procs:
            out.append(f"task {i}: processor {p}")
            continue
        took = schedule.finish[i] - schedule.start[i]
        if abs(took - dag.cost[i][p]) > 1e-6 * max(1.0, took) or schedule.start[i] < -1e-9:
            out.append(f"task {i}: ran {took} on processor {p}, costs {dag.cost[i][p]}")
    for (a, b), comm in dag.edges.items():
        arrives = schedule.finish[a] + (0.0 if schedule.proc[a] == schedule.proc[b] else comm)
        if schedule.start[b] < arrives - 1e-6 * max(1.0, arrives):
            out.append(f"task {b} started at {schedule.start[b]}, data of {a} at {arrives}")
    for p in range(dag.procs):
        runs = sorted(
            (schedule.start[i], schedule.finish[i], i)
            for i in range(dag.n)
            if schedule.proc[i] == p
        )
        for (_, f1, i), (s2, _, j) in itertools.pairwise(runs):
            if s2 < f1 - 1e-6 * max(1.0, f1):
                out.append(f"tasks {i} and {j} overlap on processor {p}")
    return out
