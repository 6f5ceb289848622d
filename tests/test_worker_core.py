"""The sans-I/O worker core: admission, the queue beyond the slots, progress, outbox."""

from __future__ import annotations

from typing import Any

from protocol.messages import (
    AttemptResult,
    CancelAttempt,
    Dispatch,
    DispatchReply,
    NodeRef,
    Progress,
    ResultAck,
)
from swarmd.core.worker import (
    SHELL_DISABLED,
    Effect,
    Persist,
    Send,
    Start,
    Stop,
    Unpersist,
    WorkerConfig,
    WorkerCore,
)

COORD = NodeRef("c1", 1, 7, "127.0.0.1:7001")


def dispatch(sub: str, kind: str = "python", attempt: int = 1, **kw: Any) -> Dispatch:
    spec = {"id": sub, "kind": kind, "call": "operator:truth", "run": ["true"]}
    return Dispatch(
        task="t1",
        subtask=sub,
        attempt=attempt,
        coordinator=kw.pop("coordinator", COORD),
        lease_s=kw.pop("lease_s", 3.0),
        spec=spec,
        **kw,
    )


def result(sub: str, attempt: int = 1) -> AttemptResult:
    return AttemptResult(task="t1", subtask=sub, attempt=attempt, node="w1", exit_code=0)


def started(effects: list[Effect]) -> list[str]:
    return [e.key[1] for e in effects if isinstance(e, Start)]


def sent(effects: list[Effect], kind: type) -> list[Any]:
    return [e.message for e in effects if isinstance(e, Send) and isinstance(e.message, kind)]


def test_slots_then_a_bounded_queue_then_refusal() -> None:
    w = WorkerCore("w1", WorkerConfig(slots=2, queue=1))
    assert started(w.on_dispatch(dispatch("a"), 0.0)) == ["a"]
    assert started(w.on_dispatch(dispatch("b"), 0.0)) == ["b"]
    assert started(w.on_dispatch(dispatch("c"), 0.0)) == []  # held, queued
    assert (w.busy, w.queued, w.load) == (2, 1, 3)
    refused = sent(w.on_dispatch(dispatch("d"), 0.0), DispatchReply)
    assert [(r.accepted, r.reason, r.load) for r in refused] == [(False, "all slots busy", 3)]
    # A slot frees: the queued one starts, in the same call.
    effects = w.on_finished(("t1", "a", 1), result("a"), 1.0)
    assert started(effects) == ["c"]
    assert [r.load for r in sent(effects, AttemptResult)] == [2]
    assert (w.busy, w.queued) == (2, 0)


def test_without_a_configured_queue_short_attempts_get_a_deeper_one() -> None:
    """No ``queue``: one queued per slot until attempts have run; after short ones up to
    ``queue_depth_max`` per slot (they cover ``queue_hold_s``), and back to one per slot
    once attempts take ``queue_hold_s`` or longer. A configured queue never moves."""
    w = WorkerCore("w1", WorkerConfig(slots=2, queue_hold_s=0.05, queue_depth_max=4))
    assert w.queue_limit == 2
    now, n = 0.0, 0

    def run_one(seconds: float) -> None:
        nonlocal now, n
        n += 1
        key = ("t1", f"s{n}", 1)
        assert started(w.on_dispatch(dispatch(f"s{n}"), now)) == [f"s{n}"]
        now += seconds
        w.on_finished(key, result(f"s{n}"), now)

    run_one(0.001)
    assert w.queue_limit == 2 * 4  # 1 ms calls: 50 per slot would fit, 4 at most
    for _ in range(30):
        run_one(0.2)
    assert w.queue_limit == 2  # long attempts: one per slot again
    for _ in range(30):
        run_one(0.02)
    assert w.queue_limit == 2 * 2  # 20 ms: two cover 50 ms
    # Admission follows the limit: 2 running + 4 queued, the next is refused.
    for i in range(6):
        w.on_dispatch(dispatch(f"q{i}"), now)
    assert (w.busy, w.queued) == (2, 4)
    [refusal] = sent(w.on_dispatch(dispatch("q6"), now), DispatchReply)
    assert refusal.reason == "all slots busy"
    fixed = WorkerCore("w1", WorkerConfig(slots=2, queue=1))
    fixed.on_dispatch(dispatch("x"), 1.0)
    fixed.on_finished(("t1", "x", 1), result("x"), 1.001)
    assert fixed.queue_limit == 1


