"""Deadlines as a contract (sans-I/O): the planner, admission at submit, the outlook of
running tasks, earliest-deadline-first within a class, the job key."""

from __future__ import annotations

import math
from typing import Any

import pytest

from swarmd.core.deadlines import OVERRUN_SHARE, ClassLoad, Planner, Step, next_look
from swarmd.core.jobspec import JobError, job_to_data, parse_job
from swarmd.core.pricing import Demand, PricingConfig
from swarmd.core.tasks import Coordinator, Dispatch, Journal, Result
from tests.capacity import peer

SHELL_10 = Demand("shell", est_seconds=10.0)


def sh(sid: str, estimate: str = "10s", **kw: Any) -> dict[str, Any]:
    return {"id": sid, "kind": "shell", "run": ["true"], "estimate": estimate, **kw}


def job(*subtasks: dict[str, Any], **top: Any) -> Any:
    return parse_job({"name": "job", **top, "subtasks": list(subtasks)})


def coordinator() -> Coordinator:
    return Coordinator(node_id="coord", pricing=PricingConfig(max_queue=0))


# ---------------------------------------------------------------- the planner


def test_planner_earliest_finish_with_dependencies() -> None:
    plan = Planner(
        [peer("A", slots_total=1, rtt_s=0.0), peer("B", slots_total=1, rtt_s=0.0)],
        PricingConfig(),
        100.0,
    )
    assert plan.place(Step("a", SHELL_10)) == pytest.approx(110.0)
    assert plan.place(Step("b", SHELL_10)) == pytest.approx(110.0)  # the other node
    assert plan.place(Step("c", SHELL_10)) == pytest.approx(120.0)  # both busy until 110
    # d waits for c (120); e waits for nothing but a slot: the other node, free at 110.
    assert plan.place(Step("d", SHELL_10, after=("c",))) == pytest.approx(130.0)
    assert plan.place(Step("e", SHELL_10)) == pytest.approx(120.0)
    assert plan.finish_of("d") == pytest.approx(130.0)


def test_planner_uses_speed_holds_and_says_what_no_peer_runs() -> None:
    fast = peer("F", slots_total=1, speed=2.0, rtt_s=0.0)
    slow = peer("S", slots_total=1, speed=0.5, rtt_s=0.0)
    plan = Planner([fast, slow], PricingConfig(), 0.0)
    plan.hold("running", "F", None, 30.0)  # F is busy until 30
    # F: 30 + 5 = 35; S: 0 + 20 = 20: the slow node finishes first.
    assert plan.place(Step("x", SHELL_10)) == pytest.approx(20.0)
    assert plan.place(Step("y", SHELL_10)) == pytest.approx(35.0)
    assert math.isinf(plan.place(Step("gpu", Demand("shell", min_vram=1 << 40))))
    assert plan.unplaceable == 1


def test_an_attempt_past_its_estimated_end_is_planned_to_need_more() -> None:
    plan = Planner([peer("A", slots_total=1, rtt_s=0.0)], PricingConfig(), 100.0)
    plan.hold("late", "A", None, 98.0, started=78.0)  # estimated 20 s, 2 s past its end
    assert plan.finish_of("late") == pytest.approx(100.0 + OVERRUN_SHARE * 20.0)
    assert plan.place(Step("next", SHELL_10)) == pytest.approx(113.0)
    plan.hold("ends", "A", None, 105.0, started=95.0)  # not past its end: as estimated
    assert plan.finish_of("ends") == pytest.approx(105.0)
    plan.hold("unknown", "A", None, 90.0)  # no start time: ends now
    assert plan.finish_of("unknown") == pytest.approx(100.0)


def test_next_look_comes_just_after_an_estimated_end() -> None:
    assert next_look(10.0, 1.0, [], 0.1) == pytest.approx(11.0)
    assert next_look(10.0, 1.0, [10.4, 12.0, 9.0], 0.1) == pytest.approx(10.45)
    assert next_look(10.0, 1.0, [10.01], 0.1) == pytest.approx(10.1)  # not sooner than that
    assert next_look(10.0, 4.0, [11.0], 0.1) == pytest.approx(11.05)  # a slowed outlook too
    assert next_look(10.0, 4.0, [11.0], 2.0) == pytest.approx(12.0)  # within its budget


def test_planner_limit() -> None:
    plan = Planner([peer("A")], PricingConfig(), 0.0, limit=3)
    for i in range(5):
        plan.place(Step(i, SHELL_10))
    assert plan.truncated == 2


# ---------------------------------------------------------------- admission


def test_an_idle_cluster_meets_a_deadline() -> None:
    c = coordinator()
    admission = c.admit(job(sh("a"), sh("b", after=["a"]), deadline="60s"), [peer("A")], 0.0)
    assert admission is not None and admission.meets
    assert admission.finish == pytest.approx(20.0, abs=0.1)  # a chain of two 10 s steps
    assert c.admit(job(sh("a")), [peer("A")], 0.0) is None  # no deadline: nothing to check


