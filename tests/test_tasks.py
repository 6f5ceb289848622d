"""The coordinator's task state machine: DAG, attempts, leases, fencing, retries, journal."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmd.core.jobspec import JobSpec, parse_job
from swarmd.core.pricing import ModelOffer, PricingConfig, ThroughputTracker, peer_from_gossip
from swarmd.core.tasks import (
    Ack,
    CancelAttempt,
    Coordinator,
    CoordinatorConfig,
    Dispatch,
    Effect,
    Journal,
    Quarantine,
    Result,
    TaskFinished,
    UnknownTask,
)
from tests.capacity import peer

E = TypeVar("E")

# ---------------------------------------------------------------- fixtures


def offer(name: str = "fast", caps: Sequence[str] = ("lint",), **kw: Any) -> ModelOffer:
    fields: dict[str, Any] = {
        "model": f"model-{name}",
        "capabilities": frozenset(caps),
        "max_concurrency": 4,
        "cost_per_mtok": 0.0,
        "latency_ms": None,
        "tokens_per_s": None,
    }
    fields.update(kw)
    return ModelOffer(name=name, **fields)


A = peer("A", rtt_s=0.001)
B = peer("B", rtt_s=0.002)
C = peer("C", rtt_s=0.003)
PEERS = (A, B, C)


def sh(sid: str, *run: str, **kw: Any) -> dict[str, Any]:
    return {"id": sid, "kind": "shell", "run": list(run or ("true",)), **kw}


def job(*subtasks: dict[str, Any], **top: Any) -> JobSpec:
    return parse_job({"name": "job", **top, "subtasks": list(subtasks)})


def coordinator(**config: Any) -> Coordinator:
    return Coordinator(node_id="coord-id", node_name="coord", config=CoordinatorConfig(**config))


def of(effects: Sequence[Effect], cls: type[E]) -> list[E]:
    return [e for e in effects if isinstance(e, cls)]


def one(effects: Sequence[Effect], cls: type[E]) -> E:
    found = of(effects, cls)
    assert len(found) == 1, effects
    return found[0]


def ok(stdout: str = "", **kw: Any) -> Result:
    return Result(exit_code=0, stdout=stdout, **kw)


def answer(c: Coordinator, d: Dispatch, result: Result, now: float) -> list[Effect]:
    return c.on_result(d.task_id, d.subtask_id, d.attempt, d.node_id, result, now)


def accept(c: Coordinator, d: Dispatch, now: float) -> list[Effect]:
    return c.on_accepted(d.task_id, d.subtask_id, d.attempt, d.node_id, now)


def states(c: Coordinator, task: str) -> dict[str, str]:
    return {s["id"]: s["state"] for s in c.status(task)["subtasks"]}


# ---------------------------------------------------------------- the happy path


def test_dag_of_four_completes_with_templating_between_stages() -> None:
    llm_peer = peer("G", models=(offer("fast", ("lint", "review")),), slots_total=0)
    c = coordinator()
    spec = job(
        sh("lint", "ruff", "check", "."),
        {
            "id": "plan",
            "kind": "llm",
            "capability": "review",
            "prompt": "Lint said:\n{{ lint.stdout }}\nPlan.",
            "after": ["lint"],
        },
        sh("count", "wc", "-l", "{{lint.stdout}}", after=["lint"]),
        {
            "id": "sum",
            "kind": "llm",
            "capability": "lint",
            "prompt": "{{ plan.output }} / {{ count.stdout }} / {{ lint.exit_code }}",
            "after": ["plan", "count"],
        },
    )
    fx = c.submit("t1", spec, now=0.0)
    assert [j.kind for j in of(fx, Journal)][:2] == ["task", "task_state"]
    assert c.status("t1")["state"] == "pending"
    assert states(c, "t1") == {
        "lint": "ready",
        "plan": "waiting",
        "count": "waiting",
        "sum": "waiting",
    }

    fx = c.schedule([A, llm_peer], now=0.1)
    lint = one(fx, Dispatch)
    assert (lint.subtask_id, lint.attempt, lint.node_id) == ("lint", 1, "A")
    assert lint.spec.run == ("ruff", "check", ".")
    assert c.status("t1")["state"] == "running"
    # Journal first, then the dispatch: persist before sending.
    kinds = [type(e).__name__ for e in fx]
    assert kinds.index("Dispatch") > max(i for i, k in enumerate(kinds) if k == "Journal")

    accept(c, lint, 0.2)
    assert states(c, "t1")["lint"] == "running"
    fx = answer(c, lint, ok("src/a.py:1: E501\n"), 1.0)
    assert one(fx, Ack) == Ack("t1", "lint", 1, "A", committed=True)
    assert states(c, "t1")["plan"] == states(c, "t1")["count"] == "ready"

    fx = c.schedule([A, llm_peer], now=1.1)
    by_id = {d.subtask_id: d for d in of(fx, Dispatch)}
    assert set(by_id) == {"plan", "count"}
    assert by_id["plan"].node_id == "G" and by_id["plan"].model == "fast"
    assert by_id["plan"].spec.prompt == "Lint said:\nsrc/a.py:1: E501\nPlan."
    assert by_id["count"].spec.run == ("wc", "-l", "src/a.py:1: E501")
    answer(c, by_id["plan"], Result(output="split module\n", usage={"total_tokens": 40}), 2.0)
    assert states(c, "t1")["sum"] == "waiting"
    answer(c, by_id["count"], ok("1\n"), 2.5)
    assert states(c, "t1")["sum"] == "ready"

    final = one(c.schedule([A, llm_peer], now=3.0), Dispatch)
    assert final.spec.prompt == "split module / 1 / 0"
    fx = answer(c, final, Result(output="done"), 4.0)
    assert one(fx, TaskFinished) == TaskFinished("t1", "done")
    status = c.status("t1")
    assert status["state"] == "done" and status["finished"] == 4.0
    assert all(s["state"] == "done" and s["attempts"] == 1 for s in status["subtasks"])
    assert c.result("t1")["subtasks"]["sum"]["output"] == "done"
    assert c.counters["dispatched"] == 4 and c.counters["committed"] == 4
    assert c.schedule([A, llm_peer], now=5.0) == []


def test_status_and_result_shapes_follow_the_contract() -> None:
    c = coordinator()
    c.submit("t1", job(sh("a"), sh("b", after=["a"]), priority="high"), now=10.0)
    d = one(c.schedule(PEERS, now=10.5), Dispatch)
    answer(c, d, ok("hello\n", stderr="warn", artifacts=("report.txt",)), 12.0)

    status = c.status("t1")
    assert list(status) == [
        "id",
        "name",
        "state",
        "coordinator",
        "priority",
        "submitted",
        "finished",
        "subtasks",
        "epoch",
        "deadline",
    ]
    assert status["id"] == "t1" and status["name"] == "job" and status["state"] == "running"
    assert status["coordinator"] == "coord" and status["priority"] == "high"
    assert status["submitted"] == 10.0 and status["finished"] is None
    row_a, row_b = status["subtasks"]
    assert list(row_a) == [
        "id",
        "kind",
        "state",
        "peer",
        "attempts",
        "started",
        "finished",
        "exit_code",
        "error",
    ]
    assert row_a == {
        "id": "a",
        "kind": "shell",
        "state": "done",
        "peer": "A",
        "attempts": 1,
        "started": 10.5,
        "finished": 12.0,
        "exit_code": 0,
        "error": None,
    }
    assert row_b["state"] == "ready" and row_b["peer"] is None and row_b["attempts"] == 0

    result = c.result("t1")
    assert list(result) == ["id", "state", "subtasks"]
    assert result["subtasks"]["a"] == {
        "state": "done",
        "stdout": "hello\n",
        "stderr": "warn",
        "exit_code": 0,
        "output": None,
        "usage": None,
        "artifacts": ["report.txt"],
        "peer": "A",
    }
    assert set(result["subtasks"]["b"]) == set(result["subtasks"]["a"])
    json.dumps(status), json.dumps(result), json.dumps(c.explain("t1")), json.dumps(c.tasks())
    assert c.tasks() == [
        {
            "id": "t1",
            "name": "job",
            "state": "running",
            "priority": "high",
            "submitted": 10.0,
            "finished": None,
            "subtasks": 2,
            "done": 1,
            "failed": 0,
        }
    ]
    with pytest.raises(UnknownTask):
        c.status("nope")


def test_submit_refuses_a_duplicate_id() -> None:
    c = coordinator()
    c.submit("t1", job(sh("a")), now=0.0)
    with pytest.raises(ValueError, match="exists"):
        c.submit("t1", job(sh("a")), now=0.0)


# ---------------------------------------------------------------- node failures


def test_redispatch_after_peer_death_goes_to_another_peer() -> None:
    c = coordinator()
    c.submit("t1", job(sh("a")), now=0.0)
    first = one(c.schedule(PEERS, now=0.0), Dispatch)
    assert (first.node_id, first.attempt) == ("A", 1)
    accept(c, first, 0.1)

    fx = c.on_peer_dead("A", now=1.0)
    assert of(fx, Dispatch) == []
    assert states(c, "t1")["a"] == "ready"
    # A first loss is retried at once (no backoff). A is back (alive in the view) but
    # it failed this subtask: B is preferred.
    second = one(c.schedule(PEERS, now=1.0), Dispatch)
    assert (second.node_id, second.attempt) == ("B", 2)
    assert c.counters["redispatched"] == 1 and c.counters["lost"] == 1

    fx = answer(c, second, ok("from B"), 2.0)
    assert one(fx, Ack).committed
    # The old attempt's late result: dropped, counted, still acked.
    fx = answer(c, first, ok("from A"), 2.5)
    assert fx == [Ack("t1", "a", 1, "A", committed=False)]
    assert c.counters["stale_results"] == 1 and c.counters["committed"] == 1
    row = c.status("t1")["subtasks"][0]
    assert row["attempts"] == 2 and row["peer"] == "B" and row["state"] == "done"
    assert c.result("t1")["subtasks"]["a"]["stdout"] == "from B"
    assert c.explain("t1")["subtasks"][0]["reasons"] == ["attempt 1 on A: node lost"]


def test_only_the_first_loss_skips_the_backoff() -> None:
    c = coordinator()
    c.submit("t1", job(sh("a", retries=5)), now=0.0)
    first = one(c.schedule(PEERS, now=0.0), Dispatch)
    c.on_peer_dead(first.node_id, now=1.0)
    second = one(c.schedule(PEERS, now=1.0), Dispatch)  # at once
    c.on_peer_dead(second.node_id, now=2.0)
    assert c.schedule(PEERS, now=2.0) == []
    assert c.next_wakeup(2.0) == 3.0  # the second failure: backoff(2) = 1 s
    assert c.schedule(PEERS, now=2.9) == []
    # a wait that ended a hair early: the expired backoff asks for a pass now
    assert c.next_wakeup(3.01) == 3.01
    assert one(c.schedule(PEERS, now=3.01), Dispatch).attempt == 3


def test_failed_node_is_reused_when_it_is_the_only_feasible_one() -> None:
    c = coordinator()
    c.submit("t1", job(sh("a", node="A")), now=0.0)
    first = one(c.schedule(PEERS, now=0.0), Dispatch)
    c.on_peer_dead("A", now=0.0)
    second = one(c.schedule(PEERS, now=1.0), Dispatch)
    assert (second.node_id, second.attempt) == ("A", 2) and first.attempt == 1


def test_sigstopped_worker_lease_lapses_and_its_late_result_is_stale() -> None:
    """A worker is SIGSTOPped mid-run: no progress, the lease lapses, the subtask moves
    to another peer; after SIGCONT the old worker's progress is told to cancel and its
    result is dropped (counted), whichever order the results arrive in."""
    c = coordinator(lease_s=10.0)
    c.submit("t1", job(sh("a")), now=0.0)
    old = one(c.schedule(PEERS, now=0.0), Dispatch)
    assert old.lease_s == 10.0
    accept(c, old, 1.0)
    assert c.on_progress("t1", "a", 1, "A", now=5.0) == []  # renews to 15.0
    assert c.tick(14.9) == []
    assert c.next_wakeup(14.9) == 15.0
    fx = c.tick(15.0)
    assert of(fx, Dispatch) == [] and c.counters["lost"] == 1
    assert "lease expired" in c.explain("t1")["subtasks"][0]["reasons"][0]
    new = one(c.schedule(PEERS, now=15.5), Dispatch)
    assert (new.node_id, new.attempt) == ("B", 2)

    # SIGCONT: the old worker carries on as if nothing happened.
    assert c.on_progress("t1", "a", 1, "A", now=16.0) == [CancelAttempt("t1", "a", 1, "A")]
    fx = answer(c, old, ok("old"), 16.5)
    assert fx == [Ack("t1", "a", 1, "A", committed=False)]
    assert c.counters["stale_results"] == 1
    assert states(c, "t1")["a"] == "dispatched"
    fx = answer(c, new, ok("new"), 17.0)
    assert one(fx, Ack).committed and c.status("t1")["state"] == "done"
    # A duplicate of the committed result is stale too.
    assert answer(c, new, ok("new"), 17.5) == [Ack("t1", "a", 2, "B", committed=False)]
    assert c.counters["stale_results"] == 2 and c.counters["committed"] == 1
    assert c.result("t1")["subtasks"]["a"]["stdout"] == "new"


def test_result_from_the_wrong_node_is_stale() -> None:
    c = coordinator()
    c.submit("t1", job(sh("a")), now=0.0)
    d = one(c.schedule(PEERS, now=0.0), Dispatch)
    assert c.on_result("t1", "a", d.attempt, "B", ok(), 1.0) == [
        Ack("t1", "a", 1, "B", committed=False)
    ]
    assert c.on_result("zz", "a", 1, "B", ok(), 1.0) == [Ack("zz", "a", 1, "B", committed=False)]
    assert c.counters["stale_results"] == 2
    assert one(answer(c, d, ok(), 2.0), Ack).committed


def test_retries_exhausted_fail_the_subtask_with_every_reason() -> None:
    c = coordinator(lease_s=5.0)
    c.submit("t1", job(sh("a", retries=2), sh("b", after=["a"]), sh("c", node="C")), now=0.0)
    fx = c.schedule(PEERS, now=0.0)
    a1 = next(d for d in of(fx, Dispatch) if d.subtask_id == "a")
    c_d = next(d for d in of(fx, Dispatch) if d.subtask_id == "c")
    c.on_peer_dead(a1.node_id, now=1.0)  # failure 1: retry after 0.5 s
    a2 = one(c.schedule(PEERS, now=1.5), Dispatch)
    assert a2.attempt == 2 and a2.node_id != a1.node_id
    c.on_progress("t1", "c", 1, "C", now=6.0)  # c keeps its lease
    c.tick(1.5 + 5.0)  # failure 2: lease lapsed, retry after 1 s
    assert c.schedule(PEERS, now=7.4) == []
    a3 = one(c.schedule(PEERS, now=7.5), Dispatch)
    assert a3.attempt == 3 and a3.node_id not in (a1.node_id, a2.node_id)
    fx = answer(c, a3, Result(error="endpoint unreachable"), 8.0)  # failure 3: worker error
    assert one(fx, Ack) == Ack("t1", "a", 3, a3.node_id, committed=False)
    assert of(fx, TaskFinished) == []  # c still runs

    row = {s["id"]: s for s in c.status("t1")["subtasks"]}
    assert row["a"]["state"] == "failed" and row["a"]["attempts"] == 3
    assert row["a"]["error"].startswith("gave up after 3 attempts: ")
    reasons = c.explain("t1")["subtasks"][0]["reasons"]
    assert reasons == [
        f"attempt 1 on {a1.node_id}: node lost",
        f"attempt 2 on {a2.node_id}: no word for 5 s (lease expired)",
        f"attempt 3 on {a3.node_id}: endpoint unreachable",
    ]
    assert all(r in row["a"]["error"] for r in reasons)
    assert row["b"]["state"] == "cancelled" and row["b"]["error"] == 'upstream "a" failed'
    assert c.counters["retries_exhausted"] == 1 and c.counters["retries"] == 2

    fx = answer(c, c_d, ok(), 9.0)
    assert one(fx, TaskFinished) == TaskFinished("t1", "failed")
    assert c.status("t1")["state"] == "failed"


def test_backoff_is_exponential_and_capped() -> None:
    config = CoordinatorConfig()
    assert [config.backoff(n) for n in (1, 2, 3, 4, 5, 6, 50, 5000)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        10.0,
        10.0,
        10.0,
    ]
    fast = CoordinatorConfig(backoff_base_s=0.1, backoff_factor=3.0, backoff_max_s=1.0)
    assert [fast.backoff(n) for n in (1, 2, 3)] == pytest.approx([0.1, 0.3, 0.9])
    assert fast.backoff(4) == 1.0


# ---------------------------------------------------------------- application failures


def test_app_failure_is_final_and_cancels_dependants() -> None:
    c = coordinator()
    c.submit("t1", job(sh("test", "pytest"), sh("report", after=["test"])), now=0.0)
    d = one(c.schedule(PEERS, now=0.0), Dispatch)
    fx = answer(c, d, Result(exit_code=1, stderr="1 failed", app_failed=True), 3.0)
    assert one(fx, Ack).committed
    assert one(fx, TaskFinished) == TaskFinished("t1", "failed")
    assert c.schedule(PEERS, now=10.0) == []
    rows = {s["id"]: s for s in c.status("t1")["subtasks"]}
    assert rows["test"]["state"] == "failed" and rows["test"]["exit_code"] == 1
    assert rows["test"]["error"] == "exit code 1" and rows["test"]["attempts"] == 1
    assert rows["report"]["state"] == "cancelled"
    assert rows["report"]["error"] == 'upstream "test" failed'
    assert c.result("t1")["subtasks"]["test"]["stderr"] == "1 failed"
    assert c.counters["app_failures"] == 1 and c.counters["retries"] == 0


def test_app_failure_is_retried_with_retry_on_error() -> None:
    c = coordinator()
    c.submit("t1", job(sh("flaky", retry_on_error=True, retries=1)), now=0.0)
    d1 = one(c.schedule(PEERS, now=0.0), Dispatch)
    fx = answer(c, d1, Result(exit_code=3, app_failed=True), 1.0)
    assert one(fx, Ack) == Ack("t1", "flaky", 1, "A", committed=False)
    assert states(c, "t1")["flaky"] == "ready"
    d2 = one(c.schedule(PEERS, now=1.5), Dispatch)
    assert d2.attempt == 2 and d2.node_id == "B"
    fx = answer(c, d2, Result(exit_code=3, app_failed=True, error="boom"), 2.0)
    assert one(fx, Ack).committed  # retries used up: the last answer is the result
    row = c.status("t1")["subtasks"][0]
    assert row["state"] == "failed" and row["exit_code"] == 3
    assert (
        row["error"]
        == "gave up after 2 attempts: attempt 1 on A: exit code 3; attempt 2 on B: boom"
    )


# ---------------------------------------------------------------- refusals


def test_refusal_tries_the_next_candidate_at_once_without_using_a_retry() -> None:
    c = coordinator(refused_wait_s=1.0)
    c.submit("t1", job(sh("a", retries=0)), now=0.0)
    d1 = one(c.schedule(PEERS, now=0.0), Dispatch)
    assert d1.node_id == "A"
    fx = c.on_refused("t1", "a", 1, "A", "full", now=0.1)
    d2 = one(fx, Dispatch)
    assert (d2.node_id, d2.attempt) == ("B", 2)
    assert [type(e) for e in fx] == [Journal, Dispatch]
    d3 = one(c.on_refused("t1", "a", 2, "B", "full", now=0.2), Dispatch)
    assert (d3.node_id, d3.attempt) == ("C", 3)
    fx = c.on_refused("t1", "a", 3, "C", "full", now=0.3)
    assert of(fx, Dispatch) == [] and states(c, "t1")["a"] == "ready"
    assert c.schedule(PEERS, now=1.0) == []  # everyone refused: wait refused_wait_s
    d4 = one(c.schedule(PEERS, now=1.3), Dispatch)
    assert (d4.node_id, d4.attempt) == ("A", 4)
    # A stale refusal (an old attempt) changes nothing.
    assert c.on_refused("t1", "a", 2, "B", "full", now=1.4) == []
    accept(c, d4, 1.5)
    assert c.on_refused("t1", "a", 4, "A", "full", now=1.6) == []  # already accepted
    assert one(answer(c, d4, ok(), 2.0), Ack).committed
    row = c.status("t1")["subtasks"][0]
    assert row["state"] == "done" and row["attempts"] == 1  # refused dispatches never ran
    assert c.counters["refused"] == 3 and c.counters["retries"] == 0
    assert len(c.explain("t1")["subtasks"][0]["refusals"]) == 3


# ---------------------------------------------------------------- cancel, deadline, placement


def test_cancel_stops_running_attempts() -> None:
    c = coordinator()
    c.submit("t1", job(sh("a"), sh("b"), sh("c", after=["a"]), sh("d")), now=0.0)
    fx = c.schedule([A, B], now=0.0)
    dispatched = {d.subtask_id: d for d in of(fx, Dispatch)}
    assert set(dispatched) == {"a", "b", "d"}
    answer(c, dispatched["d"], ok(), 0.5)
    accept(c, dispatched["a"], 0.6)

    fx = c.cancel("t1", now=1.0)
    assert sorted((x.subtask_id, x.attempt, x.node_id) for x in of(fx, CancelAttempt)) == [
        ("a", 1, dispatched["a"].node_id),
        ("b", 1, dispatched["b"].node_id),
    ]
    assert one(fx, TaskFinished) == TaskFinished("t1", "cancelled")
    assert states(c, "t1") == {"a": "cancelled", "b": "cancelled", "c": "cancelled", "d": "done"}
    assert c.status("t1")["state"] == "cancelled" and c.status("t1")["finished"] == 1.0
    assert c.cancel("t1", now=2.0) == []
    assert answer(c, dispatched["a"], ok(), 3.0) == [Ack("t1", "a", 1, "A", committed=False)]
    assert c.tick(100.0) == [] and c.schedule(PEERS, now=100.0) == []
    with pytest.raises(UnknownTask):
        c.cancel("nope", now=0.0)


def test_unplaceable_subtask_waits_with_its_placement_then_the_deadline_fails_it() -> None:
    c = coordinator()
    spec = job(
        {"id": "ask", "kind": "llm", "capability": "security", "prompt": "hi"},
        sh("quick"),
        deadline="10s",
    )
    c.submit("t1", spec, now=100.0)
    fx = c.schedule(PEERS, now=100.0)
    quick = one(fx, Dispatch)
    assert quick.subtask_id == "quick"
    accept(c, quick, 100.5)
    assert states(c, "t1")["ask"] == "ready"
    row = next(s for s in c.explain("t1")["subtasks"] if s["id"] == "ask")
    assert row["reason"].startswith("no feasible peer among 3")
    assert [r["peer"] for r in row["candidates"]] == ["A", "B", "C"]
    assert all(not r["feasible"] and "serves no models" in r["why_not"] for r in row["candidates"])
    c.schedule(PEERS, now=101.0)
    assert c.explain("t1")["subtasks"][0]["priced"] == 2

    assert c.next_wakeup(102.0) == 110.0
    assert c.tick(109.9) == []
    fx = c.tick(110.0)
    assert one(fx, CancelAttempt) == CancelAttempt("t1", "quick", 1, "A")
    assert one(fx, TaskFinished) == TaskFinished("t1", "failed")
    rows = {s["id"]: s for s in c.status("t1")["subtasks"]}
    assert rows["ask"]["state"] == rows["quick"]["state"] == "failed"
    assert rows["ask"]["error"] == "deadline exceeded"
    assert c.counters["deadline_exceeded"] == 1


def test_deadline_cancels_subtasks_that_never_became_ready() -> None:
    c = coordinator()
    c.submit("t1", job(sh("a"), sh("b", after=["a"]), deadline="5s"), now=0.0)
    c.schedule(PEERS, now=0.0)
    c.tick(5.0)
    assert states(c, "t1") == {"a": "failed", "b": "cancelled"}


def test_priority_orders_the_ready_queue_and_a_pass_counts_its_own_dispatches() -> None:
    solo = peer("S", slots_total=1)
    c = Coordinator(node_id="me", pricing=PricingConfig(max_queue=0))
    c.submit("low", job(sh("a"), priority="low"), now=0.0)
    c.submit("crit", job(sh("a"), priority="critical"), now=1.0)
    fx = c.schedule([solo], now=2.0)
    assert [d.task_id for d in of(fx, Dispatch)] == ["crit"]  # then S is full this pass
    assert states(c, "low")["a"] == "ready"
    assert "queue full" in c.explain("low")["subtasks"][0]["candidates"][0]["why_not"]
    assert c.load_by_node()["S"].slots == 1


def test_critical_path_first_within_a_job() -> None:
    """Ready subtasks of one job go longest-chain-first (upward rank from `estimate`,
    1 s without one), not in file order; a slot that frees goes to the chain."""
    solo = peer("S", slots_total=1)
    c = Coordinator(node_id="me", pricing=PricingConfig(max_queue=0))
    spec = job(
        sh("leaf1"),
        sh("leaf2", estimate="3s"),
        sh("head"),
        sh("mid", after=["head"]),
        sh("tail", after=["mid"], estimate="2.5s"),
    )
    c.submit("t", spec, now=0.0)
    # urgency: head 1+1+2.5 = 4.5; then mid 3.5 > leaf2 3 > tail 2.5 > leaf1 1
    order = []
    now = 1.0
    while (fx := c.schedule([solo], now=now)) and (ds := of(fx, Dispatch)):
        (d,) = ds
        order.append(d.subtask_id)
        accept(c, d, now)
        answer(c, d, ok(), now + 0.1)
        now += 1.0
    assert order == ["head", "mid", "leaf2", "tail", "leaf1"], order
    assert states(c, "t") == dict.fromkeys(["leaf1", "leaf2", "head", "mid", "tail"], "done")


def test_estimate_is_the_shell_pricing_hint() -> None:
    c = Coordinator(node_id="me", pricing=PricingConfig(max_queue=0))
    c.submit("t", job(sh("a", estimate="90s")), now=0.0)
    c.schedule([peer("S", speed=3.0)], now=1.0)
    (row,) = c.explain("t")["subtasks"][0]["candidates"]
    assert row["run_s"] == pytest.approx(30.0) and "hint 90 s / speed 3" in row["basis"], row


def test_load_by_node_counts_llm_requests_per_profile() -> None:
    gpu = peer("G", models=(offer("fast"),), slots_total=0)
    c = coordinator()
    prompt = {"kind": "llm", "capability": "lint", "prompt": "x"}
    c.submit("t1", job({"id": "p", **prompt}, {"id": "q", **prompt}, sh("s")), now=0.0)
    fx = c.schedule([gpu, A], now=0.0)
    assert len(of(fx, Dispatch)) == 3
    load = c.load_by_node()
    assert load["G"].models == {"fast": 2} and load["G"].slots == 0
    assert load["A"].slots == 1 and load["A"].models == {}


def test_llm_results_feed_the_throughput_tracker() -> None:
    tracker = ThroughputTracker()
    gpu = peer("G", models=(offer("fast"),))
    c = Coordinator(node_id="me", throughput=tracker)
    c.submit("t1", job({"id": "p", "kind": "llm", "capability": "lint", "prompt": "x"}), now=0.0)
    d = one(c.schedule([gpu], now=0.0), Dispatch)
    usage = {"prompt_tokens": 10, "completion_tokens": 90, "total_tokens": 100}
    answer(c, d, Result(output="y", usage=usage, duration_s=2.5, latency_s=0.5), 3.0)
    # completion tokens per second after the first token: 90 / (2.5 - 0.5)
    assert tracker.tokens_per_s("G", "fast") == pytest.approx(45.0)
    assert tracker.latency_s("G", "fast") == pytest.approx(0.5)


def test_stale_accept_is_told_to_cancel_and_progress_keeps_a_lease() -> None:
    c = coordinator(lease_s=2.0)
    c.submit("t1", job(sh("a")), now=0.0)
    d = one(c.schedule(PEERS, now=0.0), Dispatch)
    for t in (1.5, 3.0, 4.5, 6.0):
        assert c.on_progress("t1", "a", 1, "A", now=t) == [] or t == 1.5
        assert c.tick(t + 1.9) == []
    assert c.status("t1")["subtasks"][0]["state"] == "running"
    assert c.on_accepted("t1", "a", 7, "A", now=6.5) == [CancelAttempt("t1", "a", 7, "A")]
    assert c.on_accepted("zz", "a", 1, "A", now=6.5) == [CancelAttempt("zz", "a", 1, "A")]
    assert one(answer(c, d, ok(), 7.0), Ack).committed


def test_forget_drops_a_finished_task() -> None:
    c = coordinator()
    c.submit("t1", job(sh("a")), now=0.0)
    with pytest.raises(ValueError, match="still"):
        c.forget("t1")
    answer(c, one(c.schedule(PEERS, now=0.0), Dispatch), ok(), 1.0)
    assert c.forget("t1") == [Journal("forget", {"task": "t1"})]
    assert c.tasks() == []


# ---------------------------------------------------------------- journal and restore


class Store:
    """A stand-in for the shell's SQLite journal: JSON rows, last one per key wins."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], str] = {}

    def apply(self, effects: list[Effect]) -> list[Effect]:
        seen_other = False
        for e in effects:
            if isinstance(e, Journal):
                assert not seen_other, "journal records must come first"
                if e.kind == "forget":
                    self.rows = {k: v for k, v in self.rows.items() if k[1] != e.data["task"]}
                else:
                    self.rows[e.key] = json.dumps(e.data)
            else:
                seen_other = True
        return effects

    def records(self) -> list[Journal]:
        return [Journal(k[0], json.loads(v)) for k, v in self.rows.items()]


