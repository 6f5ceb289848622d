"""The scheduling-quality benchmark (bench/scheduling): HEFT, the DAG generator, the
online policies' schedules, and the agent workload's metrics."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.scheduling import markdown, run
from bench.scheduling.agent import (
    NODES,
    Job,
    Node,
    Profile,
    Start,
    metrics,
    priority_inversions,
    run_policy,
    workload,
)
from bench.scheduling.dag import Dag, from_tables, random_dag
from bench.scheduling.heft import (
    Schedule,
    critical_path,
    heft,
    slr_bound,
    upward_rank,
    violations,
)
from bench.scheduling.policies import least_loaded, round_robin, swarmd

# Topcuoglu, Hariri, Wu (2002), Fig. 2: 10 tasks on 3 processors.
FIG2_COST = [
    [14, 16, 9],
    [13, 19, 18],
    [11, 13, 19],
    [13, 8, 17],
    [12, 13, 10],
    [13, 16, 9],
    [7, 15, 11],
    [5, 11, 14],
    [18, 12, 20],
    [21, 7, 16],
]
FIG2_EDGES = {
    (1, 2): 18,
    (1, 3): 12,
    (1, 4): 9,
    (1, 5): 11,
    (1, 6): 14,
    (2, 8): 19,
    (2, 9): 16,
    (3, 7): 23,
    (4, 8): 27,
    (4, 9): 23,
    (5, 9): 13,
    (6, 8): 15,
    (7, 10): 17,
    (8, 10): 11,
    (9, 10): 13,
}


def fig2() -> Dag:
    return from_tables(
        [[float(c) for c in row] for row in FIG2_COST],
        {(a - 1, b - 1): float(c) for (a, b), c in FIG2_EDGES.items()},
    )


# ---------------------------------------------------------------- HEFT


def test_heft_on_the_papers_example_has_length_80() -> None:
    dag = fig2()
    ranks = upward_rank(dag)
    assert [round(r, 3) for r in ranks] == [
        108.0,
        77.0,
        80.0,
        80.0,
        69.0,
        63.333,
        42.667,
        35.667,
        44.333,
        14.667,
    ]
    schedule = heft(dag)
    assert schedule.makespan == pytest.approx(80.0)
    assert violations(dag, schedule) == []
    # The paper's Fig. 4(a): n1 on P3 at 0, n10 on P2 from 73 to 80.
    assert (schedule.proc[0], schedule.start[0]) == (2, 0.0)
    assert (schedule.proc[9], schedule.start[9]) == (1, 73.0)
    # CPOP's critical path n1-n2-n9-n10 (|CP| = 108); least costs 9 + 13 + 12 + 7.
    assert critical_path(dag) == [0, 1, 8, 9]
    assert slr_bound(dag) == pytest.approx(41.0)


def test_violations_catch_overlap_precedence_and_wrong_durations() -> None:
    dag = from_tables([[2.0, 2.0], [3.0, 3.0]], {(0, 1): 5.0})
    good = Schedule((0, 1), (0.0, 7.0), (2.0, 10.0))
    assert violations(dag, good) == []
    assert violations(dag, Schedule((0, 0), (0.0, 2.0), (2.0, 5.0))) == []  # same proc: 0
    assert any("data of 0" in v for v in violations(dag, Schedule((0, 1), (0, 6), (2, 9))))
    assert any("ran" in v for v in violations(dag, Schedule((0, 1), (0, 7), (2, 11))))
    indep = from_tables([[2.0], [3.0]], {})
    assert any("overlap" in v for v in violations(indep, Schedule((0, 0), (0, 1), (2, 4))))


# ---------------------------------------------------------------- the generator


@settings(max_examples=40, deadline=None)
@given(
    v=st.integers(1, 120),
    alpha=st.sampled_from([0.5, 1.0, 2.0]),
    beta=st.sampled_from([0.0, 0.1, 1.0, 2.0]),
    procs=st.integers(1, 8),
    model=st.sampled_from(["related", "unrelated"]),
    seed=st.integers(0, 10_000),
)
def test_generated_graphs_are_well_formed(
    v: int, alpha: float, beta: float, procs: int, model: str, seed: int
) -> None:
    dag = random_dag(v, alpha=alpha, beta=beta, procs=procs, model=model, seed=seed)  # type: ignore[arg-type]
    assert dag.n == v and dag.procs == procs
    assert all(a < b for a, b in dag.edges)  # forward only: acyclic, numbered topologically
    assert all(c >= 0 for c in dag.edges.values())
    for row, mean in zip(dag.cost, dag.mean_cost, strict=True):
        assert all(c > 0 for c in row)
        # Every cost is within beta/2 of the task's base cost (MIN_FACTOR floors it).
        assert max(row) <= min(row) * max(1.0, (1 + beta / 2) / max(0.05, 1 - beta / 2)) + 1e-9
        assert min(row) - 1e-9 <= mean <= max(row) + 1e-9
    if model == "related":
        assert len(dag.speeds) == procs
        for i in range(v):
            for j in range(procs):
                assert dag.cost[i][j] == pytest.approx(dag.w[i] / dag.speeds[j])
    assert random_dag(v, alpha=alpha, beta=beta, procs=procs, model=model, seed=seed) == dag  # type: ignore[arg-type]


@pytest.mark.parametrize("ccr", [0.1, 1.0, 5.0, 10.0])
def test_generated_ccr_and_out_degree_are_as_requested(ccr: float) -> None:
    ccrs, degrees = [], []
    for seed in range(5):
        dag = random_dag(100, alpha=1.0, out_degree=3.0, ccr=ccr, procs=4, seed=seed)
        ccrs.append(dag.ccr())
        succ = dag.succ
        degrees.append(statistics.fmean(len(s) for s in succ if s))
    assert statistics.fmean(ccrs) == pytest.approx(ccr, rel=0.1)
    # Children are drawn 1..5 (mean 3), fewer near the end; orphans add a parent edge.
    assert 2.4 <= statistics.fmean(degrees) <= 3.6


def test_alpha_shapes_the_graph() -> None:
    def depth(alpha: float) -> int:
        dag = random_dag(100, alpha=alpha, seed=3)
        level = [0] * dag.n
        for a, b in sorted(dag.edges):
            level[b] = max(level[b], level[a] + 1)
        return max(level) + 1

    assert depth(0.5) > depth(1.0) > depth(2.0)


# ---------------------------------------------------------------- the online policies


POLICIES = {
    "swarmd": swarmd,
    "swarmd+locality": lambda d: swarmd(d, locality=True),
    "swarmd_readiness_order": lambda d: swarmd(d, readiness_order=True),
    "round_robin": round_robin,
    "least_loaded": least_loaded,
}


@settings(max_examples=25, deadline=None)
@given(
    v=st.integers(1, 60),
    ccr=st.sampled_from([0.1, 1.0, 10.0]),
    alpha=st.sampled_from([0.5, 2.0]),
    procs=st.integers(1, 6),
    model=st.sampled_from(["related", "unrelated"]),
    seed=st.integers(0, 1000),
)
def test_every_policy_makes_a_valid_schedule(
    v: int, ccr: float, alpha: float, procs: int, model: str, seed: int
) -> None:
    dag = random_dag(v, alpha=alpha, ccr=ccr, procs=procs, model=model, seed=seed)  # type: ignore[arg-type]
    bound = slr_bound(dag)
    for name, policy in {"heft": heft, **POLICIES}.items():
        schedule = policy(dag)
        assert violations(dag, schedule) == [], name
        assert schedule.makespan >= bound - 1e-6, name  # SLR >= 1


def test_policies_on_the_papers_example() -> None:
    dag = fig2()
    for name, policy in POLICIES.items():
        schedule = policy(dag)
        assert violations(dag, schedule) == [], name
        assert schedule.makespan >= slr_bound(dag), name


def test_swarmd_uses_declared_speeds_in_the_related_model() -> None:
    # A chain on two processors, one 4x faster: knowing the speeds, swarmd runs it all
    # on the fast one.
    w = [10.0, 10.0, 10.0]
    dag = from_tables([[x, x / 4] for x in w], {(0, 1): 1.0, (1, 2): 1.0})
    dag = Dag(dag.cost, dag.edges, speeds=(1.0, 4.0), w=tuple(w))
    assert swarmd(dag).proc == (1, 1, 1)
    assert swarmd(dag).makespan == pytest.approx(7.5)


# ---------------------------------------------------------------- the agent workload


PROFILE = Profile("fast", frozenset({"lint"}), 100.0, 1, 0.0)
ONE = (Node("n", 0, 4, (PROFILE,)),)


def job(i: int, arrival: float, rank: int, capability: str = "lint") -> Job:
    return Job(i, arrival, rank, capability, 0, 100, None, 1.0)


def test_priority_inversions_on_a_hand_made_case() -> None:
    jobs = [job(0, 0.0, 3), job(1, 0.5, 0), job(2, 0.5, 3), job(3, 0.6, 1, "refactor")]
    # Job 2 (low) starts at 1.0 while job 1 (critical, fits) waits until 2.0: inversion.
    # Job 3 (high) waits too, but needs "refactor": it could not take that slot.
    # Job 1 starting at 2.0 and job 0 at 0.0 had nobody better waiting.
    starts = [
        Start(0, 0.0, "n", "fast", 1.0),
        Start(2, 1.0, "n", "fast", 2.0),
        Start(1, 2.0, "n", "fast", 3.0),
        Start(3, 3.0, "n", "fast", 4.0),
    ]
    assert priority_inversions(jobs, starts, ONE) == 1
    # Started at the same instant (on other slots) is not waiting.
    same = [*starts[:1], Start(1, 1.0, "n", "fast", 2.0), Start(2, 1.0, "n", "fast", 2.0)]
    assert priority_inversions(jobs[:3], same, ONE) == 0
    # Arrived after the start: not waiting yet.
    late = [job(0, 0.0, 3), job(1, 5.0, 0)]
    assert (
        priority_inversions(late, [Start(0, 0, "n", "fast", 9), Start(1, 9, "n", "fast", 10)], ONE)
        == 0
    )


def test_agent_policies_run_every_job_once_within_slot_limits() -> None:
    jobs = workload(small=80, large=4, seed=2)
    for policy in ("swarmd", "swarmd_strict", "round_robin", "least_loaded"):
        starts = run_policy(policy, jobs)
        assert sorted(s.job for s in starts) == [j.id for j in jobs], policy
        by_id = {j.id: j for j in jobs}
        for s in starts:
            assert s.time >= by_id[s.job].arrival - 1e-9
            node = next(n for n in NODES if n.name == s.node)
            profile = next(p for p in node.profiles if p.name == s.profile)
            assert by_id[s.job].capability in profile.capabilities
            assert by_id[s.job].min_vram <= node.vram
            # No more than max_concurrency at once on a profile.
            running = [
                o
                for o in starts
                if (o.node, o.profile) == (s.node, s.profile) and o.time <= s.time < o.finish
            ]
            assert len(running) <= profile.max_concurrency
        m = metrics(jobs, starts)
        assert 0.0 < m["utilization"] <= 1.0 and 0.0 <= m["deadline_hit_rate"] <= 1.0
    # Without shares, swarmd's queue never starts a lower class over a waiting higher one.
    starts = run_policy("swarmd_strict", jobs)
    assert priority_inversions(jobs, starts) == 0


def test_quick_run_and_markdown() -> None:
    result = run(quick=True)
    text = markdown(result)
    assert "| swarmd |" in text and "SLR" in text and "inversions" in text
    again = run(quick=True)
    assert again["dag"] == result["dag"] and again["agent"] == result["agent"]  # seeded
    related = result["dag"]["models"]["related"]["overall"]
    assert related["heft"]["matches_or_beats_heft_pct"] == 100.0
