"""Grouping small llm subtasks (swarmd.core.tasks.grouping): ready together, for one
model profile, they go to one node up to its free concurrency, priced once."""

from __future__ import annotations

from collections import Counter
from typing import Any

from swarmd.core.pricing import PricingConfig
from swarmd.core.tasks import Coordinator, CoordinatorConfig, Dispatch
from swarmd.core.worker import Start, WorkerConfig, WorkerCore
from tests.capacity import peer
from tests.test_tasks import job, of, offer
from tests.test_worker_core import dispatch as worker_dispatch


def coordinator(**config: Any) -> Coordinator:
    # As the daemon prices: a full model profile is not a candidate (max_queue 0).
    return Coordinator(
        node_id="coord-id",
        node_name="coord",
        config=CoordinatorConfig(**config),
        pricing=PricingConfig(max_queue=0),
    )


def llm_peer(name: str, rtt_s: float, *offers: Any) -> Any:
    return peer(name, rtt_s=rtt_s, slots_total=0, models=offers or (offer("fast"),))


def prompts(n: int, max_tokens: int = 16, **kw: Any) -> list[dict[str, Any]]:
    return [
        {"id": f"p{i}", "kind": "llm", "capability": "lint", "prompt": "Say hi.", **kw}
        | {"max_tokens": max_tokens}
        for i in range(n)
    ]


def explain_rows(c: Coordinator, task: str) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in c.explain(task)["subtasks"]}


def test_small_prompts_go_as_groups_up_to_each_nodes_free_concurrency() -> None:
    a = llm_peer("A", 0.001, offer("fast", max_concurrency=4))
    b = llm_peer("B", 0.002, offer("fast", max_concurrency=3))
    c = coordinator()
    c.submit("t1", job(*prompts(10)), now=0.0)
    sent = of(c.schedule([a, b], now=0.1), Dispatch)
    # A (nearer) takes a group of 4, B a group of 3; the rest wait for room.
    assert [d.node_id for d in sent] == ["A"] * 4 + ["B"] * 3
    rows = explain_rows(c, "t1")
    assert [rows[f"p{i}"]["priced"] for i in range(7)] == [1, 0, 0, 0, 1, 0, 0]
    assert rows["p2"]["grouped"] == {
        "task": "t1",
        "lead": "p0",
        "node_id": "A",
        "peer": "A",
        "model": "fast",
        "size": 4,
    }
    assert rows["p6"]["grouped"]["lead"] == "p4" and rows["p6"]["grouped"]["size"] == 3
    # A member shows the candidate table its group was priced with, A chosen.
    assert [r["peer"] for r in rows["p3"]["candidates"] if r["chosen"]] == ["A"]
    assert rows["p7"]["state"] == "ready" and rows["p7"]["grouped"] is None
    assert c.counters["grouped"] == 5


def test_a_group_fills_only_the_room_left_by_requests_in_flight() -> None:
    busy = llm_peer("A", 0.001, offer("fast", max_concurrency=4, in_flight=3))
    c = coordinator()
    c.submit("t1", job(*prompts(3)), now=0.0)
    sent = of(c.schedule([busy], now=0.1), Dispatch)
    assert len(sent) == 1  # one free: the group is its lead alone
    assert explain_rows(c, "t1")["p0"]["grouped"]["size"] == 1


def test_grouping_off_prices_each_subtask_alone() -> None:
    a = llm_peer("A", 0.001, offer("fast", max_concurrency=4))
    c = coordinator(llm_grouping=False)
    c.submit("t1", job(*prompts(4)), now=0.0)
    sent = of(c.schedule([a], now=0.1), Dispatch)
    assert [d.node_id for d in sent] == ["A"] * 4
    rows = explain_rows(c, "t1")
    assert all(r["priced"] == 1 and r["grouped"] is None for r in rows.values())
    assert c.counters["grouped"] == 0


def test_big_requests_are_priced_one_by_one() -> None:
    a = llm_peer("A", 0.001, offer("fast", max_concurrency=4))
    c = coordinator(group_max_tokens=512)
    c.submit("t1", job(*prompts(3, max_tokens=2000)), now=0.0)
    assert len(of(c.schedule([a], now=0.1), Dispatch)) == 3
    rows = explain_rows(c, "t1")
    assert all(r["grouped"] is None for r in rows.values())


def test_groups_are_per_model_profile_and_across_tasks() -> None:
    fast, deep = offer("fast", max_concurrency=4), offer("deep", ("review",), max_concurrency=4)
    a = llm_peer("A", 0.001, fast, deep)
    c = coordinator()
    c.submit("t1", job(*prompts(2), *[p | {"id": f"r{i}", "capability": "review"}
                                      for i, p in enumerate(prompts(2))]), now=0.0)  # fmt: skip
    c.submit("t2", job(*prompts(2)), now=0.0)
    sent = of(c.schedule([a], now=0.1), Dispatch)
    assert Counter(d.model for d in sent) == {"fast": 4, "deep": 2}
    t1, t2 = explain_rows(c, "t1"), explain_rows(c, "t2")
    assert t1["p1"]["grouped"]["lead"] == "p0" and t1["p1"]["grouped"]["size"] == 4
    assert t1["r1"]["grouped"]["lead"] == "r0" and t1["r1"]["grouped"]["size"] == 2
    assert t2["p0"]["grouped"]["task"] == "t1"  # joined t1's group: one dispatch to A


def test_a_member_refused_by_the_groups_node_goes_on_alone() -> None:
    a = llm_peer("A", 0.001, offer("fast", max_concurrency=2))
    b = llm_peer("B", 0.002, offer("fast", max_concurrency=2))
    c = coordinator()
    c.submit("t1", job(*prompts(2)), now=0.0)
    first, second = of(c.schedule([a, b], now=0.1), Dispatch)
    assert first.node_id == second.node_id == "A"
    fx = c.on_refused("t1", "p1", second.attempt, "A", "model busy", now=0.2)
    assert one_dispatch(fx).node_id == "B"
    assert explain_rows(c, "t1")["p1"]["grouped"] is None


def one_dispatch(effects: Any) -> Dispatch:
    found = of(effects, Dispatch)
    assert len(found) == 1, effects
    return found[0]


def test_the_worker_starts_a_groups_attempts_at_once_up_to_max_concurrency() -> None:
    w = WorkerCore("W", WorkerConfig(models={"fast": 3}))
    effects = []
    for i in range(4):
        d = worker_dispatch(f"p{i}", kind="llm", model="fast")
        effects += w.on_dispatch(d, now=0.0)
    started = [e for e in effects if isinstance(e, Start)]
    assert [e.key[1] for e in started] == ["p0", "p1", "p2"]  # concurrently, none queued
    assert w.counters["refused"] == 1  # the fourth: the coordinator's view was stale