def test_restore_resumes_an_unfinished_task() -> None:
    store = Store()
    c = coordinator(lease_s=10.0)
    spec = job(sh("a"), sh("b", "echo", "{{ a.stdout }}", after=["a"]), sh("c"), sh("d"))
    store.apply(c.submit("t1", spec, now=0.0))
    peers = [replace(p, slots_total=1) for p in PEERS]  # one subtask per peer
    fx = store.apply(c.schedule(peers, now=0.0))
    first = {d.subtask_id: d for d in of(fx, Dispatch)}
    assert {k: d.node_id for k, d in first.items()} == {"a": "A", "c": "B", "d": "C"}
    store.apply(answer(c, first["a"], ok("A-out\n"), 1.0))
    store.apply(c.on_peer_dead(first["d"].node_id, now=1.5))  # d: attempt 1 lost
    fx = store.apply(c.schedule(peers, now=2.0))
    b = one([d for d in of(fx, Dispatch) if d.subtask_id == "b"], Dispatch)
    d2 = one([d for d in of(fx, Dispatch) if d.subtask_id == "d"], Dispatch)
    assert b.spec.run == ("echo", "A-out") and d2.attempt == 2
    store.apply(accept(c, b, 2.5))
    # The coordinator crashes here: a done, b and c and d out on workers.

    r = coordinator(lease_s=10.0, restore_grace_s=30.0)
    assert store.apply(r.restore(store.records(), now=500.0)) == []
    assert r.status("t1")["state"] == "running" and r.record("t1").spec == spec
    # "running" is not journaled (in flight either way): b's worker's next word says so.
    assert states(r, "t1") == {"a": "done", "b": "dispatched", "c": "dispatched", "d": "dispatched"}
    assert r.result("t1")["subtasks"]["a"]["stdout"] == "A-out\n"
    assert r.schedule(peers, now=500.0) == []  # nothing re-run, nothing doubled
    # b's worker reports: re-adopted and committed.
    fx = store.apply(answer(r, b, ok("B-out"), 501.0))
    assert one(fx, Ack).committed
    # d's old attempt 1 is still fenced off after the restart.
    assert answer(r, first["d"], ok(), 501.5) == [Ack("t1", "d", 1, first["d"].node_id, False)]
    store.apply(answer(r, d2, ok(), 502.0))
    # c's worker never reports (the dispatch was lost in the crash): lost after the grace.
    assert r.tick(529.9) == []
    store.apply(r.tick(530.0))
    c2 = one(store.apply(r.schedule(peers, now=531.0)), Dispatch)
    assert (c2.subtask_id, c2.attempt) == ("c", 2)
    assert c2.node_id != first["c"].node_id
    fx = store.apply(answer(r, c2, ok(), 532.0))
    assert one(fx, TaskFinished) == TaskFinished("t1", "done")
    assert r.counters["committed"] == 3  # b, d, c; a was committed before the crash

    # A second restart sees the finished task and has nothing to do.
    again = coordinator()
    assert again.restore(store.records(), now=1000.0) == []
    assert again.status("t1")["state"] == "done"
    assert again.result("t1") == r.result("t1")
    assert again.tick(2000.0) == [] and again.schedule(peers, now=2000.0) == []