def test_work_queued_ahead_makes_a_deadline_unmeetable() -> None:
    """8 high subtasks of 30 s queued on 2 slots: 120 s of work ahead of a normal job."""
    c = coordinator()
    peers = [peer("A", slots_total=2, rtt_s=0.0)]
    busy = job(*(sh(f"h{i}", "30s") for i in range(8)), priority="high")
    c.submit("busy", busy, 0.0)
    normal = job(sh("n"), deadline="60s")
    admission = c.admit(normal, peers, 0.0)
    assert admission is not None and not admission.meets
    assert admission.finish == pytest.approx(130.0, abs=0.5) and admission.ahead == 8
    text = admission.refusal()
    assert "deadline 60 s cannot be met: estimated finish in 130" in text
    assert "--deadline-best-effort" in text
    # A higher class goes ahead of that work: it is admitted.
    urgent = c.admit(job(sh("c"), deadline="60s", priority="critical"), peers, 0.0)
    assert urgent is not None and urgent.meets and urgent.ahead == 0
    # In flight counts too: dispatch two, they hold both slots for 30 s.
    effects = c.schedule(peers, 0.0)
    assert len([e for e in effects if isinstance(e, Dispatch)]) == 2
    urgent = c.admit(job(sh("c"), deadline="60s", priority="critical"), peers, 0.0)
    assert urgent is not None and urgent.finish == pytest.approx(40.0, abs=0.5)


def test_same_class_earlier_deadline_goes_ahead_later_does_not() -> None:
    c = coordinator()
    peers = [peer("A", slots_total=1, rtt_s=0.0)]
    c.submit("soon", job(sh("s", "50s"), deadline="60s"), 0.0)
    c.submit("later", job(sh("l", "50s"), deadline="1000s"), 0.0)
    mine = c.admit(job(sh("m", "10s"), deadline="100s"), peers, 0.0)
    assert mine is not None and mine.ahead == 1  # "soon" only
    assert mine.finish == pytest.approx(60.0, abs=0.5) and mine.meets


# ---------------------------------------------------------------- outlook, EDF


def test_outlook_reports_an_unreachable_deadline() -> None:
    c = coordinator()
    peers = [peer("A", slots_total=1, rtt_s=0.0)]
    c.submit("ahead", job(sh("x", "100s"), priority="high"), 0.0)
    c.submit("late", job(sh("y"), deadline="30s", deadline_best_effort=True), 0.0)
    c.submit("fine", job(sh("z"), deadline="500s", priority="high"), 0.0)
    assert c.status("late")["deadline"]["reachable"] is None  # not estimated yet
    c.schedule(peers, 0.0)
    assert c.outlook_due(0.0)
    c.refresh_outlook(peers, 0.0)
    late = c.status("late")["deadline"]
    assert late["reachable"] is False and late["best_effort"] is True
    assert late["estimated_finish"] == pytest.approx(120.0, abs=0.5)  # 100 + "fine" + 10
    assert c.status("fine")["deadline"]["reachable"] is True
    assert c.counters["deadline_unreachable"] == 1
    c.refresh_outlook(peers, 0.5)  # not due again yet: counted once per task anyway
    c.refresh_outlook(peers, 2.0)
    assert c.counters["deadline_unreachable"] == 1
    row = next(r for r in c.tasks() if r["id"] == "late")
    assert row["deadline"]["reachable"] is False
    assert "deadline" not in next(r for r in c.tasks() if r["id"] == "ahead")


def test_an_overrun_is_reported_before_a_deadline_close_behind_the_estimate() -> None:
    """Estimated 10.5 s, deadline 10.9 s: the outlook looks again just after the
    estimated end, not a second later, and sees the attempt still running."""
    c = coordinator()
    peers = [peer("A", slots_total=1, rtt_s=0.0)]
    c.submit("t", job(sh("x", "10.5s"), deadline="10.9s"), 0.0)
    assert [e for e in c.schedule(peers, 0.0) if isinstance(e, Dispatch)]
    looks = [0.0]
    while looks[-1] < 10.5:  # the daemon's loop wakes at outlook_wakeup
        assert c.outlook_due(looks[-1])
        c.refresh_outlook(peers, looks[-1])
        assert c.status("t")["deadline"]["reachable"] is True
        wake = c.outlook_wakeup()
        assert wake is not None and not c.outlook_due(wake - 0.01)
        looks.append(wake)
    assert looks[:11] == pytest.approx(list(range(11)))  # every second, then
    wake = looks[-1]
    assert 10.5 < wake < 10.9  # just after the estimated end
    c.refresh_outlook(peers, wake)
    late = c.status("t")["deadline"]
    assert late["reachable"] is False
    assert late["estimated_finish"] == pytest.approx(wake + OVERRUN_SHARE * 10.5, abs=0.01)
    assert c.counters["deadline_unreachable"] == 1