def test_an_accepted_dispatch_gets_no_reply_but_a_start_notice_if_it_still_runs() -> None:
    w = WorkerCore("w1", WorkerConfig(slots=1, queue=1, start_notice_s=0.05))
    effects = w.on_dispatch(dispatch("a"), 0.0)
    assert started(effects) == ["a"] and sent(effects, DispatchReply) == []
    assert sent(effects, Progress) == []  # not yet: a short attempt's result says it all
    assert w.on_dispatch(dispatch("a"), 0.01) == []  # a duplicate: nothing new
    assert w.counters["duplicate_dispatches"] == 1
    assert w.next_wakeup() == 0.05 and w.tick(0.04) == []
    [notice] = sent(w.tick(0.05), Progress)
    assert (notice.subtask, notice.note, notice.node, notice.load) == ("a", "started", "w1", 1)
    # One that finishes sooner is never announced: its result is the only word.
    w.on_dispatch(dispatch("b"), 0.1)  # queued behind a
    effects = w.on_finished(("t1", "a", 1), result("a"), 0.2)
    assert started(effects) == ["b"]
    effects = w.on_finished(("t1", "b", 1), result("b"), 0.21)
    assert [type(m).__name__ for m in sent(effects, Progress | AttemptResult)] == ["AttemptResult"]
    assert sent(w.tick(0.3), Progress) == []


def test_allow_shell_false_refuses_shell_and_python_whatever_the_coordinator_thought() -> None:
    w = WorkerCore("w1", WorkerConfig(slots=4, allow_shell=False))
    for kind in ("python", "shell"):
        [reply] = sent(w.on_dispatch(dispatch(kind, kind=kind), 0.0), DispatchReply)
        assert not reply.accepted and reply.reason == SHELL_DISABLED
    assert w.load == 0 and w.counters["refused"] == 2


def test_a_subtask_needing_more_memory_or_vram_than_the_node_has_is_refused() -> None:
    gib = 1 << 30
    w = WorkerCore("w1", WorkerConfig(slots=4, ram_total=16 * gib, vram_max=24 * gib))
    asks = {"ram": {"min_ram": 32 * gib}, "vram": {"min_vram": 48 * gib}}
    for sub, need in asks.items():
        d = dispatch(sub, kind="shell")
        d.spec.update(need)
        [reply] = sent(w.on_dispatch(d, 0.0), DispatchReply)
        assert not reply.accepted
        assert reply.reason in (
            "min_ram 32 GiB: this node has 16 GiB of memory",
            "min_vram 48 GiB: this node has 24 GiB of GPU memory on its largest GPU",
        )
    fits = dispatch("fits", kind="shell")
    fits.spec.update(min_ram=16 * gib, min_vram=24 * gib)
    assert started(w.on_dispatch(fits, 0.0)) == ["fits"]
    unmeasured = WorkerCore("w2", WorkerConfig(slots=4))  # nothing measured: not checked
    assert started(unmeasured.on_dispatch(dispatch("any", kind="shell"), 0.0)) == ["any"]


def test_llm_needs_the_profile_and_a_free_request() -> None:
    w = WorkerCore("w1", WorkerConfig(slots=0, models={"fast": 1}))
    [r] = sent(w.on_dispatch(dispatch("x", kind="llm", model="deep"), 0.0), DispatchReply)
    assert r.reason == "no model profile 'deep' on this node"
    assert started(w.on_dispatch(dispatch("y", kind="llm", model="fast"), 0.0)) == ["y"]
    [r] = sent(w.on_dispatch(dispatch("z", kind="llm", model="fast"), 0.0), DispatchReply)
    assert r.reason == "model busy"
    w.on_finished(("t1", "y", 1), result("y"), 1.0)
    assert started(w.on_dispatch(dispatch("z", kind="llm", model="fast"), 1.0)) == ["z"]