def test_restore_keeps_backoff_deadline_and_counts_bad_records() -> None:
    store = Store()
    c = coordinator()
    store.apply(c.submit("t1", job(sh("a", retries=1), deadline="60s"), now=0.0))
    store.apply(c.submit("t2", job(sh("x")), now=0.0))
    fx = store.apply(c.schedule([A], now=0.0))
    x = one([d for d in of(fx, Dispatch) if d.task_id == "t2"], Dispatch)
    store.apply(answer(c, x, ok(), 0.5))
    a1 = one([d for d in of(fx, Dispatch) if d.task_id == "t1"], Dispatch)
    store.apply(answer(c, a1, Result(error="executor crashed"), 1.0))  # backs off 0.5 s
    store.apply(c.forget("t2"))
    records = [
        *store.records(),
        Journal("task", {"task": "bad", "job": {"name": 3}, "submitted": 0}),
    ]

    r = coordinator()
    (bad,) = r.restore(records, now=1.2)  # quarantined; the rest restored
    assert isinstance(bad, Quarantine) and bad.key == ("task", "bad", "")
    assert r.task_ids() == ["t1"] and r.counters["restore_errors"] == 1
    assert r.schedule([A], now=1.4) == []  # still backing off (until 1.5)
    d = one(r.schedule([A], now=1.5), Dispatch)
    assert d.attempt == 2
    fx = r.tick(60.0)
    assert one(fx, TaskFinished) == TaskFinished("t1", "failed")
    with pytest.raises(ValueError, match="without tasks"):
        r.restore(records, now=0.0)