def test_edf_within_a_class_by_each_subtasks_latest_finish() -> None:
    """Same class: "chain"'s first step must end by 100 - 80 = 20 (80 s of work follow
    it), so it goes before "single" (deadline 50) and both before no deadline."""
    c = coordinator()
    peers = [peer("A", slots_total=1, rtt_s=0.0)]
    c.submit("none", job(sh("n")), 0.0)
    c.submit("single", job(sh("s"), deadline="50s"), 0.0)
    c.submit("chain", job(sh("c1"), sh("c2", "80s", after=["c1"]), deadline="100s"), 0.0)
    order = []
    now = 0.0
    for _ in range(3):
        d = next(e for e in c.schedule(peers, now) if isinstance(e, Dispatch))
        order.append(d.task_id)
        now += 1.0
        c.on_result(d.task_id, d.subtask_id, d.attempt, d.node_id, Result(exit_code=0), now)
    assert order[:2] == ["chain", "single"]


def test_status_of_a_finished_task_says_whether_it_met_its_deadline() -> None:
    c = coordinator()
    peers = [peer("A")]
    c.submit("t", job(sh("a"), deadline="60s"), 0.0)
    d = next(e for e in c.schedule(peers, 0.0) if isinstance(e, Dispatch))
    c.on_result(d.task_id, d.subtask_id, d.attempt, d.node_id, Result(exit_code=0), 5.0)
    assert c.status("t")["deadline"] == {
        "at": 60.0,
        "estimated_finish": 5.0,
        "reachable": True,
        "best_effort": False,
    }


# ---------------------------------------------------------------- the job key


def test_deadline_best_effort_key() -> None:
    spec = job(sh("a"), deadline="1m", deadline_best_effort=True)
    assert spec.deadline_best_effort and parse_job(job_to_data(spec)) == spec
    assert not job(sh("a"), deadline="1m").deadline_best_effort
    with pytest.raises(JobError, match="needs a deadline"):
        job(sh("a"), deadline_best_effort=True)
    with pytest.raises(JobError, match="expected true or false"):
        job(sh("a"), deadline="1m", deadline_best_effort="yes")


# ---------------------------------------------------------------- pressure


def test_class_load_pressure_per_pool_and_window() -> None:
    load = ClassLoad(window_s=60.0)
    capacity = {("A", None): 2, ("B", None): 1}
    for t in range(0, 60, 10):  # high work: 6 x 10 s on A's 2 slots in a minute
        load.started(1, "A", None, 10.0, float(t))
    load.started(3, "B", None, 30.0, 50.0)  # low work on B
    # For normal: A is 60 / (60 * 2) = half taken by a class above; B not at all.
    assert load.pressure(2, 60.0, capacity) == {("A", None): pytest.approx(0.5)}
    assert load.pressure(1, 60.0, capacity) == {}  # nothing above high
    assert load.pressure(3, 60.0, capacity)[("A", None)] == pytest.approx(0.5)
    assert load.pressure(2, 200.0, capacity) == {}  # all older than the window
    # Seen for 6 s only: over those 6 s (not the whole minute), at most 0.95.
    young = ClassLoad(window_s=60.0)
    young.started(1, "B", None, 60.0, 0.0)
    assert young.pressure(2, 6.0, capacity) == {("B", None): pytest.approx(0.95)}


def test_admission_foresees_the_classes_above() -> None:
    """A normal job with 20 s of high work queued ahead on one slot: 30 s alone; once
    high work has kept that slot half busy for a minute, its 20 s wait counts 40 s."""
    c = coordinator()
    peers = [peer("A", slots_total=1, rtt_s=0.0)]
    c.submit("busy", job(sh("h1", "20s"), priority="high"), 0.0)
    mine = job(sh("n"), deadline="35s")
    calm = c.admit(mine, peers, 0.0)
    assert calm is not None and calm.finish == pytest.approx(30.0, abs=0.5) and calm.meets
    for t in range(0, 60, 20):
        c.class_load.started(1, "A", None, 10.0, float(t))
    pressed = c.admit(mine, peers, 60.0)
    assert pressed is not None and not pressed.meets
    assert pressed.finish == pytest.approx(60.0 + 40.0 + 10.0, abs=0.5)
    # Dispatches feed it: a start of the high subtask is recorded for its pool.
    c.schedule(peers, 61.0)
    assert c.class_load.pressure(2, 61.0, {("A", None): 1})[("A", None)] > 0.5


def test_a_restored_task_keeps_its_deadline_contract() -> None:
    """The journal keeps the job as submitted: after a restart the deadline, its best
    effort and each subtask's own latest finish come back."""
    c = coordinator()
    spec = job(sh("c1"), sh("c2", "80s", after=["c1"]), deadline="100s", deadline_best_effort=True)
    records = [e for e in c.submit("t", spec, 0.0) if isinstance(e, Journal)]
    r = coordinator()
    r.restore(records, now=5.0)
    task = r.record("t")
    assert task.deadline == 100.0 and task.spec.deadline_best_effort
    assert task.latest_finish("c1") == pytest.approx(20.0)  # 80 s of work follow it
    r.refresh_outlook([peer("A", rtt_s=0.0)], 5.0)
    assert r.status("t")["deadline"]["reachable"] is True
