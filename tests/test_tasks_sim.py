"""A seeded simulation of the coordinator driven the way the shell drives it.

Virtual time, one process: workers with slots that accept, refuse when full, report
progress and results (kept in an outbox and re-sent until acknowledged, sometimes sent
twice, sometimes lost); nodes that crash and restart, or freeze (SIGSTOP) and thaw
with stale results; a coordinator that crashes and is restored from its journal. At
the end every task is finished and no subtask ever had two results committed.
"""

from __future__ import annotations

import heapq
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest

from swarmd.core.jobspec import JobSpec, parse_job
from swarmd.core.pricing import GiB, PeerCapacity, PricingConfig
from swarmd.core.tasks import (
    Ack,
    CancelAttempt,
    Coordinator,
    CoordinatorConfig,
    Dispatch,
    Effect,
    Journal,
    Result,
    TaskFinished,
)

LEASE = 6.0
LATENCY = 0.01
DETECT_S = 4.0  # membership declares a silent node dead after this
TICK_S = 0.5
CONFIG = CoordinatorConfig(lease_s=LEASE, restore_grace_s=LEASE)
PRICING = PricingConfig(max_queue=0)  # workers here refuse rather than queue

AttemptKey = tuple[str, str, int]  # task, subtask, attempt


def capacity(node_id: str, slots: int, busy: int) -> PeerCapacity:
    return PeerCapacity(
        node_id=node_id,
        name=node_id,
        alive=True,
        draining=False,
        on_battery=False,
        battery_policy="pause",
        cores=slots,
        load=0.2,
        ram_available=8 * GiB,
        gpus_vram_free=(),
        gpus_vram_total=(),
        slots_total=slots,
        slots_busy=busy,
        queue=0,
        rtt_s=0.001,
        cost_per_hour=0.0,
        models=(),
    )


@dataclass
class Node:
    node_id: str
    slots: int
    up: bool = True  # the process runs
    generation: int = 0
    frozen_until: float = 0.0
    member: bool = True  # what membership says (the coordinator's view)
    running: set[AttemptKey] = field(default_factory=set)
    outbox: dict[AttemptKey, Result] = field(default_factory=dict)