def test_llm_requests_held_per_profile_and_coordinator_and_profiles_that_change() -> None:
    """What the node gossips as each profile's in_flight, and the profiles found or gone
    on local servers (a request already running keeps going)."""
    w = WorkerCore("w1", WorkerConfig(slots=0, models={"fast": 2}))
    other = NodeRef("c2", 1, 9, "127.0.0.1:7002")
    w.on_dispatch(dispatch("a", kind="llm", model="fast"), 0.0)
    w.on_dispatch(dispatch("b", kind="llm", model="fast", coordinator=other), 0.0)
    assert w.model_use_by() == {"fast": {"c1": 1, "c2": 1}}
    w.set_models({"new": 1})
    [r] = sent(w.on_dispatch(dispatch("c", kind="llm", model="fast"), 0.0), DispatchReply)
    assert r.reason == "no model profile 'fast' on this node"
    assert started(w.on_dispatch(dispatch("d", kind="llm", model="new"), 0.0)) == ["d"]
    w.on_finished(("t1", "a", 1), result("a"), 1.0)
    assert w.model_use_by() == {"fast": {"c2": 1}, "new": {"c1": 1}}


def test_draining_refuses() -> None:
    w = WorkerCore("w1")
    w.draining = True
    [r] = sent(w.on_dispatch(dispatch("a"), 0.0), DispatchReply)
    assert r.reason == "draining"


def test_progress_every_third_of_the_lease_while_held_queued_or_running() -> None:
    config = WorkerConfig(slots=1, queue=1, start_notice_s=0.05, queued_notice_s=0.5)
    w = WorkerCore("w1", config)
    w.on_dispatch(dispatch("a", lease_s=3.0), 0.0)
    w.on_dispatch(dispatch("b", lease_s=3.0), 0.0)
    assert {p.subtask: p.note for p in sent(w.tick(0.05), Progress)} == {"a": "started"}
    assert {p.subtask: p.note for p in sent(w.tick(0.5), Progress)} == {"b": "queued"}
    assert w.next_wakeup() == 1.05
    notes = {p.subtask: p.note for p in sent(w.tick(1.5), Progress)}
    assert notes == {"a": "running", "b": "queued"}
    assert w.next_wakeup() == 2.5


def test_results_stay_in_the_outbox_until_acked_and_resends_back_off() -> None:
    w = WorkerCore("w1", WorkerConfig(slots=1, resend_first_s=2.0, resend_max_s=5.0))
    w.on_dispatch(dispatch("a", lease_s=60.0), 0.0)
    effects = w.on_finished(("t1", "a", 1), result("a"), 0.5)
    assert [type(e) for e in effects] == [Send, Persist]
    assert w.tick(2.0) == []  # a fresh result is not sent twice at once
    resends = [w.tick(t) for t in (2.5, 4.0, 6.5, 10.0, 11.5, 16.5)]
    assert [len(r) for r in resends] == [1, 0, 1, 0, 1, 1]  # after 2, then 4, then 5, 5
    assert w.on_ack(ResultAck(task="t1", subtask="a", attempt=1, committed=True)) == [
        Unpersist(("t1", "a", 1))
    ]
    assert w.tick(100.0) == [] and w.next_wakeup() is None


def test_only_the_attempt_s_coordinator_can_acknowledge_or_cancel_it() -> None:
    """Another member's ack would make the worker drop an uncommitted result."""
    w = WorkerCore("w1", WorkerConfig(slots=2))
    w.on_dispatch(dispatch("a"), 0.0)
    w.on_dispatch(dispatch("b"), 0.0)
    w.on_finished(("t1", "a", 1), result("a"), 0.1)
    ack = ResultAck(task="t1", subtask="a", attempt=1, committed=True)
    assert w.on_ack(ack, by="127.0.0.1:9999") == [] and ("t1", "a", 1) in w.outbox
    cancel = CancelAttempt(task="t1", subtask="b", attempt=1)
    assert w.on_cancel(cancel, 0.2, by="?") == [] and not w.was_cancelled(("t1", "b", 1))
    assert w.counters["wrong_sender"] == 2
    assert w.on_ack(ack, by=COORD.addr) == [Unpersist(("t1", "a", 1))]
    assert w.on_cancel(cancel, 0.3, by=COORD.addr) == [Stop(("t1", "b", 1))]


