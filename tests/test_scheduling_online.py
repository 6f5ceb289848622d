"""swarmd's online placement of task graphs (bench/scheduling/online.py): valid
schedules, and what worker queues, look-ahead and data locality change."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.scheduling.dag import Dag, from_tables, random_dag
from bench.scheduling.heft import heft, slr_bound, violations
from bench.scheduling.online import swarmd_online
from bench.scheduling.policies import swarmd as swarmd_before

VARIANTS = {
    "swarmd": swarmd_online,
    "no_locality": lambda d: swarmd_online(d, locality=False),
    "no_lookahead": lambda d: swarmd_online(d, lookahead=False),
    "queue_0": lambda d: swarmd_online(d, queue=0),
    "queue_4_eager": lambda d: swarmd_online(d, queue=4, queue_ahead_s=float("inf")),
}


@settings(max_examples=40, deadline=None)
@given(
    v=st.integers(1, 40),
    ccr=st.sampled_from([0.1, 1.0, 10.0]),
    alpha=st.sampled_from([0.5, 2.0]),
    procs=st.integers(1, 6),
    model=st.sampled_from(["related", "unrelated"]),
    seed=st.integers(0, 1000),
)
def test_every_variant_makes_a_valid_schedule(
    v: int, ccr: float, alpha: float, procs: int, model: str, seed: int
) -> None:
    dag = random_dag(v, alpha=alpha, ccr=ccr, procs=procs, model=model, seed=seed)  # type: ignore[arg-type]
    bound = slr_bound(dag)
    for name, policy in VARIANTS.items():
        schedule = policy(dag)
        assert violations(dag, schedule) == [], name
        assert schedule.makespan >= bound - 1e-6, name


def test_a_chain_waits_for_the_fast_node_rather_than_moving() -> None:
    # A chain on a 4x faster and a slower node: it all runs on the fast one.
    w = [10.0, 10.0, 10.0]
    dag = from_tables([[x, x / 4] for x in w], {(0, 1): 1.0, (1, 2): 1.0})
    dag = Dag(dag.cost, dag.edges, speeds=(1.0, 4.0), w=tuple(w))
    assert swarmd_online(dag).proc == (1, 1, 1)
    assert swarmd_online(dag).makespan == pytest.approx(7.5)


def test_look_ahead_waits_for_a_faster_busy_node() -> None:
    # Two independent tasks of 8 on a 4x faster node and a slow one. Without look-ahead
    # the second goes to the slow node (done at 8); with it, it waits for the fast one
    # (done at 2 + 2 = 4).
    dag = Dag(((2.0, 8.0), (2.0, 8.0)), {}, speeds=(4.0, 1.0), w=(8.0, 8.0))
    assert swarmd_online(dag).makespan == pytest.approx(4.0)
    assert swarmd_online(dag, lookahead=False).makespan == pytest.approx(8.0)


def test_locality_keeps_a_child_with_its_parents_output() -> None:
    # Nodes of speed 2 and 1. Task 2 (24 s) takes the fast node, task 0 (10 s) the slow
    # one; at 10 its child 1 is ready. Moving 0's output costs 50: with the estimate,
    # 1 stays on the slow node (done at 20); without, it waits for the fast node and
    # then for its input (done at 65).
    w = (10.0, 10.0, 24.0)
    dag = Dag(tuple((x / 2, x) for x in w), {(0, 1): 50.0}, speeds=(2.0, 1.0), w=w)
    near = swarmd_online(dag)
    assert near.proc == (1, 1, 0) and near.makespan == pytest.approx(20.0)
    far = swarmd_online(dag, locality=False)
    assert far.proc[1] == 0 and far.makespan == pytest.approx(65.0)


def _mean_vs_heft(policy, dags) -> float:  # type: ignore[no-untyped-def]
    return statistics.fmean(policy(d).makespan / heft(d).makespan for d in dags)


@pytest.mark.parametrize("model", ["related", "unrelated"])
def test_at_high_ccr_locality_and_queues_beat_the_old_placement(model: str) -> None:
    dags = [
        random_dag(40, alpha=1.0, ccr=10.0, beta=1.0, procs=4, model=model, seed=s)  # type: ignore[arg-type]
        for s in range(6)
    ]
    now = _mean_vs_heft(swarmd_online, dags)
    without = _mean_vs_heft(lambda d: swarmd_online(d, locality=False), dags)
    before = _mean_vs_heft(swarmd_before, dags)
    assert now < without and now < before, (now, without, before)
    assert now < 1.4  # the full grid: bench.scheduling (README)
