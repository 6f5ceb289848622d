"""The ready queue: priority, deadline, submit order, aging."""

from __future__ import annotations

import math
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmd.core.queue import Key, ReadyQueue

CRITICAL, HIGH, NORMAL, LOW = 0, 1, 2, 3


def k(name: str) -> Key:
    return ("task", name)


def drain(queue: ReadyQueue, now: float) -> list[str]:
    out = []
    while (key := queue.pop(now)) is not None:
        out.append(key[1])
    return out


def test_priority_order() -> None:
    q = ReadyQueue()
    for name, rank in [("low", LOW), ("normal", NORMAL), ("critical", CRITICAL), ("high", HIGH)]:
        q.push(k(name), rank, None, now=0.0)
    assert [key[1] for key in q.ordered(1.0)] == ["critical", "high", "normal", "low"]
    assert drain(q, 1.0) == ["critical", "high", "normal", "low"]
    assert q.pop(1.0) is None and q.peek(1.0) is None and len(q) == 0


def test_deadline_order_within_a_priority() -> None:
    q = ReadyQueue()
    q.push(k("none"), NORMAL, None, now=0.0)
    q.push(k("late"), NORMAL, 500.0, now=0.0)
    q.push(k("soon"), NORMAL, 100.0, now=0.0)
    q.push(k("high-none"), HIGH, None, now=0.0)
    assert drain(q, 0.0) == ["high-none", "soon", "late", "none"]


def test_fifo_within_equal_keys() -> None:
    q = ReadyQueue()
    names = [f"s{i}" for i in range(50)]
    for i, name in enumerate(names):
        q.push(k(name), NORMAL, 7.0, now=i * 0.01)
    assert drain(q, 1.0) == names


def test_aging_lets_low_pass_newer_high() -> None:
    """Low (rank 3) pushed at 0 vs a fresh high (rank 1) pushed and popped at T.

    Low's effective rank at T is 3 - floor(T / 30). It ties with a fresh high at T = 60
    and wins the tie by submit order (neither has a deadline), so the first pop that
    returns low is the one at T = 60.
    """
    q = ReadyQueue(aging_s=30.0)
    q.push(k("low"), LOW, None, now=0.0)
    first_low = None
    for step in range(0, 200):
        now = step * 5.0
        q.push(("t", f"high@{now}"), HIGH, None, now=now)
        if q.effective_rank(k("low"), now) > 1:
            assert q.peek(now) == ("t", f"high@{now}")
        if q.pop(now) == k("low"):
            first_low = now
            break
    assert first_low == 60.0
    assert q.effective_rank(("t", "high@60.0"), 60.0) == HIGH


def test_aging_passes_fresh_critical_after_three_periods() -> None:
    q = ReadyQueue(aging_s=10.0)
    q.push(k("low"), LOW, None, now=0.0)
    q.push(k("crit-29"), CRITICAL, None, now=29.9)
    assert q.peek(29.9) == k("crit-29")  # low is at rank 1
    q.push(k("crit-30"), CRITICAL, None, now=30.0)
    assert q.effective_rank(k("low"), 30.0) == 0
    assert q.ordered(30.0) == [k("low"), k("crit-29"), k("crit-30")]
    # Later still, ranks go below zero: low is ahead of any fresh subtask.
    assert q.effective_rank(k("low"), 45.0) == -1


def test_aged_tie_is_decided_by_deadline() -> None:
    q = ReadyQueue(aging_s=30.0)
    q.push(k("low"), LOW, None, now=0.0)
    q.push(k("high-deadline"), HIGH, 1000.0, now=60.0)
    assert q.ordered(60.0) == [k("high-deadline"), k("low")]
    assert q.pop(60.0) == k("high-deadline")


def test_no_aging() -> None:
    q = ReadyQueue(aging_s=math.inf)
    q.push(k("low"), LOW, None, now=0.0)
    q.push(k("high"), HIGH, None, now=1e9)
    assert drain(q, 2e9) == ["high", "low"]


