"""The ready queue: strict priority with guaranteed class shares, deadline, urgency,
submit order; no inversion and no starvation beyond the stated bound (hypothesis)."""

from __future__ import annotations

import math
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmd.core.queue import DEFAULT_PATIENCE_S, DEFAULT_SHARES, Key, ReadyQueue, share_bound

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


def test_low_never_passes_high_without_a_share() -> None:
    """Strict priority (no shares): a low subtask waits behind any stream of high ones,
    however long it has waited (aging would have let it pass after 60 s)."""
    q = ReadyQueue(shares={})
    q.push(k("low"), LOW, None, now=0.0)
    for step in range(200):
        now = step * 5.0
        q.push(("t", f"high@{now}"), HIGH, None, now=now)
        assert q.pop(now) == ("t", f"high@{now}")
    assert drain(q, 1e9) == ["low"]


def test_a_starved_class_gets_its_share() -> None:
    """low 10 %: after 10 starts of high while low waits, low is owed and goes next,
    once; then high again."""
    q = ReadyQueue(shares={LOW: 0.10}, patience_s=0.0)
    q.push(k("low-1"), LOW, None)
    q.push(k("low-2"), LOW, None)
    order = []
    for i in range(25):
        q.push(k(f"high-{i}"), HIGH, None)
        order.append(q.pop())
    names = [key[1] for key in order]
    assert names[:10] == [f"high-{i}" for i in range(10)]
    assert names[10] == "low-1" and q.credit(LOW) < 1.0
    assert names[11:21] == [f"high-{i}" for i in range(10, 20)]
    assert names[21] == "low-2"


def test_critical_is_never_passed() -> None:
    q = ReadyQueue(shares={LOW: 0.5}, patience_s=0.0)
    q.push(k("low"), LOW, None)
    for i in range(10):
        q.push(k(f"crit-{i}"), CRITICAL, None)
    for _ in range(10):
        q.push(k("x"), HIGH, None)
        q.remove(k("x"), started=True)  # low is owed now
    assert q.owed() == [LOW]
    assert drain(q, 0.0) == [f"crit-{i}" for i in range(10)] + ["low"]


def test_owed_class_goes_first_in_a_walk_at_once() -> None:
    """A start during a walk that makes a class owed puts that class next."""
    q = ReadyQueue(shares={NORMAL: 0.5}, patience_s=0.0)
    for i in range(4):
        q.push(k(f"high-{i}"), HIGH, None)
    q.push(k("normal"), NORMAL, None)
    seen = []
    for key in q.walk(0.0):
        seen.append(key[1])
        q.remove(key, started=True)
    assert seen == ["high-0", "high-1", "normal", "high-2", "high-3"]


def test_credit_does_not_build_while_nothing_waits() -> None:
    q = ReadyQueue(shares={LOW: 0.10}, patience_s=0.0)
    for i in range(50):
        q.push(k(f"high-{i}"), HIGH, None)
    for _ in range(50):
        q.pop()
    assert q.credit(LOW) == 0.0
    q.push(k("low"), LOW, None)
    q.push(k("high"), HIGH, None)
    assert q.pop() == k("high")  # not owed: it just arrived


def test_bad_shares() -> None:
    with pytest.raises(ValueError, match="critical"):
        ReadyQueue(shares={CRITICAL: 0.1})
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        ReadyQueue(shares={LOW: 1.0})
    with pytest.raises(ValueError, match="add up"):
        ReadyQueue(shares={HIGH: 0.6, LOW: 0.6})
    with pytest.raises(ValueError, match="patience_s"):
        ReadyQueue(patience_s=-1.0)
    assert share_bound(0.05) == 20 and share_bound(0.1) == 10 and share_bound(0.0) is None


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
    assert len(q) == 1


# ---------------------------------------------------------------- against a model


Item = tuple[int, float | None, int, float, float]  # rank, deadline, seq, urgency, since


