"""Tasks survive their coordinator, sans-I/O: successor choice, the replica book, and a
whole adoption on the real cores (Coordinator, WorkerCore) with messages carried in
memory — the coordinator vanishes mid-DAG with one result acknowledged, one result in a
worker's outbox and one attempt running; its successor finishes the task with every
subtask run and committed exactly once, and the old coordinator's dispatch is fenced.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from protocol.messages import AttemptResult, Dispatch, DispatchReply, NodeRef, ResultAck
from protocol.succession import Succession, TaskClaim
from swarmd.core import tasks as core
from swarmd.core.jobspec import parse_job
from swarmd.core.succession import EpochBook, ReplicaBook, ReplicationPlan, successor, weight
from swarmd.core.worker import Persist, Send, Start, WorkerConfig, WorkerCore
from swarmd.dispatch_files import spec_to_wire
from tests.capacity import peer

NODES = [f"node-{i}" for i in range(8)]


# ---------------------------------------------------------------- successor choice


def test_the_successor_is_deterministic_and_never_the_coordinator() -> None:
    for i in range(200):
        task = f"c0ffee-{i:05d}"
        chosen = successor(task, "node-0", NODES)
        assert chosen is not None and chosen != "node-0"
        assert chosen == successor(task, "node-0", reversed(NODES))  # order does not matter
        assert chosen == max(NODES[1:], key=lambda n: weight(task, n))
    assert successor("t", "node-0", ["node-0"]) is None  # a cluster of one: none
    assert successor("t", "node-0", []) is None


def test_a_membership_change_moves_only_the_tasks_of_the_node_that_went() -> None:
    tasks = [f"c0ffee-{i:05d}" for i in range(1000)]
    before = {t: successor(t, "node-0", NODES) for t in tasks}
    after = {t: successor(t, "node-0", [n for n in NODES if n != "node-3"]) for t in tasks}
    moved = [t for t in tasks if before[t] != after[t]]
    assert moved and all(before[t] == "node-3" for t in moved)
    # Spread: each of the 7 candidates gets a fair share (1000/7 ≈ 143).
    shares = Counter(before.values())
    assert set(shares) == set(NODES[1:]) and min(shares.values()) > 90


def test_the_plan_rechooses_when_membership_changes() -> None:
    plan = ReplicationPlan("node-0")
    holder, full = plan.route("t1", NODES)
    assert holder is not None and full
    assert plan.route("t1", NODES) == (holder, False)  # incremental from now on
    plan.acked(holder, ["t1"])
    assert "t1" in plan.confirmed
    moved = plan.rechoose(["t1"], [n for n in NODES if n != holder])
    assert moved == [("t1", holder)] and plan.holder["t1"] != holder
    assert "t1" not in plan.confirmed  # the new holder has not acknowledged yet
    assert plan.rechoose(["t1"], [n for n in NODES if n != holder]) == []


# ---------------------------------------------------------------- replica book


def records(task: str, state: str = "running") -> list[tuple[str, dict[str, Any]]]:
    return [("task", {"task": task, "job": {}}), ("task_state", {"task": task, "state": state})]


def test_replicas_are_adopted_only_after_the_grace_without_a_break() -> None:
    book = ReplicaBook()
    book.put("c", "t1", 1, records("t1"), full=True)
    book.put("c", "t2", 1, records("t2", "done"), full=True)  # finished: nothing to adopt
    up = {"c": True}
    assert book.due(0.0, lambda n: up[n], 5.0) == {}
    up["c"] = False
    assert book.due(1.0, lambda n: up[n], 5.0) == {}
    up["c"] = True  # back within the grace: the clock starts again
    assert book.due(3.0, lambda n: up[n], 5.0) == {}
    up["c"] = False
    assert book.due(4.0, lambda n: up[n], 5.0) == {}
    assert book.due(8.9, lambda n: up[n], 5.0) == {}
    due = book.due(9.0, lambda n: up[n], 5.0)
    assert [r.task for r in due["c"]] == ["t1"]


def test_a_replica_refuses_an_older_epoch_and_forget_drops_it() -> None:
    book = ReplicaBook()
    assert book.put("c", "t1", 2, records("t1"), full=True) is not None
    assert book.put("c", "t1", 1, records("t1"), full=False) is None
    assert book.put("c", "t1", 2, [("forget", {"task": "t1"})], full=False) is not None
    assert "t1" not in book.replicas
    assert not book.drop("t1", "c")


def test_workers_learn_the_newest_epoch() -> None:
    epochs = EpochBook(kept=2)
    assert epochs.learn("t1", 1, "c", "a:1")
    assert not epochs.stale("t1", 1)
    assert epochs.learn("t1", 2, "s", "a:2") and epochs.stale("t1", 1)
    assert not epochs.learn("t1", 1, "c", "a:1")  # an old claim changes nothing
    epochs.learn("t2", 1, "c", "a:1")
    epochs.learn("t3", 1, "c", "a:1")
    assert epochs.get("t1") is None  # bounded: the oldest goes


# ---------------------------------------------------------------- adoption, end to end


class Swarm:
    """Two coordinators' cores and two workers' cores, messages carried in memory."""

    def __init__(self) -> None:
        self.refs = {n: NodeRef(n, 1, 1, f"{n}:7946") for n in ("c", "s", "w1", "w2")}
        self.coordinators = {
            n: core.Coordinator(node_id=n, node_name=n, config=core.CoordinatorConfig())
            for n in ("c", "s")
        }
        self.workers = {n: WorkerCore(n, WorkerConfig(slots=4)) for n in ("w1", "w2")}
        self.dead: set[str] = set()
        self.journal: dict[str, list[core.Journal]] = {"c": [], "s": []}
        self.runs: Counter[str] = Counter()  # subtask -> executions started
        self.commits: Counter[str] = Counter()  # subtask -> results committed
        self.running: dict[tuple[str, str, int], str] = {}  # attempt -> worker
        self.to_coordinator: list[tuple[str, Any]] = []  # (addr, message) in flight
        self.now = 0.0

    def node_at(self, addr: str) -> str:
        return addr.split(":")[0]

    def effects(self, node: str, effects: list[core.Effect]) -> None:
        ref = self.refs[node]
        for e in effects:
            if isinstance(e, core.Journal):
                self.journal[node].append(e)
            elif isinstance(e, core.Dispatch):
                wire = Dispatch(
                    task=e.task_id,
                    subtask=e.subtask_id,
                    attempt=e.attempt,
                    coordinator=ref,
                    lease_s=e.lease_s,
                    spec=spec_to_wire(e.spec),
                    epoch=e.epoch,
                )
                self.worker(e.node_id, self.workers[e.node_id].on_dispatch(wire, self.now))
            elif isinstance(e, core.Ack):
                if e.committed:
                    self.commits[e.subtask_id] += 1
                ack = ResultAck(
                    task=e.task_id, subtask=e.subtask_id, attempt=e.attempt, committed=e.committed
                )
                self.worker(e.node_id, self.workers[e.node_id].on_ack(ack, ref.addr))

    def worker(self, node: str, effects: list[Any]) -> None:
        for e in effects:
            if isinstance(e, Start):
                self.runs[e.key[1]] += 1
                self.running[e.key] = node
            elif isinstance(e, Send):
                self.to_coordinator.append((e.addr, e.message))

    def deliver(self) -> None:
        while self.to_coordinator:
            addr, m = self.to_coordinator.pop(0)
            node = self.node_at(addr)
            if node in self.dead:
                continue
            c = self.coordinators[node]
            if isinstance(m, AttemptResult):
                result = core.Result(exit_code=m.exit_code, stdout=m.stdout)
                self.effects(
                    node, c.on_result(m.task, m.subtask, m.attempt, m.node, result, self.now)
                )
            elif isinstance(m, DispatchReply) and not m.accepted:
                self.effects(
                    node, c.on_refused(m.task, m.subtask, m.attempt, addr, m.reason, self.now)
                )

    def finish(self, key: tuple[str, str, int], deliver: bool = True) -> None:
        node = self.running.pop(key)
        message = AttemptResult(
            task=key[0], subtask=key[1], attempt=key[2], node=node, exit_code=0, stdout=key[1]
        )
        self.worker(node, self.workers[node].on_finished(key, message, self.now))
        if deliver:
            self.deliver()
        else:  # the coordinator dies before it hears
            self.to_coordinator = [x for x in self.to_coordinator if x[1] is not message]

    def schedule(self, node: str) -> None:
        peers = [peer(n) for n in ("w1", "w2")]
        self.effects(node, self.coordinators[node].schedule(peers, self.now))


def dag() -> Any:
    subtasks = [{"id": f"a{i}", "kind": "shell", "run": ["true"]} for i in range(3)]
    subtasks += [
        {"id": f"b{i}", "kind": "shell", "run": ["true"], "after": [f"a{i}"]} for i in range(3)
    ]
    return parse_job({"name": "dag", "subtasks": subtasks})


def old_coordinator_is_fenced(swarm: Swarm) -> None:
    """The old coordinator comes back with its journal: a dispatch of its epoch is
    refused by a worker that knows epoch 2, with a claim naming the successor."""
    old = core.Coordinator(node_id="c", node_name="c")
    old.restore(swarm.journal["c"], swarm.now)
    stale = Dispatch(
        task="c-1",
        subtask="b2",
        attempt=9,
        coordinator=swarm.refs["c"],
        lease_s=15.0,
        spec={"id": "b2", "kind": "shell", "run": ["true"]},
        epoch=1,
    )
    answer = swarm.workers["w1"].on_dispatch(stale, swarm.now)
    assert not any(isinstance(e, Start) for e in answer)
    messages = [e.message for e in answer if isinstance(e, Send)]
    [told] = [m for m in messages if isinstance(m, Succession)]
    assert told.claims[0].coordinator.id == "s" and told.claims[0].epoch == 2
    assert old.relinquish("c-1") == [core.Journal("forget", {"task": "c-1"})]
    assert "c-1" not in old.task_ids()


def test_a_successor_adopts_mid_dag_and_every_subtask_runs_and_commits_once() -> None:
    swarm = Swarm()
    c, s = swarm.coordinators["c"], swarm.coordinators["s"]
    swarm.effects("c", c.submit("c-1", dag(), 0.0))
    swarm.schedule("c")
    assert set(swarm.running) == {("c-1", f"a{i}", 1) for i in range(3)}
    swarm.now = 1.0
    swarm.finish(("c-1", "a0", 1))  # committed and acknowledged at c
    swarm.schedule("c")  # b0 goes out
    swarm.finish(("c-1", "a1", 1), deliver=False)  # in w's outbox, c never heard
    assert ("c-1", "a2", 1) in swarm.running  # still running
    # c dies. Its successor held the replica: every journal record c wrote.
    swarm.dead.add("c")
    book = ReplicaBook()
    replica = [(r.kind, r.data) for r in swarm.journal["c"]]
    book.put("c", "c-1", 1, replica, full=True)
    assert book.due(2.0, lambda n: n not in swarm.dead, 5.0) == {}
    due = book.due(7.0, lambda n: n not in swarm.dead, 5.0)
    [held] = due["c"]
    swarm.now = 7.0
    adopted = s.adopt([core.Journal(k[0], d) for k, d in held.records.items()], swarm.now)
    swarm.effects("s", adopted)
    assert s.record("c-1").epoch == 2
    assert [h["node"] for h in s.record("c-1").coordinators] == ["c", "s"]
    assert s.workers_of("c-1") == {w for (_, sub, _), w in swarm.running.items()} | {
        swarm.workers[w].node_id for w in swarm.workers if swarm.workers[w].outbox
    }
    # Every worker hears the claim: held attempts and outbox results report to s now.
    claim = TaskClaim("c-1", 2, swarm.refs["s"], adopted=True)
    for name, w in swarm.workers.items():
        effects = w.on_claim(claim, swarm.now)
        assert all(e.addr == "s:7946" for e in effects if isinstance(e, Send | Persist))
        swarm.worker(name, effects)
    swarm.deliver()  # a1's result (from the outbox) is committed at s, once
    assert s.record("c-1").subtasks["a1"].state == "done"
    # The rest finishes under s.
    for _ in range(10):
        swarm.now += 1.0
        swarm.effects("s", s.tick(swarm.now))
        swarm.schedule("s")
        for key in list(swarm.running):
            swarm.finish(key)
        if s.status("c-1")["state"] == "done":
            break
    assert s.status("c-1")["state"] == "done"
    subtasks = [f"{p}{i}" for p in "ab" for i in range(3)]
    assert swarm.runs == Counter({sub: 1 for sub in subtasks}), swarm.runs
    assert swarm.commits == Counter({sub: 1 for sub in subtasks}), swarm.commits
    old_coordinator_is_fenced(swarm)


def test_a_stale_replica_is_not_adopted_and_a_fresh_put_revives_it() -> None:
    book = ReplicaBook()
    held = book.put("c", "t1", 1, records("t1"), full=True, version=10.0)
    assert held is not None and held.fresher(1, 12.0) and not held.fresher(1, 9.0)
    held.superseded = True  # another holder answered with a fresher replica
    down = lambda _n: False  # noqa: E731
    book.due(0.0, down, 1.0)
    assert book.due(5.0, down, 1.0) == {}
    book.put("c", "t1", 1, [("task_state", {"task": "t1", "state": "running"})], False, 13.0)
    assert [r.task for r in book.due(6.0, down, 1.0)["c"]] == ["t1"]
    assert book.replicas["t1"].version == 13.0


def test_a_node_answers_for_a_replica_it_holds(tmp_path: Any) -> None:
    """What the any-node forwarding uses: ``has_task`` (coordinated here),
    ``replica_of`` (a read-only view of a replica held here), ``moved_to``."""
    import logging

    from swarmd.replication import Replication
    from swarmd.store import Store
    from swarmd.successor import Successor
    from swarmd.work import Clock, Coordination

    me = NodeRef("s", 1, 1, "s:7946")
    log = logging.getLogger("test")
    c = Coordination(
        node_id="s",
        node_name="s",
        store=Store(tmp_path / "s.db"),
        send=lambda _a, _m: True,
        address_of=lambda _n: None,
        peers=lambda _loads: [],
        me=lambda: me,
        clock=Clock(),
        log=log,
    )
    c.replication = r = Replication(
        coordination=c,
        send=lambda _a, _m: True,
        live=list,
        address_of=lambda _n: None,
        me=lambda: me,
        log=log,
    )
    c.successor = Successor(
        coordination=c,
        replication=r,
        worker=None,  # type: ignore[arg-type]
        send=lambda _a, _m: True,
        is_up=lambda _n: True,
        live_addresses=set,
        address_of=lambda _n: None,
        me=lambda: me,
        adopt_after_s=5.0,
        log=log,
    )
    other = core.Coordinator(node_id="c", node_name="c")
    effects = other.submit("c-1", dag(), 1.0)
    replica = [(e.kind, dict(e.data)) for e in effects if isinstance(e, core.Journal)]
    c.successor.book.put("c", "c-1", 1, replica, True, 1.0)
    assert not c.has_task("c-1") and c.moved_to("c-1") is None
    view = c.replica_of("c-1")
    assert view is not None and view.status("c-1")["state"] == "pending"
    assert [s["id"] for s in view.status("c-1")["subtasks"]] == [
        f"{p}{i}" for p in "ab" for i in range(3)
    ]
    assert c.replica_of("nope") is None