def test_remove_contains_len() -> None:
    q = ReadyQueue()
    for i in range(5):
        q.push(k(f"s{i}"), NORMAL, None, now=0.0)
    assert len(q) == 5 and k("s2") in q and k("zz") not in q
    assert q.remove(k("s0")) is True
    assert q.remove(k("s2")) is True
    assert q.remove(k("s2")) is False
    assert k("s2") not in q and len(q) == 3
    assert q.peek(0.0) == k("s1")
    assert drain(q, 0.0) == ["s1", "s3", "s4"]
    q.push(k("s2"), LOW, None, now=1.0)  # a removed key may come back
    assert q.pop(1.0) == k("s2")


def test_bad_pushes() -> None:
    q = ReadyQueue()
    q.push(k("a"), NORMAL, None, now=0.0)
    with pytest.raises(ValueError, match="already"):
        q.push(k("a"), HIGH, None, now=0.0)
    with pytest.raises(ValueError):
        q.push(k("b"), -1, None, now=0.0)
    with pytest.raises(ValueError):
        q.push(k("c"), NORMAL, math.nan, now=0.0)
    with pytest.raises(ValueError):
        ReadyQueue(aging_s=0.0)
    assert len(q) == 1


def test_now_going_backwards_is_clamped() -> None:
    q = ReadyQueue(aging_s=10.0)
    q.push(k("a"), NORMAL, None, now=100.0)
    q.push(k("b"), NORMAL, None, now=50.0)  # taken as pushed at 100
    assert q.effective_rank(k("b"), 115.0) == NORMAL - 1
    assert q.effective_rank(k("b"), 0.0) == NORMAL  # before the push: no aging
    assert q.ordered(115.0) == [k("a"), k("b")]


# ---------------------------------------------------------------- against a model


Model = dict[Key, tuple[int, float | None, float, int, float]]


def model_order(model: Model, now: float, aging_s: float) -> list[Key]:
    def sort_key(
        item: tuple[Key, tuple[int, float | None, float, int, float]],
    ) -> tuple[int, float, float, int]:
        _, (rank, deadline, since, seq, urgency) = item
        levels = max(0, math.floor((now - since) / aging_s))
        return (rank - levels, math.inf if deadline is None else deadline, -urgency, seq)

    return [key for key, _ in sorted(model.items(), key=sort_key)]


ops = st.lists(
    st.tuples(
        st.sampled_from(["push", "push", "push", "pop", "remove", "order"]),
        st.integers(0, 60),  # key
        st.integers(0, 3),  # rank
        st.none() | st.integers(0, 40).map(float),  # deadline
        st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.5, 7.0]),  # time step
        st.sampled_from([0.0, 0.0, 1.0, 2.5, 9.0]),  # urgency
    ),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, aging_s=st.sampled_from([1.0, 2.0, 5.0]))
def test_matches_a_brute_force_model(
    ops: list[tuple[str, int, int, float | None, float, float]], aging_s: float
) -> None:
    q = ReadyQueue(aging_s=aging_s)
    model: Model = {}
    now, seq = 0.0, 0
    for op, n, rank, deadline, step, urgency in ops:
        now += step
        key = ("t", str(n))
        if op == "push":
            if key in model:
                continue
            q.push(key, rank, deadline, now, urgency)
            model[key] = (rank, deadline, now, seq, urgency)
            seq += 1
        elif op == "pop":
            expected = model_order(model, now, aging_s)
            assert q.peek(now) == (expected[0] if expected else None)
            got = q.pop(now)
            assert got == (expected[0] if expected else None)
            if got is not None:
                del model[got]
        elif op == "remove":
            assert q.remove(key) == (key in model)
            model.pop(key, None)
        else:
            assert q.ordered(now) == model_order(model, now, aging_s)
        assert len(q) == len(model)
    # Draining at the end still agrees, at one time and as time goes on.
    while model:
        now += 0.7
        first = model_order(model, now, aging_s)[0]
        assert q.pop(now) == first
        del model[first]
    assert q.pop(now) is None