class Sim:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.events: list[tuple[float, int, Callable[[], object]]] = []
        self.seq = 0
        self.rows: dict[tuple[str, str, str], str] = {}  # the journal, as the shell keeps it
        self.coord = Coordinator(node_id="coord", config=CONFIG, pricing=PRICING)
        self.nodes = {f"n{i}": Node(f"n{i}", slots=self.rng.randint(1, 3)) for i in range(5)}
        self.commits: Counter[tuple[str, str]] = Counter()
        self.committed: dict[tuple[str, str], str] = {}  # stdout of committed results
        self.finished: dict[str, str] = {}
        self.stale = 0
        self.restarts = 0
        self.counters: Counter[str] = Counter()  # over every coordinator incarnation

    # ------------------------------------------------------------ plumbing

    def at(self, delay: float, fn: Callable[[], object]) -> None:
        self.seq += 1
        heapq.heappush(self.events, (self.now + delay, self.seq, fn))

    def apply(self, effects: list[Effect]) -> None:
        """What the shell does with effects: journal first, then send."""
        for e in effects:
            if isinstance(e, Journal):
                if e.kind == "forget":
                    self.rows = {k: v for k, v in self.rows.items() if k[1] != e.data["task"]}
                else:
                    self.rows[e.key] = json.dumps(e.data)
        for e in effects:
            if isinstance(e, Dispatch):
                node = self.nodes[e.node_id]
                self.at(LATENCY, partial(self.deliver_dispatch, node, e))
            elif isinstance(e, CancelAttempt):
                node = self.nodes[e.node_id]
                key = (e.task_id, e.subtask_id, e.attempt)
                self.at(LATENCY, partial(node.running.discard, key))
            elif isinstance(e, Ack):
                node = self.nodes[e.node_id]
                key = (e.task_id, e.subtask_id, e.attempt)
                if e.committed:
                    self.commits[(e.task_id, e.subtask_id)] += 1
                self.at(LATENCY, partial(node.outbox.pop, key, None))
            elif isinstance(e, TaskFinished):
                self.finished[e.task_id] = e.state

    def from_node(self, node: Node, fn: Callable[[], list[Effect]]) -> None:
        """A message from ``node`` to the coordinator: delayed while the node is frozen,
        never sent if the node crashed since."""
        generation = node.generation

        def send() -> None:
            if not node.up or node.generation != generation:
                return
            if node.frozen_until > self.now:
                self.at(node.frozen_until - self.now, send)
                return
            self.at(LATENCY, lambda: self.apply(fn()))

        send()

    def view(self) -> list[PeerCapacity]:
        load = self.coord.load_by_node()
        return [
            capacity(n.node_id, n.slots, load[n.node_id].slots if n.node_id in load else 0)
            for n in self.nodes.values()
            if n.member
        ]

    # ------------------------------------------------------------ workers

    def deliver_dispatch(self, node: Node, d: Dispatch) -> None:
        if not node.up:
            return
        if node.frozen_until > self.now:
            self.at(node.frozen_until - self.now, lambda: self.deliver_dispatch(node, d))
            return
        key = (d.task_id, d.subtask_id, d.attempt)
        if len(node.running) >= node.slots:
            self.from_node(
                node,
                lambda: self.coord.on_refused(
                    d.task_id, d.subtask_id, d.attempt, d.node_id, "full", self.now
                ),
            )
            return
        # Rendering used the committed upstream results.
        for arg in d.spec.run[1:]:
            upstream = arg.split("=", 1)[0]
            assert arg == f"{upstream}={self.committed[(d.task_id, upstream)]}", (arg, d)
        node.running.add(key)
        self.from_node(
            node,
            lambda: self.coord.on_accepted(d.task_id, d.subtask_id, d.attempt, d.node_id, self.now),
        )
        duration = self.rng.uniform(0.1, 15.0)
        self.progress_loop(node, d, key, node.generation)
        self.at(duration, lambda: self.finish(node, d, key, node.generation))

    def progress_loop(self, node: Node, d: Dispatch, key: AttemptKey, generation: int) -> None:
        def beat() -> None:
            if key not in node.running or node.generation != generation:
                return
            self.from_node(
                node,
                lambda: self.coord.on_progress(
                    d.task_id, d.subtask_id, d.attempt, d.node_id, self.now
                ),
            )
            self.at(LEASE / 3, beat)

        self.at(LEASE / 3, beat)

    def finish(self, node: Node, d: Dispatch, key: AttemptKey, generation: int) -> None:
        if node.generation != generation or key not in node.running:
            return
        if node.frozen_until > self.now:
            self.at(node.frozen_until - self.now, lambda: self.finish(node, d, key, generation))
            return
        node.running.discard(key)
        if self.rng.random() < 0.03:
            result = Result(exit_code=1, stderr="boom", app_failed=True)
        elif self.rng.random() < 0.03:
            result = Result(error="executor broke")
        else:
            result = Result(exit_code=0, stdout=f"{d.subtask_id}#{d.attempt}")
        node.outbox[key] = result
        self.send_result(node, d, key, generation)

    def send_result(self, node: Node, d: Dispatch, key: AttemptKey, generation: int) -> None:
        """Send from the outbox until acknowledged: lost sometimes, doubled sometimes."""
        if node.generation != generation or key not in node.outbox:
            return
        result = node.outbox[key]
        copies = 2 if self.rng.random() < 0.1 else 1
        for _ in range(copies):
            if self.rng.random() < 0.1:
                continue  # lost on the way

            def deliver(result: Result = result) -> list[Effect]:
                before = self.coord.counters["stale_results"]
                fx = self.coord.on_result(
                    d.task_id, d.subtask_id, d.attempt, d.node_id, result, self.now
                )
                self.stale += self.coord.counters["stale_results"] - before
                for e in fx:
                    if isinstance(e, Ack) and e.committed:
                        self.committed[(d.task_id, d.subtask_id)] = result.stdout
                return fx

            self.from_node(node, deliver)
        self.at(2.0, lambda: self.send_result(node, d, key, generation))

    # ------------------------------------------------------------ chaos

    def crash_node(self, node: Node) -> None:
        if not node.up:
            return
        node.up = False
        node.generation += 1
        node.running.clear()
        node.outbox.clear()

        def declare() -> None:
            node.member = False
            self.apply(self.coord.on_peer_dead(node.node_id, self.now))

        self.at(DETECT_S, declare)

        def restart() -> None:
            node.up = True
            node.member = True

        self.at(DETECT_S + self.rng.uniform(1.0, 10.0), restart)

    def freeze_node(self, node: Node, seconds: float) -> None:
        """SIGSTOP for ``seconds``: long enough and membership declares it dead; after
        SIGCONT it carries on with its old attempts (their results are stale)."""
        node.frozen_until = max(node.frozen_until, self.now + seconds)
        generation = node.generation
        if seconds > DETECT_S:

            def declare() -> None:
                if node.generation == generation and node.frozen_until > self.now:
                    node.member = False
                    self.apply(self.coord.on_peer_dead(node.node_id, self.now))

            self.at(DETECT_S, declare)

            def rejoin() -> None:
                node.member = node.up

            self.at(seconds + 0.5, rejoin)

    def restart_coordinator(self) -> None:
        self.restarts += 1
        records = [Journal(k[0], json.loads(v)) for k, v in self.rows.items()]
        self.counters.update(self.coord.counters)
        self.coord = Coordinator(node_id="coord", config=CONFIG, pricing=PRICING)
        self.apply(self.coord.restore(records, self.now))

    # ------------------------------------------------------------ the run

    def job(self, n: int) -> JobSpec:
        subtasks: list[dict[str, Any]] = []
        for i in range(self.rng.randint(1, 5)):
            sid = f"s{i}"
            after = sorted(self.rng.sample([s["id"] for s in subtasks], min(i, 2)))
            run = ["echo", *(f"{up}={{{{ {up}.stdout }}}}" for up in after)]
            subtasks.append({"id": sid, "kind": "shell", "run": run, "after": after, "retries": 4})
        priority = self.rng.choice(["critical", "high", "normal", "low"])
        return parse_job({"name": f"job{n}", "priority": priority, "subtasks": subtasks})

    def submit(self, task_id: str, spec: JobSpec) -> None:
        self.apply(self.coord.submit(task_id, spec, self.now))

    def loop(self) -> None:
        self.apply(self.coord.tick(self.now))
        self.apply(self.coord.schedule(self.view(), self.now))
        self.at(TICK_S, self.loop)

    def run(self, tasks: int = 40, until: float = 3000.0) -> None:
        for n in range(tasks):
            spec = self.job(n)
            self.at(self.rng.uniform(0.0, 60.0), partial(self.submit, f"t{n}", spec))
        for _ in range(6):
            node = self.rng.choice(list(self.nodes.values()))
            self.at(self.rng.uniform(5.0, 80.0), partial(self.crash_node, node))
        for _ in range(6):
            node = self.rng.choice(list(self.nodes.values()))
            seconds = self.rng.choice([1.0, 3.0, 10.0, 20.0])
            self.at(self.rng.uniform(5.0, 80.0), partial(self.freeze_node, node, seconds))
        for _ in range(2):
            self.at(self.rng.uniform(10.0, 90.0), self.restart_coordinator)
        self.at(0.0, self.loop)
        while self.events and self.now < until:
            self.now, _, fn = heapq.heappop(self.events)
            fn()
            if self.now > 100.0 and len(self.finished) == tasks:
                break
        self.counters.update(self.coord.counters)