def test_restore_of_a_task_whose_last_subtask_finished_before_its_state_was_saved() -> None:
    store = Store()
    c = coordinator()
    store.apply(c.submit("t1", job(sh("a")), now=0.0))
    fx = c.schedule([A], now=0.0)
    store.apply(fx)
    done = answer(c, one(fx, Dispatch), ok(), 1.0)
    # Persist only the subtask record, as if the task_state row were lost.
    store.apply([e for e in done if isinstance(e, Journal) and e.kind == "subtask"])
    r = coordinator()
    fx = r.restore(store.records(), now=2.0)
    assert one(fx, TaskFinished) == TaskFinished("t1", "done")
    assert r.status("t1")["state"] == "done"


# ---------------------------------------------------------------- fencing property

OPS = st.one_of(
    st.tuples(st.just("schedule"), st.just(0)),
    st.tuples(st.just("tick"), st.floats(0.0, 12.0)),
    st.tuples(st.just("dead"), st.integers(0, 2)),
    st.tuples(st.just("accept"), st.integers(0, 40)),
    st.tuples(st.just("refuse"), st.integers(0, 40)),
    st.tuples(st.just("ok"), st.integers(0, 40)),
    st.tuples(st.just("app"), st.integers(0, 40)),
    st.tuples(st.just("worker_error"), st.integers(0, 40)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, max_size=60), st.booleans(), st.integers(1, 3))