def test_urgency_orders_after_deadline_before_submit_order() -> None:
    q = ReadyQueue()
    q.push(k("leaf"), NORMAL, None, now=0.0, urgency=1.0)
    q.push(k("chain-head"), NORMAL, None, now=0.0, urgency=5.0)
    q.push(k("plain"), NORMAL, None, now=0.0)
    q.push(k("due"), NORMAL, 10.0, now=0.0)  # a deadline still comes first
    q.push(k("high"), HIGH, None, now=0.0)  # and priority before that
    assert [key[1] for key in q.ordered(0.0)] == ["high", "due", "chain-head", "leaf", "plain"]
    with pytest.raises(ValueError, match="urgency"):
        q.push(k("nan"), NORMAL, None, now=0.0, urgency=math.nan)


@settings(max_examples=100, deadline=None)
@given(
    items=st.lists(
        st.tuples(st.integers(0, 3), st.none() | st.integers(0, 5).map(float), st.integers(0, 3)),
        min_size=1,
        max_size=60,
    ),
    drop=st.sets(st.integers(0, 59)),
    now=st.sampled_from([0.0, 3.0, 100.0]),
)
def test_walk_while_removing_matches_the_order_without_the_removed(
    items: list[tuple[int, float | None, int]], drop: set[int], now: float
) -> None:
    """A scheduling pass removes what it places (yielded keys) and a cancel may remove
    keys not yet reached: the walk yields the rest, in order, each once."""
    q = ReadyQueue(aging_s=2.0)
    for i, (rank, deadline, urgency) in enumerate(items):
        q.push(k(str(i)), rank, deadline, now=float(i) * 0.5, urgency=float(urgency))
    full = q.ordered(now)
    dropped = {k(str(i)) for i in drop if i < len(items)}
    seen = []
    for n, key in enumerate(q.walk(now)):
        seen.append(key)
        if n % 2 == 0:
            q.remove(key)  # placed
        if n == 1:
            for d in dropped:  # cancelled mid-walk
                q.remove(d)
    late = set(dropped) - set(seen[:2])
    assert seen == [key for key in full if key not in late]


def test_pushing_during_a_walk_is_refused() -> None:
    q = ReadyQueue()
    q.push(k("a"), NORMAL, None, now=0.0)
    q.push(k("b"), NORMAL, None, now=0.0)
    walk = q.walk(0.0)
    assert next(walk) == k("a")
    q.push(k("c"), NORMAL, None, now=0.0)
    with pytest.raises(RuntimeError, match="during a walk"):
        next(walk)


def test_ten_thousand_items() -> None:
    rng = random.Random(7)
    q = ReadyQueue(aging_s=30.0)
    n = 10_000
    started = time.perf_counter()
    now = 0.0
    for i in range(n):
        now += rng.uniform(0.0, 0.02)
        deadline = rng.choice([None, now + rng.uniform(0.0, 600.0)])
        q.push(("t", str(i)), rng.randrange(4), deadline, now)
    pushed = time.perf_counter()
    order = q.ordered(now)
    ordered = time.perf_counter()
    popped = []
    while (key := q.pop(now)) is not None:
        popped.append(key)
    done = time.perf_counter()
    assert popped == order and len(popped) == n and len(set(popped)) == n
    # Interleaved pushes and pops with time going on (aging active).
    for i in range(n):
        now += 0.01
        q.push(("u", str(i)), rng.randrange(4), None, now)
        if i % 2:
            assert q.pop(now) is not None
    while q.pop(now) is not None:
        now += 0.01
    mixed = time.perf_counter()
    print(
        f"10k: push {pushed - started:.3f}s, ordered {ordered - pushed:.3f}s, "
        f"pop all {done - ordered:.3f}s, 10k mixed push/pop {mixed - done:.3f}s"
    )
    assert len(q) == 0