@pytest.mark.parametrize("seed", range(8))
def test_simulated_cluster_finishes_every_task_with_one_commit_per_subtask(seed: int) -> None:
    sim = Sim(seed)
    sim.run()
    coord = sim.coord
    assert sorted(sim.finished) == sorted(coord.task_ids()) and len(sim.finished) == 40
    assert all(n <= 1 for n in sim.commits.values()), sim.commits.most_common(3)
    for task_id in coord.task_ids():
        task = coord.record(task_id)
        assert task.final and sim.finished[task_id] == task.state
        for sid, rec in task.subtasks.items():
            assert sim.commits[(task_id, sid)] == (rec.result is not None)
            if rec.state == "done":
                # The committed result is the current attempt's.
                assert rec.result is not None and rec.result.stdout == f"{sid}#{rec.attempt}"
        if task.state == "done":
            assert all(r.state == "done" for r in task.subtasks.values())
        status = coord.status(task_id)
        assert status["state"] == task.state
    done = sum(state == "done" for state in sim.finished.values())
    assert done >= 25, Counter(sim.finished.values())  # chaos costs some, not most
    assert sim.restarts == 2


def test_the_simulation_exercises_fencing() -> None:
    """Across seeds, stale results, refusals, losses and re-dispatches all happen."""
    totals: Counter[str] = Counter()
    for seed in range(8):
        sim = Sim(seed)
        sim.run()
        totals["stale"] += sim.stale
        totals.update(sim.counters)
    assert totals["stale"] > 0
    assert totals["refused"] > 0 and totals["lost"] > 0 and totals["redispatched"] > 0
    assert totals["app_failures"] > 0 and totals["worker_errors"] > 0


def test_view_counts_this_coordinators_load() -> None:
    sim = Sim(0)
    spec = parse_job({"name": "j", "subtasks": [{"id": "a", "kind": "shell", "run": ["x"]}]})
    sim.apply(sim.coord.submit("t", spec, 0.0))
    sim.apply(sim.coord.schedule(sim.view(), 0.0))
    busy = {p.node_id: p.slots_busy for p in sim.view()}
    assert sum(busy.values()) == 1