class Model:
    """The queue's rules written plainly: sort everything, keep the credits in a dict."""

    def __init__(self, shares: dict[int, float], patience_s: float = 0.0) -> None:
        self.shares = {r: s for r, s in shares.items() if s > 0}
        self.credit = dict.fromkeys(self.shares, 0.0)
        self.items: dict[Key, Item] = {}
        self.patience_s = patience_s
        self.clock = -math.inf

    def tick(self, now: float) -> None:
        self.clock = max(self.clock, now)

    def waiting(self, rank: int) -> bool:
        return any(item[0] == rank for item in self.items.values())

    def starved(self, rank: int) -> bool:
        since = [item[4] for item in self.items.values() if item[0] == rank]
        return bool(since) and self.clock - min(since) >= self.patience_s

    def owed(self) -> list[int]:
        return sorted(r for r, c in self.credit.items() if c >= 1 - 1e-9 and self.waiting(r))

    def order(self) -> list[Key]:
        owed = self.owed()

        def lane(rank: int) -> tuple[int, int]:
            if rank == CRITICAL:
                return (0, rank)
            return (1, rank) if rank in owed else (2, rank)

        def sort_key(pair: tuple[Key, Item]) -> tuple[tuple[int, int], float, float, int]:
            rank, deadline, seq, urgency, _ = pair[1]
            return (lane(rank), math.inf if deadline is None else deadline, -urgency, seq)

        return [key for key, _ in sorted(self.items.items(), key=sort_key)]

    def start(self, key: Key) -> None:
        rank = self.items.pop(key)[0]
        for other, share in self.shares.items():
            if other == rank:
                self.credit[other] = max(0.0, self.credit[other] - 1.0)
            elif self.starved(other):
                self.credit[other] = min(1.0, self.credit[other] + share)


ops = st.lists(
    st.tuples(
        st.sampled_from(["push", "push", "push", "pop", "remove", "start", "order"]),
        st.integers(0, 60),  # key
        st.integers(0, 3),  # rank
        st.none() | st.integers(0, 40).map(float),  # deadline
        st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.5, 7.0]),  # time step
        st.sampled_from([0.0, 0.0, 1.0, 2.5, 9.0]),  # urgency
    ),
    max_size=300,
)
share_sets = st.sampled_from(
    [{}, dict(DEFAULT_SHARES), {LOW: 0.25}, {HIGH: 0.2, NORMAL: 0.3, LOW: 0.5}]
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, shares=share_sets, patience_s=st.sampled_from([0.0, 3.0, 10.0]))
def test_matches_a_brute_force_model(
    ops: list[tuple[str, int, int, float | None, float, float]],
    shares: dict[int, float],
    patience_s: float,
) -> None:
    q = ReadyQueue(shares=shares, patience_s=patience_s)
    model = Model(shares, patience_s)
    now, seq = 0.0, 0
    for op, n, rank, deadline, step, urgency in ops:
        now += step
        key = ("t", str(n))
        if op == "push":
            if key in model.items:
                continue
            q.push(key, rank, deadline, now, urgency)
            model.tick(now)
            model.items[key] = (rank, deadline, seq, urgency, model.clock)
            seq += 1
        elif op == "pop":
            model.tick(now)
            expected = model.order()
            assert q.peek(now) == (expected[0] if expected else None)
            got = q.pop(now)
            assert got == (expected[0] if expected else None)
            if got is not None:
                model.start(got)
        elif op in ("remove", "start"):
            assert q.remove(key, started=op == "start") == (key in model.items)
            if key in model.items:
                if op == "start":
                    model.start(key)
                else:
                    del model.items[key]
        else:
            assert q.ordered(now) == model.order()
        assert len(q) == len(model.items)
        assert q.owed() == model.owed()
    model.tick(now)  # (the last ops may have moved the time without telling it)
    while model.items:
        first = model.order()[0]
        assert q.pop(now) == first
        model.start(first)
    assert q.pop(now) is None


# ---------------------------------------------------------------- the two properties

# A cluster's stream of events: a subtask of class RANK becomes ready (it needs a slot
# of type KIND), or a slot of type KIND frees (types 0 and 1; kind 2 fits either).
events = st.lists(
    st.tuples(st.sampled_from(["ready", "ready", "free"]), st.integers(0, 3), st.integers(0, 2)),
    max_size=400,
)


def _fits(need: int, slot: int) -> bool:
    return need == 2 or need == slot