def test_a_dispatch_of_a_finished_attempt_resends_its_result() -> None:
    w = WorkerCore("w1")
    w.on_dispatch(dispatch("a"), 0.0)
    w.on_finished(("t1", "a", 1), result("a"), 0.1)
    assert [r.subtask for r in sent(w.on_dispatch(dispatch("a"), 0.2), AttemptResult)] == ["a"]


def test_cancel_stops_a_running_attempt_and_ends_a_queued_one_at_once() -> None:
    w = WorkerCore("w1", WorkerConfig(slots=1, queue=1))
    w.on_dispatch(dispatch("a"), 0.0)
    w.on_dispatch(dispatch("b"), 0.0)
    assert w.on_cancel(CancelAttempt(task="t1", subtask="a", attempt=1), 0.1) == [
        Stop(("t1", "a", 1))
    ]
    assert w.was_cancelled(("t1", "a", 1))
    effects = w.on_cancel(CancelAttempt(task="t1", subtask="b", attempt=1), 0.1)
    [ended] = sent(effects, AttemptResult)
    assert ended.error == "cancelled by the coordinator" and not ended.app_failed
    assert w.queued == 0 and w.busy == 1


def test_hand_back_ends_the_queue_and_stops_the_running() -> None:
    w = WorkerCore("w1", WorkerConfig(slots=1, queue=2))
    for sub in "abc":
        w.on_dispatch(dispatch(sub), 0.0)
    effects = w.hand_back(1.0)
    assert [e.key[1] for e in effects if isinstance(e, Stop)] == ["a"]
    ended = sent(effects, AttemptResult)
    assert [(r.subtask, r.error) for r in ended] == [
        ("b", "worker shutting down"),
        ("c", "worker shutting down"),
    ]
    assert started(effects) == []  # nothing new starts while handing back


def test_restored_results_are_due_at_once() -> None:
    w = WorkerCore("w1")
    w.restore([("127.0.0.1:7001", result("a"))], 10.0)
    assert [r.subtask for r in sent(w.tick(10.0), AttemptResult)] == ["a"]


def test_resends_keep_within_a_third_of_the_lease_as_progress_did() -> None:
    w = WorkerCore("w1", WorkerConfig(slots=1, resend_first_s=2.0, resend_max_s=30.0))
    w.on_dispatch(dispatch("a", lease_s=3.0), 0.0)
    w.on_finished(("t1", "a", 1), result("a"), 0.0)
    sends = [t / 10 for t in range(1, 60) if sent(w.tick(t / 10), AttemptResult)]
    assert sends == [1.0, 2.0, 3.0, 4.0, 5.0]  # every 1 s (lease 3 s), never 2, 4, 8 s


def test_a_dispatch_for_another_run_of_this_node_is_refused() -> None:
    """Sent again after a lost answer to a worker that restarted since: not run twice."""
    w = WorkerCore("w1", WorkerConfig(slots=1), generation=3)
    [r] = sent(w.on_dispatch(dispatch("a", generation=2), 0.0), DispatchReply)
    assert not r.accepted and "generation 2" in r.reason and "generation 3" in r.reason
    assert started(w.on_dispatch(dispatch("b", generation=3), 0.0)) == ["b"]
    assert started(w.on_dispatch(dispatch("c", generation=None), 0.0)) == []  # queued


def test_a_late_copy_of_an_acknowledged_dispatch_is_not_run_again() -> None:
    w = WorkerCore("w1", WorkerConfig(slots=1))
    w.on_dispatch(dispatch("a"), 0.0)
    w.on_finished(("t1", "a", 1), result("a"), 0.1)
    w.on_ack(ResultAck(task="t1", subtask="a", attempt=1, committed=True))
    assert w.on_dispatch(dispatch("a"), 0.5) == []  # the copy sent while the answer flew
    assert w.counters["duplicate_dispatches"] == 1 and w.load == 0
