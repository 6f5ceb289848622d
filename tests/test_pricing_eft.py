"""Earliest finish with the work a node holds, late binding and look-ahead
(swarmd.core.pricing_eft, swarmd.core.pricing, swarmd.core.tasks.scheduler)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmd.core.pricing import Demand, PricingConfig, price
from swarmd.core.pricing_eft import Held, after_dispatch, free_in
from swarmd.core.tasks import Coordinator, CoordinatorConfig, Dispatch
from tests.capacity import peer
from tests.test_tasks import answer, job, of, ok

LOOK = PricingConfig(max_queue=0, lookahead_max_s=30.0, queue_ahead_s=1.0, queue_slot_wait_s=0)

# ---------------------------------------------------------------- free_in


def test_free_in_list_schedules_the_held_attempts_in_the_order_sent() -> None:
    # Two slots; three attempts of 4 s sent at 0, 1, 2; now is 3.
    held = [Held(0.0, 4.0), Held(1.0, 4.0), Held(2.0, 4.0)]
    # Slot A: 0-4 then 4-8; slot B: 1-5. From now (3): B frees in 2, A in 5.
    assert free_in(2, held, 3.0) == pytest.approx((2.0, 5.0))
    # Order of the list does not matter, the order sent does.
    assert free_in(2, list(reversed(held)), 3.0) == pytest.approx((2.0, 5.0))
    # No attempts: every slot free now; no slots: nothing.
    assert free_in(3, [], 9.0) == (0.0, 0.0, 0.0)
    assert free_in(0, held, 3.0) == ()


def test_free_in_waits_for_inputs_and_counts_other_coordinators_work() -> None:
    # The attempt's inputs arrive 5 s after it was sent: it starts then.
    assert free_in(1, [Held(0.0, 2.0, input_s=5.0)], 1.0) == pytest.approx((6.0,))
    # Two attempts of others at 3 s each, one slot, then ours of 1 s.
    assert free_in(1, [Held(1.0, 1.0)], 1.0, others=2, other_s=3.0) == pytest.approx((7.0,))


def test_an_attempt_past_its_estimate_needs_half_its_overrun_again() -> None:
    # Estimated 2 s, sent at 0, still running at 10: 8 s late, taken to need 4 s more.
    assert free_in(1, [Held(0.0, 2.0)], 10.0) == pytest.approx((4.0,))
    # The longer it overruns, the later it is taken to end.
    assert free_in(1, [Held(0.0, 2.0)], 20.0) == pytest.approx((9.0,))


def test_after_dispatch_takes_the_slot_that_frees_first() -> None:
    assert after_dispatch((1.0, 4.0), 5.0) == pytest.approx((4.0, 6.0))
    assert after_dispatch((0.0,), 2.0, input_s=3.0) == pytest.approx((5.0,))
    assert after_dispatch((), 2.0) == ()
    assert after_dispatch((0.0,), math.nan, input_s=-1.0) == (0.0,)


@settings(max_examples=200, deadline=None)
@given(
    slots=st.integers(1, 4),
    held=st.lists(
        st.tuples(st.floats(0, 10), st.floats(0, 10), st.floats(0, 3)), min_size=0, max_size=8
    ),
    now=st.floats(0, 20),
    run=st.floats(0, 5),
)
def test_free_in_is_sorted_non_negative_and_one_more_attempt_never_frees_a_slot_sooner(
    slots: int, held: list[tuple[float, float, float]], now: float, run: float
) -> None:
    attempts = [Held(s, r, i) for s, r, i in held]
    free = free_in(slots, attempts, now)
    assert len(free) == slots and list(free) == sorted(free) and min(free) >= 0.0
    later = after_dispatch(free, run)
    assert all(b >= a - 1e-9 for a, b in zip(free, later, strict=True))


# ---------------------------------------------------------------- pricing


def test_the_wait_is_the_work_held_on_the_node() -> None:
    fast = peer("fast", speed=4.0, slots_total=1, slots_busy=1, queue_max=1, free_in_s=(6.0,))
    slow = peer("slow", slots_total=1, free_in_s=(0.0,))
    demand = Demand("shell", est_seconds=8.0)
    rows = {c.name: c for c in price(demand, [fast, slow], PricingConfig(max_queue=0)).candidates}
    assert rows["fast"].wait_s == 6.0 and rows["fast"].score == pytest.approx(6.0 + 0.001 + 2.0)
    assert rows["slow"].wait_s == 0.0 and rows["slow"].score == pytest.approx(0.001 + 8.0)


def test_inputs_travel_while_the_subtask_waits_for_a_slot() -> None:
    busy = peer("busy", slots_total=1, slots_busy=1, queue_max=1, free_in_s=(0.5,))
    demand = Demand("shell", est_seconds=2.0, input_s=(("busy", 3.0),))
    row = price(demand, [busy], PricingConfig(max_queue=0)).candidates[0]
    assert row.score == pytest.approx(3.0 + 0.001 + 2.0) and row.input_s == 3.0


def test_a_subtask_with_an_estimate_binds_late_to_a_busy_worker() -> None:
    # Room in its queue, but its slot frees only in 6 s: the coordinator keeps it.
    busy = peer("busy", slots_total=1, slots_busy=1, queue_max=1, free_in_s=(6.0,))
    placement = price(Demand("shell", est_seconds=2.0), [busy], LOOK)
    assert placement.winner is None
    assert placement.candidates[0].why_not == "busy for 6 s: kept here until due"
    # Due within queue_ahead_s, or no estimate (the old behaviour): sent to its queue.
    soon = peer("busy", slots_total=1, slots_busy=1, queue_max=1, free_in_s=(0.5,))
    assert price(Demand("shell", est_seconds=2.0), [soon], LOOK).winner is not None
    assert price(Demand("shell"), [busy], LOOK).winner is not None


def test_look_ahead_names_a_full_node_that_finishes_sooner() -> None:
    fast = peer("fast", speed=4.0, slots_total=1, slots_busy=1, queue_max=0, free_in_s=(2.0,))
    slow = peer("slow", slots_total=1)
    demand = Demand("shell", est_seconds=8.0)
    placement = price(demand, [fast, slow], LOOK)
    assert placement.winner is not None and placement.winner.name == "slow"
    assert placement.wait_for is not None and placement.wait_for.name == "fast"
    assert placement.wait_for.later_s == pytest.approx(2.0 + 0.001 + 2.0)
    # Off (lookahead_max_s 0), beyond lookahead_max_s, or not better: no waiting.
    off = PricingConfig(max_queue=0)
    assert price(demand, [fast, slow], off).wait_for is None
    far = peer("fast", speed=4.0, slots_total=1, slots_busy=1, queue_max=0, free_in_s=(40.0,))
    assert price(demand, [far, slow], LOOK).wait_for is None
    late = peer("fast", speed=4.0, slots_total=1, slots_busy=1, queue_max=0, free_in_s=(7.0,))
    assert price(demand, [late, slow], LOOK).wait_for is None
    # A node barred for another reason (draining) is never waited for.
    gone = peer("fast", speed=4.0, slots_busy=4, queue_max=0, free_in_s=(1.0,), draining=True)
    assert price(demand, [gone, slow], LOOK).wait_for is None


# ---------------------------------------------------------------- the schedule pass


def coordinator(**pricing: Any) -> Coordinator:
    config = {"max_queue": 0, "lookahead_max_s": 30.0, "queue_ahead_s": 1.0} | pricing
    return Coordinator(
        node_id="coord-id",
        node_name="coord",
        config=CoordinatorConfig(),
        pricing=PricingConfig(**config),
    )


def shell(sid: str, estimate: str, **kw: Any) -> dict[str, Any]:
    return {"id": sid, "kind": "shell", "run": ["true"], "estimate": estimate, **kw}


FAST = {"speed": 4.0, "slots_total": 1, "queue_max": 0}
SLOW = {"slots_total": 1, "queue_max": 0}


def test_a_ready_subtask_waits_for_the_faster_node_and_goes_there_when_it_frees() -> None:
    c = coordinator()
    c.submit("t1", job(shell("a", "8s"), shell("b", "8s")), now=0.0)
    fast, slow = peer("fast", **FAST), peer("slow", **SLOW)
    # a goes to fast (2 s there); b would finish at 4 s on fast, 8 s on slow: it waits.
    sent = of(c.schedule([fast, slow], now=0.0), Dispatch)
    assert [(d.subtask_id, d.node_id) for d in sent] == [("a", "fast")]
    busy = peer("fast", **FAST, slots_busy=1)
    assert of(c.schedule([busy, slow], now=1.0), Dispatch) == []
    assert c.counters["lookahead_held"] == 2
    answer(c, sent[0], ok(), 2.0)
    again = of(c.schedule([fast, slow], now=2.0), Dispatch)
    assert [(d.subtask_id, d.node_id) for d in again] == [("b", "fast")]


def test_a_held_subtask_waits_no_longer_than_lookahead_max_s() -> None:
    c = coordinator(lookahead_max_s=5.0)
    c.submit("t1", job(shell("a", "8s"), shell("b", "8s")), now=0.0)
    fast, slow = peer("fast", **FAST), peer("slow", **SLOW)
    of(c.schedule([fast, slow], now=0.0), Dispatch)
    busy = peer("fast", **FAST, slots_busy=1)
    # The fast node overruns: by the estimates it always frees soon, but after 5 s
    # of holding, b goes to the slow node.
    assert of(c.schedule([busy, slow], now=4.9), Dispatch) == []
    sent = of(c.schedule([busy, slow], now=5.0), Dispatch)
    assert [(d.subtask_id, d.node_id) for d in sent] == [("b", "slow")]


def test_a_node_that_goes_away_ends_the_wait() -> None:
    c = coordinator()
    c.submit("t1", job(shell("a", "8s"), shell("b", "8s")), now=0.0)
    fast, slow = peer("fast", **FAST), peer("slow", **SLOW)
    of(c.schedule([fast, slow], now=0.0), Dispatch)
    dead = peer("fast", **FAST, slots_busy=1, alive=False)
    sent = of(c.schedule([dead, slow], now=1.0), Dispatch)
    assert [(d.subtask_id, d.node_id) for d in sent] == [("b", "slow")]


def test_a_hold_reserves_the_slot_it_waits_for_and_a_pass_holds_one_round() -> None:
    """Many ready subtasks, the fast node full: one waits for its slot (reserved), the
    next sees that slot taken and goes to the slow node, and the pass stops there —
    it does not hold the whole queue for one slot (each pass walked all 10,000 of a
    job once, and dispatch throughput fell to a fifth)."""
    c = coordinator()
    c.submit("t1", job(*(shell(f"s{i}", "8s") for i in range(500))), now=0.0)
    busy = peer("fast", **FAST, slots_busy=1, free_in_s=(1.0,))
    slow = peer("slow", **SLOW)
    sent = of(c.schedule([busy, slow], now=0.0), Dispatch)
    assert [(d.subtask_id, d.node_id) for d in sent] == [("s1", "slow")]
    assert c.counters["lookahead_held"] == 1
    # Three slots on the fast node: at most three held in one pass.
    c2 = coordinator()
    c2.submit("t1", job(*(shell(f"s{i}", "8s") for i in range(500))), now=0.0)
    three = peer("fast", speed=4.0, slots_total=3, slots_busy=3, queue_max=0)
    assert of(c2.schedule([three, peer("slow", slots_total=0)], now=0.0), Dispatch) == []
    assert c2.counters["lookahead_held"] == 0  # nowhere to go now: nothing to wait against
    c3 = coordinator()
    c3.submit("t1", job(*(shell(f"s{i}", "40s") for i in range(500))), now=0.0)
    sent = of(c3.schedule([three, peer("slow", slots_total=1, queue_max=0)], now=0.0), Dispatch)
    assert len(sent) == 1 and sent[0].node_id == "slow"
    assert 1 <= c3.counters["lookahead_held"] <= 3