@settings(max_examples=200, deadline=None)
@given(events=events, shares=share_sets)
def test_no_inversion(events: list[tuple[str, int, int]], shares: dict[int, float]) -> None:
    """Every start is the best-ranked waiting subtask that fits the freed slot, except
    a start of a class that was owed its share — and never while critical work that
    fits waits."""
    q = ReadyQueue(shares=shares, patience_s=5.0)
    model = Model(shares, 5.0)  # the credits, kept independently
    need: dict[Key, tuple[int, int]] = {}
    for i, (what, rank, kind) in enumerate(events):
        model.tick(float(i))
        if what == "ready":
            key = ("t", str(i))
            q.push(key, rank, None, float(i))
            model.items[key] = (rank, None, i, 0.0, float(i))
            need[key] = (rank, kind)
            continue
        slot = kind % 2
        fitting = [r for key, (r, n) in need.items() if _fits(n, slot)]
        owed = model.owed()
        for key in q.walk(float(i)):  # one scheduling pass that fills one slot
            rank, n = need[key]
            if not _fits(n, slot):
                continue
            best = min(fitting)
            assert rank == best or (rank in owed and best != CRITICAL), (rank, best, owed)
            q.remove(key, started=True)
            model.start(key)
            del need[key]
            break


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.sampled_from(["ready", "start"]), st.integers(0, 3)), max_size=500
    ),
    shares=share_sets,
)
def test_no_starvation_beyond_the_bound(
    events: list[tuple[str, int]], shares: dict[int, float]
) -> None:
    """While a class with a share waits (patience 0: starved at once), at most
    ceil(1 / share) + 2 starts of other non-critical classes go by before one of its own
    (every subtask fits every slot)."""
    q = ReadyQueue(shares=shares, patience_s=0.0)
    passed = dict.fromkeys(range(4), 0)  # other non-critical starts since its own
    waiting = dict.fromkeys(range(4), 0)
    for i, (what, rank) in enumerate(events):
        if what == "ready":
            q.push(("t", str(i)), rank, None)
            waiting[rank] += 1
            continue
        key = q.pop()
        if key is None:
            continue
        started = q_rank(key, events)
        waiting[started] -= 1
        passed[started] = 0
        for other in range(1, 4):
            if other == started or not waiting[other] or started == CRITICAL:
                continue
            passed[other] += 1
            bound = share_bound(shares.get(other, 0.0))
            if bound is not None:
                assert passed[other] <= bound + 2, (other, passed[other], bound)
        for other in range(4):
            if not waiting[other]:
                passed[other] = 0


def q_rank(key: Key, events: list[tuple[str, int]]) -> int:
    return events[int(key[1])][1]


def test_the_defaults_patience_then_share() -> None:
    """The defaults, one start a second while high and normal work keeps coming: low
    gets no credit for its first 30 s (strict priority), then starts within
    ceil(1 / 0.05) + 2 = 22 more starts — where strict priority would let it wait
    forever."""
    q = ReadyQueue()
    q.push(k("low"), LOW, None, now=0.0)
    started = None
    for i in range(200):
        now = float(i)
        q.push(k(f"n{i}"), NORMAL if i % 2 else HIGH, None, now=now)
        if now < DEFAULT_PATIENCE_S:
            assert q.credit(LOW) == 0.0 and not q.starved(LOW)
        if q.pop(now) == k("low"):
            started = now
            break
    bound = share_bound(DEFAULT_SHARES[LOW])
    assert bound == 20 and started is not None
    assert DEFAULT_PATIENCE_S + bound - 1 <= started <= DEFAULT_PATIENCE_S + bound + 2


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
    q = ReadyQueue()
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
    q = ReadyQueue(shares={})
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
    # Interleaved pushes and pops.
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


def test_a_walk_drops_what_was_taken_from_the_front() -> None:
    """Subtasks taken from the front leave removed entries on top of the heap: a walk
    drops them, or each later walk steps over every one of them again (a 10,000-subtask
    job's passes got slower with each subtask placed)."""
    q = ReadyQueue()
    for i in range(1000):
        q.push(("t", str(i)), 2, None, 0.0)
    for _ in range(900):
        key = next(q.walk(1.0))
        q.remove(key, started=True)
    assert next(q.walk(1.0)) == ("t", "900")
    assert sum(len(lane.heap) for lane in q._lanes.values()) <= 100
