"""A replica held across a time its coordinator was out of view is not adopted until the
coordinator confirms it (the chaos suite's seed 2701098316: a holder that was down while
its coordinator finished a task adopted its stale copy later, and a subtask ran twice).

Core: :meth:`ReplicaBook.reappeared` and :meth:`ReplicaBook.due`. Shell: the
coordinator's answer to a holder's ``task_query`` (the whole task again, or a drop).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from protocol.messages import Message, NodeRef
from protocol.succession import ReplicaAck, ReplicaDrop, ReplicaPut, Succession, TaskQuery
from swarmd.core import tasks as core
from swarmd.core.jobspec import parse_job
from swarmd.core.succession import ReplicaBook, weight

GAP_S = 2.0


def records(task: str, state: str = "running") -> list[tuple[str, dict[str, Any]]]:
    return [("task", {"task": task, "job": {}}), ("task_state", {"task": task, "state": state})]


def test_a_replica_loaded_at_start_is_adopted_only_once_its_coordinator_sent_it() -> None:
    book = ReplicaBook()
    held = book.put("c", "t1", 1, records("t1"), full=True, now=1.0)
    assert held is not None and held.confirmed  # a put confirms
    held.confirmed_at = None  # as loaded from the store at start
    assert book.reappeared(2.0, lambda _n: True, GAP_S) == []  # first sighting
    assert book.unconfirmed("c") == ["t1"]  # the shell asks c about it
    down = lambda _n: False  # noqa: E731
    book.due(3.0, down, 1.0)
    assert book.due(10.0, down, 1.0) == {}  # its coordinator died before answering
    book.put("c", "t1", 1, records("t1"), full=True, now=11.0)  # (had it answered)
    assert [r.task for r in book.due(11.0, down, 1.0)["c"]] == ["t1"]


def test_a_replica_sent_just_before_its_coordinator_died_is_adopted() -> None:
    """The coordinator first seen by this holder's check only after it sent the
    replica (or never: it died at once) leaves the replica confirmed."""
    book = ReplicaBook()
    book.put("c", "t1", 1, records("t1"), full=True, now=5.0)
    assert book.reappeared(5.2, lambda _n: True, GAP_S) == []
    down = lambda _n: False  # noqa: E731
    book.due(5.5, down, 1.0)
    assert [r.task for r in book.due(7.0, down, 1.0)["c"]] == ["t1"]


def test_continuous_sightings_keep_replicas_confirmed_and_a_gap_does_not() -> None:
    book = ReplicaBook()
    book.put("c", "t1", 1, records("t1"), full=True, now=0.0)
    book.put("d", "t2", 1, records("t2"), full=True, now=0.0)
    up = {"c": True, "d": True}
    for i in range(0, 9):  # ticks every 0.5 s: both seen all along
        assert book.reappeared(i * 0.5, lambda n: up[n], GAP_S) == []
    assert book.unconfirmed("c") == [] and book.unconfirmed("d") == []
    up["c"] = False  # c out of view for 3 s (down, or cut off from this node)
    for i in range(9, 15):
        assert book.reappeared(i * 0.5, lambda n: up[n], GAP_S) == []
    book.put("d", "t3", 1, records("t3"), full=True, now=6.0)
    up["c"] = True
    assert book.reappeared(7.5, lambda n: up[n], GAP_S) == ["c"]
    assert book.unconfirmed("c") == ["t1"] and book.unconfirmed("d") == []
    # This node itself away (stopped, asleep: no ticks) for 2.5 s: what d sent
    # before is suspect, what it sent since (processed before the check) is not.
    book.put("d", "t4", 1, records("t4"), full=True, now=9.9)
    assert sorted(book.reappeared(10.0, lambda n: up[n], GAP_S)) == ["c", "d"]
    assert sorted(book.unconfirmed("d")) == ["t2", "t3"]


def test_an_adopted_replica_is_never_unconfirmed() -> None:
    book = ReplicaBook()
    held = book.put("c", "t1", 1, records("t1"), full=True)
    assert held is not None
    held.adopted = True
    assert book.reappeared(0.0, lambda _n: True, GAP_S) == []
    assert book.unconfirmed("c") == []


# ---------------------------------------------------------------- the coordinator's answer


class Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Message]] = []

    def __call__(self, addr: str, message: Message) -> bool:
        self.sent.append((addr, message))
        return True

    def of(self, kind: type) -> list[Any]:
        return [m for _a, m in self.sent if isinstance(m, kind)]


def coordination(
    tmp_path: Path, outbox: Outbox, node: str = "c", live: list[str] | None = None
) -> Any:
    from swarmd.replication import Replication
    from swarmd.store import Store
    from swarmd.successor import Successor
    from swarmd.work import Clock, Coordination

    me = NodeRef(node, 1, 1, f"{node}:7946")
    log = logging.getLogger("test")
    addresses = {n: f"{n}:7946" for n in ("c", "h", "x") if n != node}
    c = Coordination(
        node_id=node,
        node_name=node,
        store=Store(tmp_path / f"{node}.db"),
        send=outbox,
        address_of=addresses.get,
        peers=lambda _loads: [],
        me=lambda: me,
        clock=Clock(),
        log=log,
    )
    c.replication = Replication(
        coordination=c,
        send=outbox,
        live=lambda: sorted(addresses) if live is None else list(live),
        address_of=addresses.get,
        me=lambda: me,
        log=log,
    )
    c.commits.on_written = c.replication.on_written
    c.successor = Successor(
        coordination=c,
        replication=c.replication,
        worker=None,  # type: ignore[arg-type]
        send=outbox,
        is_up=lambda _n: True,
        live_addresses=lambda: set(addresses.values()),
        address_of=addresses.get,
        me=lambda: me,
        adopt_after_s=5.0,
        log=log,
    )
    return c


def job() -> Any:
    return parse_job({"name": "j", "subtasks": [{"id": "a", "kind": "shell", "run": ["true"]}]})


def test_a_holder_asking_is_sent_the_task_again_or_told_to_drop_it(tmp_path: Path) -> None:
    outbox = Outbox()
    c = coordination(tmp_path, outbox)
    for task_id in ("open-h", "open-x", "ended"):
        c.run(c.coordinator.submit(task_id, job(), c.clock()))
    c.run(c.coordinator.cancel("ended", c.clock()))
    c.flush()
    c.replication.plan.holder.update({"open-h": "h", "open-x": "x"})
    c.successor.adopted_from["open-h"] = "z"  # adopted here from z (chaos seed 111)
    outbox.sent.clear()
    tasks = ["open-h", "open-x", "ended", "never-here"]
    c.successor.on_message(TaskQuery(tasks=tasks), "h")
    (drop,) = outbox.of(ReplicaDrop)
    # Finished here, another successor's now, unknown: the holder's copy must go.
    assert sorted(drop.tasks) == ["ended", "never-here", "open-x"]
    (put,) = outbox.of(ReplicaPut)
    assert [(t.task, t.full) for t in put.tasks] == [("open-h", True)]
    (claims,) = outbox.of(Succession)  # what a former coordinator asking needs to hear
    assert [(cl.task, cl.adopted) for cl in claims.claims] == [("open-h", True)]
    assert all(addr == "h:7946" for addr, _m in outbox.sent)


def test_a_holder_asks_a_coordinator_back_in_view_and_obeys_a_drop(tmp_path: Path) -> None:
    outbox = Outbox()
    h = coordination(tmp_path, outbox, node="h")
    h.successor.book.put("c", "t1", 1, records("t1"), full=True)
    h.successor.book.replicas["t1"].confirmed_at = None  # as loaded at start
    h.successor.tick(100.0)  # c first seen: asked about t1, not adoptable meanwhile
    (query,) = outbox.of(TaskQuery)
    assert query.tasks == ["t1"] and outbox.sent[0][0] == "c:7946"
    assert not h.successor.book.replicas["t1"].confirmed
    h.successor.tick(101.0)
    assert len(outbox.of(TaskQuery)) == 1  # asked again only after CONFIRM_EVERY_S
    h.successor.tick(102.5)
    assert len(outbox.of(TaskQuery)) == 2  # (the answer may have been lost)
    h.successor.on_message(ReplicaDrop(tasks=["t1"]), "x")  # not its coordinator: kept
    assert "t1" in h.successor.book.replicas
    h.successor.on_message(ReplicaDrop(tasks=["t1"]), "c")
    assert "t1" not in h.successor.book.replicas


def test_a_new_successor_and_the_former_one_both_ack_before_effects_go(tmp_path: Path) -> None:
    """Chaos seed 102 (32 faults): the successor moved, the former holder was told to
    drop its copy only once the new one had acknowledged, the coordinator died first,
    and the former holder (its copy still looking current) adopted it and re-ran a
    subtask. Now the former holder gets a put that forgets the task, and the task's
    effects wait for both acknowledgments."""
    task_id = next(f"t{i}" for i in range(100) if weight(f"t{i}", "x") > weight(f"t{i}", "h"))
    outbox, live = Outbox(), ["h"]
    c = coordination(tmp_path, outbox, live=live)
    c.run(c.coordinator.submit(task_id, job(), c.clock()))
    c.flush()
    (first,) = outbox.of(ReplicaPut)
    c.successor.on_message(ReplicaAck(seq=first.seq), "h")
    live.append("x")  # x comes: the task's successor is x now
    outbox.sent.clear()
    c.replication.tick(1000.0)
    puts = {addr: m for addr, m in outbox.sent if isinstance(m, ReplicaPut)}
    assert [(t.task, t.full) for t in puts["x:7946"].tasks] == [(task_id, True)]
    forget = puts["h:7946"].tasks
    assert [(t.task, [r.kind for r in t.records]) for t in forget] == [(task_id, ["forget"])]
    carried: list[Any] = []
    c.carry_out = carried.extend
    cancel = core.CancelAttempt(task_id, "a", 1, "w")
    assert c.replication.gate([cancel]) == []  # waits
    c.successor.on_message(ReplicaAck(seq=puts["x:7946"].seq), "x")
    assert carried == []  # the former holder has not dropped its copy yet
    c.successor.on_message(ReplicaAck(seq=puts["h:7946"].seq), "h")
    assert carried == [cancel]
    assert c.replication.plan.holder[task_id] == "x"


def test_a_dispatch_of_a_task_relinquished_meanwhile_is_not_sent(tmp_path: Path) -> None:
    """Chaos seed 109: a dispatch decided before the task was relinquished (adopted
    elsewhere) was carried out after it, and raised UnknownTask in the event loop."""
    outbox = Outbox()
    c = coordination(tmp_path, outbox)
    spec = job().subtasks[0]
    stale = core.Dispatch("gone", "a", 1, "w", spec, 10.0, None, {})
    c.carry_out([stale])
    assert c.counters["dispatches_of_relinquished_tasks"] == 1
    assert outbox.sent == []


def test_a_holder_that_cannot_store_refuses_and_keeps_nothing(tmp_path: Path) -> None:
    import sqlite3

    from protocol.succession import ReplicaRecord, ReplicaTask

    outbox = Outbox()
    h = coordination(tmp_path, outbox, node="h")

    def full(*_a: Any, **_k: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    h.successor.store.put = full
    rows = [ReplicaRecord(k, d) for k, d in records("t1")]
    item = ReplicaTask(task="t1", epoch=1, full=True, records=rows, version=1.0)
    put = ReplicaPut(seq=7, coordinator=NodeRef("c", 1, 1, "c:7946"), tasks=[item])
    h.successor.on_message(put, "c")
    (ack,) = outbox.of(ReplicaAck)
    assert (ack.seq, ack.refused) == (7, ["t1"])
    assert "t1" not in h.successor.book.replicas
