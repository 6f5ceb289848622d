"""Scheduling quality: swarmd's online pricing against HEFT, round-robin and least-loaded.

Two parts, both simulated in virtual time with swarmd's real queue and pricing:

1. **Random task graphs** (:mod:`.dag`, the generator of Topcuoglu et al. 2002; swarmd's
   placement simulated by :mod:`.online`, the old one by :mod:`.policies`) on
   heterogeneous processors, in the *related* model (each processor has one speed, which
   swarmd is told as the node's declared ``speed``) and the paper's *unrelated* model
   (a random cost per task and processor; swarmd only knows each task's mean cost).
   Metric: the schedule length ratio, SLR = makespan / (sum over the critical path of
   each task's least cost), per policy, by CCR, v, alpha and beta, and how often a
   policy matches or beats HEFT (offline, with every cost known in advance).
2. **An agent-like LLM workload** (:mod:`.agent`): load balance, utilization, deadline
   hit rate, priority inversions and waits per priority class.
3. **The KPI table** (:mod:`.kpi`): distribution latency, load spread, completion,
   priority respected, deadlines met, utilization for swarmd (with admission and the
   deadline outlook, :mod:`.contract`), least-loaded and round-robin at 0.8x and 1.5x of
   capacity and on a big-GPU node with laptops.

``run(quick)`` returns a JSON-able dict, ``markdown(result)`` renders its tables; the
CLI (``python -m bench.scheduling [--quick]``) writes ``bench/results/scheduling.json``.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

from bench.common import table
from swarmd.core.pricing import GiB

from . import agent
from .dag import CostModel, Dag, random_dag
from .heft import Schedule, heft, slr_bound, violations
from .kpi import markdown_kpi, run_kpi
from .online import swarmd_online
from .policies import least_loaded, round_robin, swarmd

__all__ = ["markdown", "run"]

# The policies of the comparison. "swarmd" is the coordinator as it places today (worker
# queues, earliest finish with the work held on each node, look-ahead, data locality);
# "swarmd_before" is its placement before (a free node now, no transfer estimate);
# "swarmd-…" rows take one part away (what-ifs, see online.py).
DAG_POLICIES: dict[str, Callable[[Dag], Schedule]] = {
    "heft": heft,
    "swarmd": swarmd_online,
    "round_robin": round_robin,
    "least_loaded": least_loaded,
    "swarmd_before": swarmd,
    "swarmd-locality": lambda d: swarmd_online(d, locality=False),
    "swarmd-lookahead": lambda d: swarmd_online(d, lookahead=False),
}
AGENT_POLICIES = ("swarmd", "swarmd_strict", "round_robin", "least_loaded")

FULL = {
    "v": [20, 40, 60, 80, 100],
    "ccr": [0.1, 0.5, 1.0, 5.0, 10.0],
    "alpha": [0.5, 1.0, 2.0],
    "beta": [0.1, 0.5, 1.0, 2.0],
    "procs": [4, 8],
    "seeds": 1,
    "out_degree": 3.0,
}
QUICK = {
    "v": [20, 60],
    "ccr": [0.1, 1.0, 10.0],
    "alpha": [1.0],
    "beta": [0.5, 2.0],
    "procs": [4],
    "seeds": 1,
    "out_degree": 3.0,
}


def _one(args: tuple[int, int, float, float, float, int, float, CostModel]) -> dict[str, Any]:
    seed, v, ccr, alpha, beta, procs, degree, model = args
    dag = random_dag(
        v,
        alpha=alpha,
        out_degree=degree,
        ccr=ccr,
        beta=beta,
        procs=procs,
        model=model,
        seed=seed,
    )
    bound = slr_bound(dag)
    makespans: dict[str, float] = {}
    for name, policy in DAG_POLICIES.items():
        schedule = policy(dag)
        problems = violations(dag, schedule)
        if problems:
            raise AssertionError(f"{name} made an invalid schedule: {problems[:3]}")
        makespans[name] = schedule.makespan
    return {
        "model": model,
        "v": v,
        "ccr": ccr,
        "alpha": alpha,
        "beta": beta,
        "procs": procs,
        "seed": seed,
        "slr": {k: m / bound for k, m in makespans.items()},
        "vs_heft": {k: m / makespans["heft"] for k, m in makespans.items()},
    }


def _cases(grid: dict[str, Any]) -> list[tuple[int, int, float, float, float, int, float, Any]]:
    cases = []
    combos = itertools.product(
        ("related", "unrelated"),
        grid["v"],
        grid["ccr"],
        grid["alpha"],
        grid["beta"],
        grid["procs"],
        range(grid["seeds"]),
    )
    for i, (model, v, ccr, alpha, beta, procs, s) in enumerate(combos):
        cases.append((i * 7 + s, v, ccr, alpha, beta, procs, grid["out_degree"], model))
    return cases


def _summary(rows: list[dict[str, Any]], by: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for value in sorted({r[by] for r in rows}):
        group = [r for r in rows if r[by] == value]
        out[str(value)] = {p: statistics.fmean(r["slr"][p] for r in group) for p in DAG_POLICIES}
    return out


def _overall(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for p in DAG_POLICIES:
        ratios = [r["vs_heft"][p] for r in rows]
        out[p] = {
            "mean_slr": statistics.fmean(r["slr"][p] for r in rows),
            "mean_vs_heft": statistics.fmean(ratios),
            "matches_or_beats_heft_pct": 100.0 * sum(x <= 1.0 + 1e-9 for x in ratios) / len(rows),
            "beats_heft_pct": 100.0 * sum(x < 1.0 - 1e-9 for x in ratios) / len(rows),
        }
    return out


def _map(fn: Callable[[Any], dict[str, Any]], cases: list[Any], quick: bool) -> Iterable[Any]:
    workers = min(2, os.cpu_count() or 1)
    if quick or workers < 2:
        return [fn(c) for c in cases]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(fn, cases, chunksize=8)


def run_dags(quick: bool = False) -> dict[str, Any]:
    grid = QUICK if quick else FULL
    rows = list(_map(_one, _cases(grid), quick))
    models: dict[str, Any] = {}
    for model in ("related", "unrelated"):
        mine = [r for r in rows if r["model"] == model]
        models[model] = {
            "graphs": len(mine),
            "overall": _overall(mine),
            **{f"by_{k}": _summary(mine, k) for k in ("ccr", "v", "alpha", "beta", "procs")},
        }
    return {"grid": grid, "policies": list(DAG_POLICIES), "models": models}


def run_agent(quick: bool = False) -> dict[str, Any]:
    small, large = (120, 4) if quick else (500, 10)
    jobs = agent.workload(small=small, large=large, overload=1.5, seed=1)
    out: dict[str, Any] = {}
    for policy in AGENT_POLICIES:
        out[policy] = agent.metrics(jobs, agent.run_policy(policy, jobs))
    nodes = [
        {
            "name": n.name,
            "vram_gib": n.vram / GiB,
            "profiles": [
                {
                    "name": p.name,
                    "tokens_per_s": p.tokens_per_s,
                    "max_concurrency": p.max_concurrency,
                    "capabilities": sorted(p.capabilities),
                }
                for p in n.profiles
            ],
        }
        for n in agent.NODES
    ]
    return {
        "small": small,
        "large": large,
        "overload": 1.5,
        "nodes": nodes,
        "with_deadline": sum(j.deadline is not None for j in jobs),
        "policies": out,
    }


def run(quick: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    result = {
        "quick": quick,
        "dag": run_dags(quick),
        "agent": run_agent(quick),
        "kpi": run_kpi(quick),
    }
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


# ---------------------------------------------------------------- markdown


def _by(model: dict[str, Any], key: str, policies: list[str]) -> str:
    rows = [
        [value, *(f"{model[key][value][p]:.2f}" for p in policies)]
        for value in sorted(model[key], key=float)
    ]
    return table([key.removeprefix("by_"), *policies], rows)


def markdown(result: dict[str, Any]) -> str:
    dag = result["dag"]
    policies: list[str] = dag["policies"]
    parts = ["### Scheduling quality: random task graphs (SLR, lower is better)", ""]
    grid = dag["grid"]
    parts.append(
        f"Grid: v {grid['v']}, CCR {grid['ccr']}, alpha {grid['alpha']}, beta {grid['beta']},"
        f" processors {grid['procs']}, out-degree {grid['out_degree']}, {grid['seeds']} "
        "seed(s) per point. `swarmd_before` is swarmd's placement before worker queues were "
        "priced (a free node now, inputs ignored); `swarmd-locality` and `swarmd-lookahead` "
        "are swarmd without its transfer estimates or without look-ahead."
    )
    for name, model in dag["models"].items():
        what = (
            "related machines: swarmd knows each node's declared speed"
            if name == "related"
            else "unrelated machines (the paper's model): swarmd knows only mean costs"
        )
        parts += ["", f"**{name}** ({what}; {model['graphs']} graphs)", ""]
        overall = model["overall"]
        rows = [
            [
                p,
                f"{overall[p]['mean_slr']:.2f}",
                f"{overall[p]['mean_vs_heft']:.2f}",
                f"{overall[p]['matches_or_beats_heft_pct']:.1f}%",
            ]
            for p in policies
        ]
        parts += [table(["policy", "mean SLR", "makespan / HEFT", "<= HEFT"], rows), ""]
        parts += [_by(model, "by_ccr", policies), "", _by(model, "by_v", policies)]
    ag = result["agent"]
    parts += [
        "",
        f"### Agent-like workload ({ag['small']} small + {ag['large']} large LLM subtasks,"
        f" {ag['overload']}x capacity, {ag['with_deadline']} with deadlines)",
        "",
    ]
    head = [
        "policy",
        "busy CV",
        "util",
        "busy CV (overload)",
        "util (overload)",
        "backlog cleared s",
        "deadline hits",
        "inversions",
    ]
    rows = []
    for p, m in ag["policies"].items():
        rows.append(
            [
                p,
                f"{m['busy_cv']:.2f}",
                f"{m['utilization']:.2f}",
                f"{m['busy_cv_window']:.3f}",
                f"{m['utilization_window']:.2f}",
                f"{m['backlog_cleared_s']:.0f}",
                f"{100 * m['deadline_hit_rate']:.0f}%",
                f"{m['priority_inversions']} / {m['starts']}",
            ]
        )
    parts += [table(head, rows), ""]
    rows = [
        [
            p,
            *(f"{m['wait_mean_s'][c]:.1f} / {m['wait_p95_s'][c]:.1f}" for c in agent.CLASSES),
        ]
        for p, m in ag["policies"].items()
    ]
    parts += [table(["wait s (mean / p95)", *agent.CLASSES], rows)]
    if "kpi" in result:
        parts += ["", markdown_kpi(result["kpi"])]
    return "\n".join(parts) + "\n"