def test_exactly_one_commit_per_subtask_whatever_the_interleaving(
    ops: list[tuple[str, Any]], retry_on_error: bool, n_peers: int
) -> None:
    """Random interleavings of dispatch, accept, refusal, peer death, lease lapse and
    results (current, old, duplicated, failed) against an independent model of which
    attempt is live: only a live attempt's result commits, at most once per subtask."""
    peers = PEERS[:n_peers]  # with one peer every retry reuses the same node
    lease = 5.0
    c = coordinator(lease_s=lease)
    spec = job(
        sh("x", retries=3, retry_on_error=retry_on_error),
        sh("y", "{{ x.stdout }}", after=["x"], retries=3),
        sh("z", retries=3),
    )
    now = 0.0
    dispatched: list[Dispatch] = []
    numbers: dict[str, list[int]] = {"x": [], "y": [], "z": []}
    commits: Counter[str] = Counter()
    # An independent model of which attempt may be committed: subtask -> (attempt, node).
    live: dict[str, tuple[int, str]] = {}
    accepted: set[tuple[str, int]] = set()
    lease_until: dict[str, float] = {}

    def absorb(effects: Sequence[Effect]) -> None:
        for e in effects:
            if isinstance(e, Dispatch):
                if live.get(e.subtask_id) == (e.attempt, e.node_id):
                    continue  # the same attempt sent again: no word on it yet
                numbers[e.subtask_id].append(e.attempt)
                assert e.attempt == len(numbers[e.subtask_id])  # 1, 2, 3 ...
                live[e.subtask_id] = (e.attempt, e.node_id)
                lease_until[e.subtask_id] = now + lease
                dispatched.append(e)
            elif isinstance(e, Ack) and e.committed:
                commits[e.subtask_id] += 1
        for sid in list(live):
            if c.record("t1").subtasks[sid].final:
                del live[sid]

    absorb(c.submit("t1", spec, now))
    for op, arg in ops:
        if op == "schedule":
            absorb(c.schedule(peers, now))
        elif op == "tick":
            now += arg
            absorb(c.tick(now))
            for sid, until in list(lease_until.items()):
                if sid in live and until <= now:
                    del live[sid]
        elif op == "dead":
            node = PEERS[arg].node_id  # may be a node outside the view: a no-op
            for sid, (_, n) in list(live.items()):
                if n == node:
                    del live[sid]
            absorb(c.on_peer_dead(node, now))
        elif dispatched:
            d = dispatched[arg % len(dispatched)]
            is_live = live.get(d.subtask_id) == (d.attempt, d.node_id)
            if op == "accept":
                fx = accept(c, d, now)
                if is_live:
                    accepted.add((d.subtask_id, d.attempt))
                    lease_until[d.subtask_id] = now + lease
                assert (of(fx, CancelAttempt) == []) == is_live
            elif op == "refuse":
                if is_live and (d.subtask_id, d.attempt) not in accepted:
                    del live[d.subtask_id]
                absorb(c.on_refused(d.task_id, d.subtask_id, d.attempt, d.node_id, "full", now))
            else:
                result = {
                    "ok": ok(f"out-{d.subtask_id}-{d.attempt}"),
                    "app": Result(exit_code=1, app_failed=True),
                    "worker_error": Result(error="broken"),
                }[op]
                stale_before = c.counters["stale_results"]
                committed_before = commits[d.subtask_id]
                if is_live:
                    del live[d.subtask_id]
                fx = answer(c, d, result, now)
                ack = one(fx, Ack)
                assert (c.counters["stale_results"] > stale_before) == (not is_live)
                absorb(fx)
                if ack.committed:
                    assert is_live and committed_before == 0
                    assert d.attempt == numbers[d.subtask_id][-1]  # the current attempt
                    assert c.record("t1").subtasks[d.subtask_id].result is result
                    assert c.record("t1").subtasks[d.subtask_id].final
                    if op == "ok":
                        assert c.record("t1").subtasks[d.subtask_id].state == "done"
        assert all(n <= 1 for n in commits.values())

    # Drive to the end on a healthy cluster: every task ends, nothing commits twice.
    for _ in range(30):
        if c.record("t1").final:
            break
        now += 20.0
        absorb(c.tick(now))
        fx = c.schedule(peers, now)
        absorb(fx)
        for d in of(fx, Dispatch):
            absorb(answer(c, d, ok(f"out-{d.subtask_id}-{d.attempt}"), now))
    task = c.record("t1")
    assert task.final and task.state in ("done", "failed")
    for sid, rec in task.subtasks.items():
        assert commits[sid] == (1 if rec.result is not None else 0)
        if rec.state == "done":
            assert rec.result is not None and rec.result.stdout == f"out-{sid}-{rec.attempt}"
        assert len(rec.attempts) <= rec.spec.retries + 1
    if task.state == "done":
        y = task.subtasks["y"].rendered
        assert y is not None and y.run == (task.subtasks["x"].result.stdout,)  # type: ignore[union-attr]


