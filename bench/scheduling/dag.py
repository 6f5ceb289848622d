"""Random task graphs in the style of Topcuoglu, Hariri and Wu (IEEE TPDS 13(3), 2002).

The paper's generator takes

* ``v`` — the number of tasks;
* ``alpha`` — the shape: the graph has about ``sqrt(v) / alpha`` levels, and the width of
  each level is drawn uniformly with mean ``alpha * sqrt(v)`` (alpha >> 1: short and wide,
  much parallelism; alpha << 1: long and thin);
* ``out_degree`` — the mean out-degree of a task (of the tasks that have successors);
* ``ccr`` — communication to computation ratio: mean edge cost / mean computation cost;
* ``beta`` — heterogeneity of the processors: a task of mean cost ``w_i`` costs
  ``w_ij`` uniform in ``[w_i (1 - beta/2), w_i (1 + beta/2)]`` on processor ``j``;
* ``w_dag`` — the mean computation cost of the graph: ``w_i`` is uniform in
  ``[0, 2 w_dag]``.

Two cost models (:data:`CostModel`):

* ``"unrelated"`` — the paper's: every (task, processor) pair draws its own factor in
  ``[1 - beta/2, 1 + beta/2]``, so no processor is uniformly faster;
* ``"related"`` — each processor draws one slowness factor ``f_j`` in the same range
  (at least :data:`MIN_FACTOR`) and ``w_ij = w_i * f_j``: processor ``j`` has the speed
  ``1 / f_j``, which an online scheduler can be told (swarmd's declared ``speed``).

Edge costs (the time to move a parent's output to another processor; 0 on the same
processor) are uniform in ``[0, 2 * ccr * mean(w_i)]``, so their mean is ``ccr`` times
the graph's mean computation cost. Tasks are numbered in level order, so every edge goes
from a lower number to a higher one. Everything is drawn from one seeded
:class:`random.Random`: the same arguments give the same graph.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

__all__ = ["MIN_FACTOR", "CostModel", "Dag", "from_tables", "random_dag"]

CostModel = Literal["related", "unrelated"]
MIN_FACTOR = 0.05  # no processor (or task on a processor) is more than 20x faster


@dataclass(frozen=True)
class Dag:
    """A task graph with its costs on ``procs`` processors."""

    cost: tuple[tuple[float, ...], ...]  # cost[i][j]: task i on processor j
    edges: dict[tuple[int, int], float]  # (parent, child) -> communication cost
    speeds: tuple[float, ...] = ()  # related model: processor speeds; () when unrelated
    w: tuple[float, ...] = ()  # related model: task i's cost on a speed-1 processor

    @property
    def n(self) -> int:
        return len(self.cost)

    @property
    def procs(self) -> int:
        return len(self.cost[0]) if self.cost else 0

    @property
    def mean_cost(self) -> tuple[float, ...]:
        return tuple(sum(row) / len(row) for row in self.cost)

    @property
    def succ(self) -> tuple[tuple[int, ...], ...]:
        out: list[list[int]] = [[] for _ in range(self.n)]
        for a, b in sorted(self.edges):
            out[a].append(b)
        return tuple(tuple(s) for s in out)

    @property
    def pred(self) -> tuple[tuple[int, ...], ...]:
        out: list[list[int]] = [[] for _ in range(self.n)]
        for a, b in sorted(self.edges):
            out[b].append(a)
        return tuple(tuple(p) for p in out)

    def ccr(self) -> float:
        """Mean edge cost over mean computation cost (0 without edges)."""
        if not self.edges:
            return 0.0
        comm = sum(self.edges.values()) / len(self.edges)
        comp = sum(self.mean_cost) / self.n
        return comm / comp

    def estimate(self, task: int) -> float:
        """What an online scheduler is told about a task: its cost on a speed-1
        processor (related model) or its mean cost over processors (unrelated)."""
        return self.w[task] if self.w else self.mean_cost[task]


def from_tables(cost: list[list[float]], edges: dict[tuple[int, int], float]) -> Dag:
    """A graph from explicit tables (e.g. the paper's Fig. 2 example)."""
    return Dag(tuple(tuple(float(c) for c in row) for row in cost), dict(edges))


def _levels(v: int, alpha: float, rng: random.Random) -> list[int]:
    """Level widths, uniform with mean alpha*sqrt(v), summing to v."""
    mean = max(1.0, alpha * math.sqrt(v))
    hi = max(1, round(2 * mean - 1))
    widths: list[int] = []
    left = v
    while left > 0:
        width = min(left, rng.randint(1, hi))
        widths.append(width)
        left -= width
    return widths


def random_dag(
    v: int,
    *,
    alpha: float = 1.0,
    out_degree: float = 3.0,
    ccr: float = 1.0,
    beta: float = 1.0,
    procs: int = 4,
    w_dag: float = 50.0,
    model: CostModel = "unrelated",
    seed: int = 0,
) -> Dag:
    if v < 1 or procs < 1 or alpha <= 0 or out_degree < 1 or ccr < 0 or w_dag <= 0:
        raise ValueError("need v >= 1, procs >= 1, alpha > 0, out_degree >= 1, ccr >= 0")
    if not 0.0 <= beta <= 2.0:
        raise ValueError(f"beta must be in [0, 2], got {beta!r}")
    rng = random.Random(f"dag:{v}:{alpha}:{out_degree}:{ccr}:{beta}:{procs}:{model}:{seed}")
    widths = _levels(v, alpha, rng)
    level_of: list[int] = []
    starts: list[int] = []
    for lvl, width in enumerate(widths):
        starts.append(len(level_of))
        level_of.extend([lvl] * width)

    # Edges: each task outside the last level picks 1..(2d-1) children (mean d) among
    # the tasks of later levels; a task left without a parent gets one from the level
    # just above it, so the depth is what the widths say.
    pairs: set[tuple[int, int]] = set()
    hi_degree = max(1, round(2 * out_degree - 1))
    for task in range(v):
        lvl = level_of[task]
        if lvl + 1 >= len(widths):
            continue
        later = range(starts[lvl + 1], v)
        k = min(len(later), rng.randint(1, hi_degree))
        for child in rng.sample(later, k):
            pairs.add((task, child))
    has_parent = {b for _, b in pairs}
    for task in range(v):
        lvl = level_of[task]
        if lvl > 0 and task not in has_parent:
            parent = rng.randrange(starts[lvl - 1], starts[lvl])
            pairs.add((parent, task))

    w = [rng.uniform(0.0, 2.0 * w_dag) or w_dag for _ in range(v)]
    lo, hi = max(MIN_FACTOR, 1.0 - beta / 2.0), 1.0 + beta / 2.0
    speeds: tuple[float, ...] = ()
    if model == "related":
        factors = [rng.uniform(lo, hi) for _ in range(procs)]
        cost = tuple(tuple(wi * f for f in factors) for wi in w)
        speeds = tuple(1.0 / f for f in factors)
    else:
        cost = tuple(tuple(wi * rng.uniform(lo, hi) for _ in range(procs)) for wi in w)
    mean_w = sum(sum(row) / procs for row in cost) / v
    edges = {pair: rng.uniform(0.0, 2.0 * ccr * mean_w) for pair in sorted(pairs)}
    return Dag(cost, edges, speeds, tuple(w) if model == "related" else ())
