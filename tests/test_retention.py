"""Retention: finished tasks are forgotten by age and count, in memory and on disk."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from protocol.messages import AttemptResult, ErrorReply, NodeRef, TaskRequest
from protocol.messages import Dispatch as WireDispatch
from swarmd.control import Control
from swarmd.core.jobspec import parse_job
from swarmd.core.retention import DAY_S, Retention, to_forget
from swarmd.core.tasks import (
    Coordinator,
    CoordinatorConfig,
    Dispatch,
    Effect,
    Journal,
    Result,
    UnknownTask,
)
from swarmd.store import Store
from swarmd.work import Coordination
from tests.capacity import peer

# ---------------------------------------------------------------- the policy


def rows(*finished: float, size: int = 1) -> list[tuple[str, float, int]]:
    return [(f"t{i}", t, size) for i, t in enumerate(finished)]


def forget(finished: list[tuple[str, float, int]], now: float, **policy: Any) -> list[str]:
    """to_forget, with no grace unless one is given."""
    policy.setdefault("grace_s", 0.0)
    subtasks = sum(size for _, _, size in finished)
    return to_forget(iter(finished), len(finished), subtasks, now, Retention(**policy))


def test_defaults_keep_a_week_and_ten_thousand_tasks() -> None:
    r = Retention()
    assert (r.keep_s, r.keep_tasks, r.keep_subtasks) == (7 * DAY_S, 10_000, 100_000)
    assert (r.grace_s, r.interval_s) == (60.0, 60.0)
    assert not r.over_cap(10_000, 100_000)
    assert r.over_cap(10_001, 0) and r.over_cap(1, 100_001)


def test_age_forgets_what_finished_more_than_keep_ago_oldest_first() -> None:
    finished = rows(0.0, 10.0, 20.0, 30.0)
    assert forget(finished, now=100.0, keep_s=100.0) == ["t0"]  # at the cutoff: goes
    assert forget(finished, now=125.0, keep_s=100.0) == ["t0", "t1", "t2"]
    assert forget(finished, now=99.0, keep_s=100.0) == []
    assert forget([], now=1e9) == []


def test_count_cap_forgets_the_oldest_beyond_keep_tasks() -> None:
    finished = rows(0.0, 1.0, 2.0, 3.0, 4.0)
    assert forget(finished, now=5.0, keep_tasks=2) == ["t0", "t1", "t2"]
    assert forget(finished, now=5.0, keep_tasks=5) == []
    assert forget(finished, now=5.0, keep_tasks=0) == ["t0", "t1", "t2", "t3", "t4"]
    # Age and count together: whichever lets more go.
    assert forget(finished, now=101.5, keep_s=100.0, keep_tasks=4) == ["t0", "t1"]
    assert forget(finished, now=100.5, keep_s=100.0, keep_tasks=3) == ["t0", "t1"]


def test_subtask_cap_forgets_the_oldest_until_at_most_keep_subtasks_are_left() -> None:
    finished = [("big", 0.0, 500), ("small", 1.0, 10), ("mid", 2.0, 100), ("new", 3.0, 10)]
    assert forget(finished, now=5.0, keep_subtasks=120) == ["big"]
    assert forget(finished, now=5.0, keep_subtasks=100) == ["big", "small", "mid"]
    assert forget(finished, now=5.0, keep_subtasks=1000) == []


def test_caps_never_take_a_task_within_its_grace_but_age_does() -> None:
    finished = rows(0.0, 50.0, 90.0, 99.0)
    assert forget(finished, now=100.0, keep_tasks=0, grace_s=60.0) == ["t0"]
    assert forget(finished, now=100.0, keep_subtasks=0, grace_s=60.0) == ["t0"]
    assert forget(finished, now=100.0, keep_tasks=0, grace_s=60.0, keep_s=5.0) == [
        "t0",
        "t1",
        "t2",
    ]


def test_a_call_forgets_one_bounded_batch_but_always_one_task() -> None:
    finished = rows(0.0, 1.0, 2.0, 3.0, size=40)
    assert forget(finished, now=1e6, keep_s=1.0, batch_subtasks=100) == ["t0", "t1"]
    assert forget(finished, now=1e6, keep_s=1.0, batch_subtasks=10) == ["t0"]


def test_the_walk_stops_at_the_first_task_that_stays() -> None:
    """A call costs its batch, not the number of finished tasks held."""
    seen = []

    def finished() -> Any:
        for i in range(1_000_000):
            seen.append(i)
            yield (f"t{i}", float(i), 1)

    policy = Retention(keep_s=5.0, keep_tasks=1_000_000, keep_subtasks=1_000_000)
    assert to_forget(finished(), 1_000_000, 1_000_000, 10.0, policy) == [f"t{i}" for i in range(6)]
    assert len(seen) == 7


@pytest.mark.parametrize(
    "policy",
    [
        {"keep_s": -1.0},
        {"keep_s": float("inf")},
        {"keep_tasks": -1},
        {"keep_subtasks": -1},
        {"grace_s": float("nan")},
        {"batch_subtasks": 0},
    ],
)
def test_bad_policy_values_are_refused(policy: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Retention(**policy)


# ---------------------------------------------------------------- through the coordinator

A, B = peer("A", slots_total=64), peer("B", slots_total=64)


def job(n: int = 1, name: str = "job") -> Any:
    subtasks = [{"id": f"s{i}", "kind": "shell", "run": ["true"]} for i in range(n)]
    return parse_job({"name": name, "subtasks": subtasks})


def coordinator(**policy: Any) -> Coordinator:
    config = CoordinatorConfig(retention=Retention(**policy))
    return Coordinator(node_id="coord-id", node_name="coord", config=config)


def run_task(c: Coordinator, task_id: str, now: float, n: int = 1) -> list[Effect]:
    """Submit a task of n subtasks and answer every dispatch: it is done at now + 1."""
    effects = c.submit(task_id, job(n), now)
    dispatches: list[Dispatch] = []
    while len(dispatches) < n:
        fx = c.schedule([A, B], now)
        effects += fx
        batch = [e for e in fx if isinstance(e, Dispatch)]
        assert batch, "nothing placed"
        for d in batch:
            effects += c.on_result(
                d.task_id, d.subtask_id, d.attempt, d.node_id, Result(exit_code=0), now + 1
            )
        dispatches += batch
    assert c.status(task_id)["state"] == "done"
    return effects


def test_expire_forgets_old_finished_tasks_and_never_an_unfinished_one() -> None:
    c = coordinator(keep_s=100.0, keep_tasks=2, grace_s=0.0)
    stuck = parse_job({"subtasks": [{"id": "s", "kind": "shell", "run": ["x"], "node": "gone"}]})
    c.submit("open", stuck, now=0.0)  # pinned to a node that is not there: stays pending
    for i in range(4):
        run_task(c, f"t{i}", now=float(i))
    assert c.finished_count() == (4, 4)
    fx = c.expire(now=10.0)  # the cap: the two oldest go
    assert fx == [Journal("forget", {"task": "t0"}), Journal("forget", {"task": "t1"})]
    assert c.task_ids() == ["open", "t2", "t3"]
    assert c.expire(now=10.0) == []
    assert [e.data["task"] for e in c.expire(now=103.5)] == ["t2"]  # t2 finished at 3, t3 at 4
    assert c.expire(now=1e9) == [Journal("forget", {"task": "t3"})]
    assert c.task_ids() == ["open"] and c.finished_count() == (0, 0)
    assert c.counters["forgotten"] == 4
    for gone in ("t0", "t3"):
        with pytest.raises(UnknownTask):
            c.status(gone)


def test_tasks_lists_in_submit_order_without_sorting() -> None:
    c = coordinator()
    for task_id in ("zz", "aa", "mm"):
        c.submit(task_id, job(), now=5.0)  # same time: submit order, not id order
    assert [t["id"] for t in c.tasks()] == ["zz", "aa", "mm"]


def test_restore_orders_finished_tasks_by_when_they_finished() -> None:
    c = coordinator()
    records: list[Journal] = []
    records += [e for e in c.submit("slow", job(), 0.0) if isinstance(e, Journal)]
    fx = c.schedule([A], 0.0)
    slow = next(e for e in fx if isinstance(e, Dispatch))
    records += [e for e in fx if isinstance(e, Journal)]
    records += [e for e in run_task(c, "fast", 1.0) if isinstance(e, Journal)]  # done at 2
    records += [
        e
        for e in c.on_result("slow", "s0", slow.attempt, "A", Result(exit_code=0), 50.0)
        if isinstance(e, Journal)
    ]
    r = coordinator(keep_tasks=1)
    r.restore(records, now=60.0)
    assert r.task_ids() == ["slow", "fast"] and r.finished_count() == (2, 2)
    assert r.expire(now=60.0) == []  # fast finished at 2: within the 60 s grace
    assert r.expire(now=62.0) == [Journal("forget", {"task": "fast"})]  # finished first


# ---------------------------------------------------------------- the shell


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


def test_the_shell_forgets_files_events_and_timings_and_control_says_unknown(
    tmp_path: Path,
) -> None:
    sent: list[Any] = []
    clock = FakeClock()
    store = Store(tmp_path / "swarmd.db")
    work = Coordination(
        node_id="coord-id",
        node_name="coord",
        store=store,
        send=lambda addr, m: sent.append(m) or True,
        address_of=lambda node_id: f"{node_id}:1",
        peers=lambda loads: [A],
        me=lambda: NodeRef("coord-id", 1, 1, "coord:1"),
        clock=clock,  # type: ignore[arg-type]
        log=logging.getLogger("test"),
        config=CoordinatorConfig(retention=Retention(keep_s=3600.0, keep_tasks=2, grace_s=0.0)),
    )
    work.on_dispatch_latency = lambda s: None
    ids = [work.submit(job(2), {"in.txt": b"data"}) for _ in range(3)]
    work.run(work.coordinator.schedule([A], clock()))
    for d in [m for m in sent if isinstance(m, WireDispatch)]:
        clock.t += 1.0
        work.on_message(AttemptResult(task=d.task, subtask=d.subtask, attempt=1, node="A"))
        store.put_artifacts(d.task, d.subtask, {"out": b"x"})
    assert [work.coordinator.status(t)["state"] for t in ids] == ["done"] * 3
    assert set(work._finished) == set(work._inputs) == set(ids)
    assert work._dispatched_at == {}  # each went at the worker's first word (its result)
    work._dispatched_at[(ids[0], "s0", 9)] = work._dispatched_at[(ids[1], "s0", 9)] = 0.0

    work._expire(clock())  # over the cap of 2: the oldest goes at once
    assert work.coordinator.task_ids() == ids[1:]
    assert ids[0] not in work._finished and ids[0] not in work._inputs
    assert {k[0] for k in work._dispatched_at} == {ids[1]}
    assert store.inputs(ids[0]) == {} and store.artifacts(ids[0]) == {}
    assert store.artifacts(ids[1]) != {}
    reply = Control(SimpleNamespace(coordination=work)).task(
        TaskRequest(task=ids[0], what="status")
    )
    assert isinstance(reply, ErrorReply) and f"unknown task {ids[0]!r}" in reply.message

    last_finished = clock()
    clock.t = last_finished + 3590.0
    work._expire(clock())  # nothing aged out yet: the next sweep is due in 60 s
    clock.t += 30.0
    work._expire(clock())  # aged out now, but not due yet (and under the cap)
    assert work.coordinator.task_ids() == ids[1:]
    clock.t += 30.0
    work._expire(clock())
    assert work.coordinator.task_ids() == [] and work._inputs == {} == work._finished
    assert store.db.execute("SELECT COUNT(*) FROM journal").fetchone() == (0,)
    store.close()


# ---------------------------------------------------------------- 100,000 subtasks on disk


def persist(store: Store, effects: list[Effect]) -> None:
    store.write_journal(
        (e.kind, e.key[1], e.key[2], e.data) for e in effects if isinstance(e, Journal)
    )


def db_bytes(path: Path) -> tuple[int, int]:
    """The SQLite file and its -wal file, in bytes."""
    wal = Path(f"{path}-wal")
    return os.path.getsize(path), os.path.getsize(wal) if wal.exists() else 0


def journal_rows(store: Store) -> int:
    return int(store.db.execute("SELECT COUNT(*) FROM journal").fetchone()[0])


def test_100k_subtasks_leave_bounded_memory_and_journal(tmp_path: Path) -> None:
    """1,000 tasks x 100 subtasks through the real Coordinator and SQLite Store on
    virtual time: 500 an hour apart (kept by age: keep = 2 h) then 500 ten seconds
    apart (kept by count: keep_tasks = 50). Tasks held, journal rows and the file stay
    bounded; the compacted journal restores to exactly the tasks kept."""
    started = time.perf_counter()
    tasks, per_task, keep_tasks = 1_000, 100, 50
    policy = {"keep_s": 2 * 3600.0, "keep_tasks": keep_tasks}
    c = coordinator(**policy)
    path = tmp_path / "swarmd.db"
    store = Store(path)
    store.put_inputs("x", {})  # no-op: inputs rows of forgotten tasks go too (below)
    now, next_sweep = 0.0, 0.0
    most_tasks = most_rows = 0
    sizes: dict[int, tuple[int, int]] = {}
    for i in range(tasks):
        task_id = f"t{i:04d}"
        store.put_inputs(task_id, {"in.txt": b"x" * 1000})
        persist(store, run_task(c, task_id, now, per_task))
        now += 3600.0 if i < tasks // 2 else 10.0
        # What the shell's loop does (Coordination._expire).
        while now >= next_sweep or c.config.retention.over_cap(*c.finished_count()):
            fx = c.expire(now)
            persist(store, fx)
            next_sweep = now if fx else now + c.config.retention.interval_s
            if not fx:
                break
        most_tasks = max(most_tasks, len(c.task_ids()))
        most_rows = max(most_rows, journal_rows(store))
        if (i + 1) % 100 == 0:
            sizes[(i + 1) * per_task] = db_bytes(path)
    assert c.counters["committed"] == tasks * per_task
    rows_now = journal_rows(store)
    inputs = store.db.execute("SELECT COUNT(*) FROM inputs").fetchone()[0]
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    free = store.db.execute("PRAGMA freelist_count").fetchone()[0]
    print(
        f"\n100,000 subtasks ({tasks} tasks x {per_task}), keep=2h keep_tasks={keep_tasks}:"
        f"\n  tasks in memory: at most {most_tasks}, at the end {len(c.task_ids())}"
        f"\n  journal rows: at most {most_rows}, at the end {rows_now}"
        f" (without retention: {tasks * (per_task + 2)}); input rows {inputs}"
        "\n  db + wal KiB by subtasks run: "
        + ", ".join(f"{k // 1000}k: {db >> 10}+{wal >> 10}" for k, (db, wal) in sizes.items())
        + f"\n  pages {pages}, free pages {free}; {time.perf_counter() - started:.1f} s"
    )
    assert most_tasks <= keep_tasks + 1
    assert most_rows <= (keep_tasks + 1) * (per_task + 2)
    assert len(c.task_ids()) == keep_tasks == inputs
    # The file stops growing once the kept set is full (from 55,000 on): freed pages
    # are reused.
    assert sum(sizes[tasks * per_task]) <= 1.5 * sum(sizes[60_000])
    # No "forget" markers pile up; restore of the compacted journal gives the same tasks.
    assert store.db.execute("SELECT COUNT(*) FROM journal WHERE kind='forget'").fetchone() == (0,)
    r = coordinator(**policy)
    r.restore([Journal(k, d) for k, d in store.journal()], now=now)
    assert r.task_ids() == c.task_ids()
    assert r.tasks() == c.tasks()
    assert r.expire(now) == []
    store.close()