def test_journal_records_are_json_and_keyed() -> None:
    c = coordinator()
    fx = c.submit("t1", job(sh("a")), now=0.0)
    fx += c.schedule(PEERS, now=0.0)
    journal = of(fx, Journal)
    assert {j.kind for j in journal} == {"task", "task_state", "subtask"}
    for j in journal:
        assert json.loads(json.dumps(j.data)) == j.data
    assert {j.key for j in journal} == {
        ("task", "t1", ""),
        ("task_state", "t1", ""),
        ("subtask", "t1", "a"),
    }
    sub = [j for j in journal if j.kind == "subtask"][-1].data
    assert sub["state"] == "dispatched" and sub["attempt"] == 1
    assert sub["attempts"][0]["node_id"] == "A"


def test_result_data_round_trips() -> None:
    r = Result(1, "o", "e", "out", {"total_tokens": 3}, ("f",), "err", True, 1.5, 0.1)
    assert Result.from_data(json.loads(json.dumps(r.to_data()))) == r
    assert replace(r, app_failed=False).worker_error and Result().ok


def test_a_dispatch_no_word_came_for_is_sent_again_until_the_worker_speaks() -> None:
    c = coordinator(lease_s=10.0, dispatch_resend_s=2.0)
    c.submit("t1", job(sh("a")), now=0.0)
    d = one(c.schedule(PEERS, now=0.0), Dispatch)
    assert c.next_wakeup(0.0) == 2.0
    assert c.tick(1.9) == []
    again = one(c.tick(2.0), Dispatch)  # lost on the way? the same attempt, same node
    assert (again.attempt, again.node_id, again.spec) == (d.attempt, d.node_id, d.spec)
    assert c.counters["dispatch_resent"] == 1 and c.next_wakeup(2.0) == 4.0
    accept(c, d, 2.5)  # its start: the worker has it
    assert c.tick(4.0) == [] and c.next_wakeup(4.0) == 12.5  # only the lease now


def test_a_restored_coordinator_does_not_dispatch_again_what_was_out() -> None:
    """Which run of the worker had the attempt is not journaled: sent again, a worker
    restarted since could run it twice. It waits for word, or the grace."""
    c = coordinator(lease_s=10.0, restore_grace_s=30.0)
    journal = [e for e in c.submit("t1", job(sh("a")), now=0.0) if isinstance(e, Journal)]
    journal += [e for e in c.schedule(PEERS, now=0.0) if isinstance(e, Journal)]
    r = coordinator(lease_s=10.0, restore_grace_s=30.0)
    r.restore(journal, now=100.0)
    assert r.tick(100.0) == [] and r.tick(129.9) == []
    assert r.next_wakeup(100.0) == 130.0


def test_a_coordinator_never_sends_a_profile_more_than_its_max_concurrency() -> None:
    """Many ready llm subtasks, two profiles (max_concurrency 2 and 1), priced as the
    daemon does (max_queue 0, each pass against the peer view rebuilt with this
    coordinator's in-flight counts): at no point are more requests out on a profile
    than it runs at once; the rest queue here, and all finish."""
    limits = {("G", "fast"): 2, ("H", "slow"): 1}
    gossip = {
        node: {
            "hw": {"cpu": {"cores": 4}},
            "models": [
                {"name": name, "model": "m", "capabilities": ["lint"], "max_concurrency": n}
            ],
        }
        for (node, name), n in limits.items()
    }
    rng = random.Random(7)
    c = Coordinator(node_id="me", pricing=PricingConfig(max_queue=0))
    prompts = [
        {"id": f"p{i}", "kind": "llm", "capability": "lint", "prompt": "x"} for i in range(30)
    ]
    c.submit("t1", job(*prompts), now=0.0)
    out: list[Dispatch] = []
    now, peak = 0.0, {key: 0 for key in limits}
    while c.status("t1")["state"] not in ("done", "failed"):
        loads = c.load_by_node()
        peers = [
            peer_from_gossip(
                node,
                values,
                alive=True,
                rtt_s=0.001,
                model_in_flight=loads[node].models if node in loads else {},
                coordinator_id="me",
            )
            for node, values in gossip.items()
        ]
        out += of(c.schedule(peers, now), Dispatch)
        for key, limit in limits.items():
            running = sum(1 for d in out if (d.node_id, d.model) == key)
            assert running <= limit, (key, running)
            peak[key] = max(peak[key], running)
        assert out, "nothing in flight and nothing dispatched"
        now += 1.0
        d = out.pop(rng.randrange(len(out)))
        usage = {"completion_tokens": 10, "seconds": 0.5, "ttft_s": 0.1}
        answer(c, d, Result(output="y", usage=usage, duration_s=0.5, latency_s=0.1), now)
    assert c.status("t1")["state"] == "done"
    assert peak == limits  # both profiles were used up to their limit, never beyond
