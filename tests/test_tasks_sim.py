"""A seeded simulation of a cluster at work: the real coordinator and real worker cores.

One process, virtual time. The coordinator is the daemon's own shell around
:class:`swarmd.core.tasks.Coordinator` (:class:`swarmd.work.Coordination`, journaling
to a real :class:`swarmd.store.Store`); every worker is a real
:class:`swarmd.core.worker.WorkerCore` whose effects are carried out as the asyncio
shell (``swarmd/worker.py``) does: ``Start`` runs an "executor" for a random time (then
``on_finished`` with its ``AttemptResult``), ``Stop`` cancels it, ``Persist`` and
``Unpersist`` keep the outbox in the worker's own Store. Every message is a protocol
struct that crosses a simulated network as bytes (``protocol.codec``), with seeded
loss, duplication, random latency (so reordering), stragglers held up for seconds, and
partitions. Membership is a small failure detector: a node unheard for ``DETECT_S`` is
dead, a node back with a new generation has restarted (both: ``on_peer_gone``).

Chaos: workers crash (the process and its running attempts are lost, the durable
outbox is kept; the restarted worker is a new WorkerCore restored from it), stop
gracefully (SIGTERM: drain, hand back, announce "left", start again), are drained and
undrained, freeze (SIGSTOP) and thaw, get cut off from the coordinator; the coordinator
crashes and is restored from its journal; tasks are cancelled or pass their deadline.

Checked on every step (an AssertionError stops the run at once):

* exactly-once commit: no subtask gets two ``Ack(committed=True)``;
* a committed result is the current attempt's: the highest attempt number dispatched
  for that subtask, from the node it went to, and it is what that worker produced;
* a dispatch is rendered from the committed upstream results;
* a worker runs at most ``slots`` shell attempts at once (counted here, from Start to
  its end, and by the core) and holds at most ``slots + queue``; at most
  ``max_concurrency`` llm requests per model profile;
* a worker's durable outbox is its in-memory outbox.

At the end: every task finished, its records agree with what was committed, and the
cluster is quiet: every worker up, idle, with an empty outbox, in memory and on disk
(no result was lost while an outbox kept it).

Pricing gets the queue as the real node gives it (``swarmd.node._capacities``): each
peer's ``queue_max`` is its worker's own queue limit, so coordinators fill slots and
then queues, and workers queue for real.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec
from protocol.messages import (
    AttemptResult,
    CancelAttempt,
    Dispatch,
    Message,
    NodeRef,
    ResultAck,
)
from swarmd.core import tasks as core
from swarmd.core.jobspec import JobSpec, parse_job
from swarmd.core.pricing import GiB, ModelOffer, PeerCapacity
from swarmd.core.worker import (
    AttemptKey,
    Persist,
    Send,
    Start,
    Stop,
    Unpersist,
    WorkerConfig,
    WorkerCore,
)
from swarmd.core.worker import Effect as WorkerEffect
from swarmd.store import Store
from swarmd.work import Clock, Coordination

LEASE = 6.0
DETECT_S = 4.0  # membership declares a node unheard for this long dead
MEMBERSHIP_S = 0.5  # a gossip round: liveness, generations and gossiped load
COORD_TICK_S = 0.5  # Coordination.loop's longest sleep
WORKER_TICK_S = 0.2  # Worker.timer_loop's (swarmd.worker.TICK_S)
DRAIN_GRACE_S = 3.0  # a SIGTERMed worker lets running attempts finish this long
REPORT_FRESH_S = 1.0  # swarmd.node: a worker's own load report beats gossip this long
CHAOS_UNTIL = 90.0  # chaos starts before this; then everything heals
CONFIG = core.CoordinatorConfig(lease_s=LEASE, restore_grace_s=LEASE)
COORD = "coord"
COORD_ADDR = "10.0.0.1:7946"
MODEL = "fast"  # the llm model profile some workers serve
MEMORY = Path(":memory:")  # a Store in memory: the "disk" is the Store object, kept


@dataclass(frozen=True)
class Chaos:
    """How hostile one run is."""

    tasks: int = 30
    workers: int = 5
    loss: float = 0.05  # each message copy
    dup: float = 0.05  # a message is sent twice
    max_latency_s: float = 0.2  # uniform latency from 0.5 ms to this: reordering
    late: float = 0.01  # a message copy held up 1-10 s more (a straggler)
    worker_crashes: int = 4
    freezes: int = 4
    partitions: int = 4
    coordinator_crashes: int = 2
    graceful_stops: int = 2  # SIGTERM: drain, hand back, leave, start again
    drains: int = 2  # swarmctl drain, undrain a while later
    cancels: int = 1  # swarmctl cancel of a task
    deadlines: float = 0.1  # share of jobs with a deadline

    @classmethod
    def of(cls, rng: random.Random) -> Chaos:
        return cls(
            tasks=rng.randint(15, 40),
            workers=rng.randint(2, 6),
            loss=rng.choice([0.0, 0.02, 0.1, 0.25]),
            dup=rng.choice([0.0, 0.05, 0.2]),
            max_latency_s=rng.choice([0.002, 0.05, 0.5, 2.0]),
            late=rng.choice([0.0, 0.01, 0.05]),
            worker_crashes=rng.randint(0, 6),
            freezes=rng.randint(0, 6),
            partitions=rng.randint(0, 6),
            coordinator_crashes=rng.randint(0, 3),
            graceful_stops=rng.randint(0, 4),
            drains=rng.randint(0, 3),
            cancels=rng.randint(0, 2),
            deadlines=rng.choice([0.0, 0.1, 0.3]),
        )


# ---------------------------------------------------------------- the network


class Network:
    """Coordinator <-> workers, frames as bytes; lossy, duplicating, reordering."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.cut_until: dict[str, float] = {}  # a worker's address -> cut off until
        self.counters: Counter[str] = Counter()

    def cut(self, src: str, dst: str) -> bool:
        now = self.sim.now
        return self.cut_until.get(src, 0.0) > now or self.cut_until.get(dst, 0.0) > now

    def send(self, src: str, dst: str, message: Message) -> None:
        sim, chaos = self.sim, self.sim.chaos
        frame = codec.encode(message)
        self.counters["sent"] += 1
        copies = 2 if sim.rng.random() < chaos.dup else 1
        self.counters["duplicated"] += copies - 1
        for _ in range(copies):
            if self.cut(src, dst) or sim.rng.random() < chaos.loss:
                self.counters["lost"] += 1
                continue
            delay = sim.rng.uniform(0.0005, chaos.max_latency_s)
            if sim.rng.random() < chaos.late:
                self.counters["late"] += 1
                delay += sim.rng.uniform(1.0, 10.0)
            sim.at(delay, partial(self.arrive, src, dst, frame))

    def arrive(self, src: str, dst: str, frame: bytes) -> None:
        if self.cut(src, dst):  # what was on the way when the link went down
            self.counters["lost"] += 1
            return
        message = codec.decode(frame)
        assert isinstance(message, Message)
        self.counters["delivered"] += 1
        self.sim.deliver(src, dst, message)


# ---------------------------------------------------------------- workers


@dataclass
class Host:
    """A worker node: its process (a WorkerCore while up), its disk, its executors."""

    node_id: str
    addr: str
    config: WorkerConfig
    store: Store
    core: WorkerCore | None = None  # None: the process is down
    generation: int = 0  # a new one each start
    incarnation: int = 0  # a new one at each start and crash: stale timers see it
    frozen_until: float = 0.0
    executing: dict[AttemptKey, int] = field(default_factory=dict)  # attempt -> run token
    executing_llm: set[AttemptKey] = field(default_factory=set)  # of which llm requests
    disk: dict[AttemptKey, AttemptResult] = field(default_factory=dict)  # store.outbox
    # What the coordinator's membership knows of it.
    member: bool = True
    known_generation: int = 1
    last_seen: float = 0.0
    gossiped_load: int = 0
    gossiped_draining: bool = False
    counters: Counter[str] = field(default_factory=Counter)  # over its incarnations

    def frozen(self, now: float) -> bool:
        return self.frozen_until > now


class SimClock(Clock):
    def __init__(self, sim: Sim) -> None:
        self.sim = sim

    def __call__(self) -> float:
        return self.sim.now


class SimCoordination(Coordination):
    """The daemon's coordinator shell, its effects watched by the simulation."""

    def __init__(self, sim: Sim, generation: int) -> None:
        self.sim = sim
        me = NodeRef(COORD, generation, generation, COORD_ADDR)
        super().__init__(
            node_id=COORD,
            node_name=COORD,
            store=sim.coord_store,
            send=sim.from_coordinator,
            address_of=sim.address_of,
            generation_of=sim.generation_of,
            peers=sim.view,
            me=lambda: me,
            clock=SimClock(sim),
            log=logging.getLogger("swarmd.test.sim"),
            config=CONFIG,
        )

    def new_task_id(self) -> str:
        return f"t{len(self.sim.submitted)}"

    def run(self, effects: Any) -> None:
        self.sim.observe(effects)  # first: carrying them out may nest another call
        super().run(effects)

    def wake(self) -> None:
        self.sim.wake_coordinator()


class Sim:
    def __init__(self, seed: int, chaos: Chaos) -> None:
        self.rng = random.Random(seed)
        self.chaos = chaos
        self.now = 0.0
        self.events: list[tuple[float, int, Callable[[], object]]] = []
        self.seq = 0
        self.net = Network(self)
        self.coord_store = Store(MEMORY)
        self.coord_generation = 1
        self.coordination: SimCoordination | None = SimCoordination(self, 1)
        self.coord_counters: Counter[str] = Counter()  # over its incarnations
        self.pass_due = False
        self.hosts: dict[str, Host] = {}
        self.by_addr: dict[str, Host] = {}
        for i in range(chaos.workers):
            slots = self.rng.randint(1, 3)
            queue = self.rng.choice([0, 1, 2, None])
            # The first node always serves the model profile, some others too.
            models = {MODEL: self.rng.randint(1, 2)} if i == 0 or self.rng.random() < 0.4 else {}
            host = Host(
                node_id=f"n{i}",
                addr=f"10.0.1.{i}:7946",
                config=WorkerConfig(slots=slots, queue=queue, models=models),
                store=Store(MEMORY),
            )
            self.hosts[host.node_id] = host
            self.by_addr[host.addr] = host
        self.last_heard: dict[str, float] = {}  # node id -> when the coordinator did
        # What the checks need, over every incarnation of everyone:
        self.submitted: dict[str, JobSpec] = {}
        self.finished: dict[str, str] = {}
        self.dispatched: dict[tuple[str, str], int] = {}  # highest attempt sent
        self.starts: Counter[AttemptKey] = Counter()  # executions of each attempt
        self.resent = 0  # dispatches sent again (no word from the worker yet)
        self.sent_to: dict[AttemptKey, str] = {}  # attempt -> node
        self.commits: Counter[tuple[str, str]] = Counter()
        self.committed: dict[tuple[str, str], str] = {}  # stdout of committed results
        self.runs: Counter[AttemptKey] = Counter()  # executions started per attempt
        self.max_running: Counter[str] = Counter()  # node id -> most attempts run at once
        self.max_held: Counter[str] = Counter()  # node id -> most attempts held at once

    # ------------------------------------------------------------ plumbing

    def at(self, delay: float, fn: Callable[[], object]) -> None:
        self.seq += 1
        heapq.heappush(self.events, (self.now + delay, self.seq, fn))

    def deliver(self, src: str, dst: str, message: Message) -> None:
        if dst == COORD_ADDR:
            self.to_coordinator(self.by_addr[src], message)
        else:
            self.to_worker(self.by_addr[dst], self.by_addr[dst].incarnation, message)

    # ------------------------------------------------------------ the coordinator

    def from_coordinator(self, addr: str, message: Message) -> bool:
        self.net.send(COORD_ADDR, addr, message)
        return True  # queued, as a transport says: it may still be lost

    def address_of(self, node_id: str) -> str | None:
        host = self.hosts.get(node_id)
        return host.addr if host is not None and host.member else None

    def generation_of(self, node_id: str) -> int | None:
        host = self.hosts.get(node_id)
        return None if host is None else host.known_generation

    def view(self, loads: dict[str, core.NodeLoad]) -> list[PeerCapacity]:
        """The peers as swarmd.node._capacities builds them."""
        assert self.coordination is not None
        out = []
        for host in self.hosts.values():
            if not host.member:
                continue
            load = loads.get(host.node_id)
            ours = 0 if load is None else load.slots
            report = self.coordination.reports.get(host.node_id)
            heard = self.last_heard.get(host.node_id, -1e9)
            if report is not None and self.now - heard < REPORT_FRESH_S:
                held = ours + report.others()
            else:
                held = max(ours, host.gossiped_load)
            slots = host.config.slots
            in_flight = 0 if load is None else load.models.get(MODEL, 0)
            models = tuple(
                ModelOffer(name, "tiny", frozenset(), limit, 0.0, None, None, in_flight)
                for name, limit in host.config.models.items()
            )
            out.append(
                PeerCapacity(
                    node_id=host.node_id,
                    name=host.node_id,
                    alive=True,
                    draining=host.gossiped_draining,
                    on_battery=False,
                    battery_policy="pause",
                    cores=slots,
                    load=0.2,
                    ram_available=8 * GiB,
                    gpus_vram_free=(),
                    gpus_vram_total=(),
                    slots_total=slots,
                    slots_busy=held,
                    queue=0,  # counted in held
                    rtt_s=0.001,
                    cost_per_hour=0.0,
                    models=models,
                    queue_max=host.config.queue_limit,
                )
            )
        return out

    def to_coordinator(self, host: Host, message: Message) -> None:
        c = self.coordination
        if c is None:
            return  # down: lost
        self.last_heard[host.node_id] = self.now
        c.on_message(message)

    def observe(self, effects: list[core.Effect]) -> None:
        """Every effect of the coordinator, as it comes out: the commit checks."""
        assert self.coordination is not None
        for e in effects:
            if isinstance(e, core.Dispatch):
                key = (e.task_id, e.subtask_id)
                sent_before = self.sent_to.get((*key, e.attempt))
                if sent_before is not None:  # the same attempt again (no word on it yet)
                    assert e.attempt == self.dispatched[key], ("an old attempt resent", e)
                    assert e.node_id == sent_before, ("an attempt resent elsewhere", e)
                    self.resent += 1
                    continue
                assert e.attempt > self.dispatched.get(key, 0), ("attempt reused", e)
                self.dispatched[key] = e.attempt
                self.sent_to[(e.task_id, e.subtask_id, e.attempt)] = e.node_id
            elif isinstance(e, core.Ack) and e.committed:
                key = (e.task_id, e.subtask_id)
                self.commits[key] += 1
                assert self.commits[key] == 1, ("committed twice", e)
                assert e.attempt == self.dispatched[key], ("not the current attempt", e)
                assert e.node_id == self.sent_to[(*key, e.attempt)], ("not its node", e)
                rec = self.coordination.coordinator.record(e.task_id).subtasks[e.subtask_id]
                assert rec.result is not None
                assert rec.result.stdout == f"{e.subtask_id}#{e.attempt}@{e.node_id}", (
                    "not what that attempt produced",
                    rec.result,
                    e,
                )
                self.committed[key] = rec.result.stdout
            elif isinstance(e, core.TaskFinished):
                self.finished[e.task_id] = e.state

    def wake_coordinator(self) -> None:
        if not self.pass_due:
            self.pass_due = True
            self.at(0.0, self.coordinator_pass)

    def coordinator_pass(self) -> None:
        """One turn of Coordination.loop: leases and deadlines, then placement."""
        self.pass_due = False
        c = self.coordination
        if c is not None:
            c.run(c.coordinator.tick(self.now))
            c.place()

    def coordinator_loop(self) -> None:
        self.coordinator_pass()
        self.at(COORD_TICK_S, self.coordinator_loop)

    def crash_coordinator(self, downtime: float) -> None:
        if self.coordination is None:
            return
        self.coord_counters.update(self.coordination.counters)
        self.coordination = None
        self.at(downtime, self.restart_coordinator)

    def restart_coordinator(self) -> None:
        self.coord_generation += 1
        self.coordination = SimCoordination(self, self.coord_generation)
        self.coordination.restore()

    def cancel_some_task(self) -> None:
        """``swarmctl cancel`` of a task submitted by now (no effect if it finished)."""
        c = self.coordination
        if c is not None and self.submitted:
            task_id = self.rng.choice(sorted(self.submitted))
            c.run(c.coordinator.cancel(task_id, self.now))

    def submit(self, spec: JobSpec) -> None:
        c = self.coordination
        if c is None:  # the client tries again
            self.at(1.0, partial(self.submit, spec))
            return
        task_id = c.submit(spec, {})
        self.submitted[task_id] = spec

    # ------------------------------------------------------------ workers

    def start_worker(self, host: Host) -> None:
        """A new process: a new WorkerCore, restored from the durable outbox."""
        host.incarnation += 1
        host.generation += 1
        host.frozen_until = 0.0
        host.core = WorkerCore(host.node_id, host.config, host.generation)
        stored = [(addr, codec.decode(data)) for addr, data in host.store.outbox()]
        restored = [(addr, m) for addr, m in stored if isinstance(m, AttemptResult)]
        assert {(m.task, m.subtask, m.attempt) for _, m in restored} == set(host.disk)
        host.core.restore(restored, self.now)
        host.counters["restored"] += len(restored)
        self.worker_tick(host, host.incarnation)

    def crash_worker(self, host: Host, downtime: float) -> None:
        if host.core is None:
            return
        host.counters["crashes"] += 1
        host.counters["attempts_lost_in_crash"] += len(host.executing)
        self.down(host, downtime)

    def down(self, host: Host, downtime: float) -> None:
        """The process is gone (its memory and executors with it); back after downtime."""
        assert host.core is not None
        host.counters.update(host.core.counters)
        host.core = None
        host.incarnation += 1
        host.executing.clear()
        host.executing_llm.clear()
        self.at(downtime, partial(self.start_worker, host))

    def stop_worker(self, host: Host, downtime: float) -> None:
        """SIGTERM, as swarmd.node._drain_before_exit: take no new work, let running
        attempts finish for DRAIN_GRACE_S, hand back the rest, give the results a few
        seconds to reach the coordinator, announce "left", exit; start again later."""
        w = host.core
        if w is None or w.draining:
            return
        w.draining = True
        self.at(DRAIN_GRACE_S, partial(self.hand_back, host, host.incarnation, downtime))

    def hand_back(self, host: Host, incarnation: int, downtime: float) -> None:
        w = host.core
        if w is None or host.incarnation != incarnation:
            return  # it crashed meanwhile
        if host.frozen(self.now):
            later = partial(self.hand_back, host, incarnation, downtime)
            self.at(host.frozen_until - self.now, later)
            return
        host.counters["graceful_stops"] += 1
        self.carry_out(host, w.hand_back(self.now))
        self.at(3.0, partial(self.leave, host, incarnation, downtime))

    def leave(self, host: Host, incarnation: int, downtime: float) -> None:
        if host.core is None or host.incarnation != incarnation:
            return
        self.down(host, downtime)
        if not self.net.cut(host.addr, COORD_ADDR):  # else: unheard for DETECT_S
            host.member = False
            if self.coordination is not None:
                self.coordination.on_peer_gone(host.node_id)

    def drain(self, host: Host, seconds: float) -> None:
        """``swarmctl drain``, then ``undrain`` after ``seconds``."""
        w = host.core
        if w is None or w.draining:
            return
        w.draining = True

        def undrain(incarnation: int = host.incarnation) -> None:
            if host.core is not None and host.incarnation == incarnation:
                host.core.draining = False

        self.at(seconds, undrain)

    def worker_tick(self, host: Host, incarnation: int) -> None:
        if host.incarnation != incarnation or host.core is None:
            return  # that process is gone
        if not host.frozen(self.now):
            self.carry_out(host, host.core.tick(self.now))
        self.at(WORKER_TICK_S, partial(self.worker_tick, host, incarnation))

    def to_worker(self, host: Host, incarnation: int, message: Message) -> None:
        w = host.core
        if w is None or host.incarnation != incarnation:
            return  # sent to a process that is gone
        if host.frozen(self.now):  # kept in the socket buffer until SIGCONT
            self.at(
                host.frozen_until - self.now, partial(self.to_worker, host, incarnation, message)
            )
            return
        if isinstance(message, Dispatch):
            self.carry_out(host, w.on_dispatch(message, self.now))
        elif isinstance(message, CancelAttempt):
            self.carry_out(host, w.on_cancel(message, self.now))
        elif isinstance(message, ResultAck):
            self.carry_out(host, w.on_ack(message))
        else:
            raise AssertionError(f"a worker got {message!r}")

    def carry_out(self, host: Host, effects: list[WorkerEffect]) -> None:
        """What swarmd/worker.py does with the core's effects."""
        w = host.core
        assert w is not None
        puts: list[tuple[str, str, int, str, bytes]] = []
        drops: list[AttemptKey] = []
        for e in effects:
            if isinstance(e, Send):
                self.net.send(host.addr, e.addr, e.message)
            elif isinstance(e, Start):
                self.start_attempt(host, e)
            elif isinstance(e, Stop):
                token = host.executing.get(e.key)
                if token is not None:  # the executor notices the cancellation soon
                    end = partial(self.end_attempt, host, e.key, token, stopped=True)
                    self.at(self.rng.uniform(0.01, 0.3), end)
            elif isinstance(e, Persist):
                puts.append((*e.key, e.addr, codec.encode(e.message)))
                drops = [k for k in drops if k != e.key]
                host.disk[e.key] = e.message
            elif isinstance(e, Unpersist):
                puts = [p for p in puts if p[:3] != e.key]
                drops.append(e.key)
                host.disk.pop(e.key, None)
        if puts or drops:
            host.store.update_outbox(puts, drops)
        slots, queue = host.config.slots, host.config.queue_limit
        requests = host.config.models.get(MODEL, 0)  # llm: at most this many at once
        shell = sorted(host.executing.keys() - host.executing_llm)
        assert len(shell) <= slots, (host.node_id, "runs", shell)
        llm = len(host.executing_llm)
        assert llm <= requests, (host.node_id, "llm requests", llm)
        assert w.busy <= slots, (host.node_id, "busy", w.busy)
        assert len(w.running_keys()) <= slots + requests, (host.node_id, w.running_keys())
        assert w.load <= slots + queue, (host.node_id, "holds", w.load)
        assert len(w.held) <= slots + queue + requests, (host.node_id, "holds", len(w.held))
        assert set(w.outbox) == set(host.disk), (host.node_id, "outbox not durable")
        self.max_running[host.node_id] = max(self.max_running[host.node_id], len(shell))
        self.max_held[host.node_id] = max(self.max_held[host.node_id], w.load)

    def start_attempt(self, host: Host, e: Start) -> None:
        d = e.dispatch
        llm = d.spec["kind"] == "llm"
        args = d.spec["prompt"].split()[1:] if llm else d.spec["run"][1:]
        for arg in args:  # rendered from the committed upstream results
            upstream, _, value = arg.partition("=")
            assert value == self.committed[(d.task, upstream)], (arg, d)
        self.starts[e.key] += 1  # an attempt runs once: sent again, it is not run again
        assert self.starts[e.key] == 1, ("an attempt ran twice", e.key, host.node_id)
        self.seq += 1
        host.executing[e.key] = self.seq
        if llm:
            assert d.model == MODEL
            host.executing_llm.add(e.key)
            host.counters["llm_started"] += 1
        self.runs[e.key] += 1
        self.at(self.rng.uniform(0.1, 15.0), partial(self.end_attempt, host, e.key, self.seq))

    def end_attempt(self, host: Host, key: AttemptKey, token: int, stopped: bool = False) -> None:
        """The executor ended (ran to its end, or was stopped): ``on_finished``, with
        the result swarmd.worker.Worker._run makes of it."""
        w = host.core
        if w is None or host.executing.get(key) != token:
            return  # died with its worker, or ended already
        if host.frozen(self.now):  # the daemon hears of it after SIGCONT
            end = partial(self.end_attempt, host, key, token, stopped)
            self.at(host.frozen_until - self.now, end)
            return
        del host.executing[key]
        host.executing_llm.discard(key)
        if stopped:
            cancelled = w.was_cancelled(key)
            why = "cancelled by the coordinator" if cancelled else "worker shutting down"
            result = w.ended_early(key, why)
        else:
            stdout = f"{key[1]}#{key[2]}@{host.node_id}"  # which run produced it
            roll = self.rng.random()
            if roll < 0.03:
                result = AttemptResult(
                    task=key[0],
                    subtask=key[1],
                    attempt=key[2],
                    node=host.node_id,
                    exit_code=1,
                    stdout=stdout,
                    stderr="boom",
                    app_failed=True,
                )
            elif roll < 0.06:
                result = w.ended_early(key, "executor error: broke")
            else:
                result = AttemptResult(
                    task=key[0],
                    subtask=key[1],
                    attempt=key[2],
                    node=host.node_id,
                    exit_code=0,
                    stdout=stdout,
                    usage={"seconds": 1.0},
                )
        self.carry_out(host, w.on_finished(key, result, self.now))

    # ------------------------------------------------------------ membership

    def reachable(self, host: Host) -> bool:
        return (
            host.core is not None
            and not host.frozen(self.now)
            and not self.net.cut(host.addr, COORD_ADDR)
        )

    def membership(self) -> None:
        """The coordinator's failure detector, once a gossip round."""
        gone = []
        for host in self.hosts.values():
            if self.reachable(host):
                assert host.core is not None
                host.last_seen = self.now
                host.gossiped_load = host.core.load
                host.gossiped_draining = host.core.draining
                if host.generation != host.known_generation:  # restarted: forgot its work
                    host.known_generation = host.generation
                    host.member = True
                    gone.append(host)
                host.member = True
            elif host.member and self.now - host.last_seen >= DETECT_S:
                host.member = False
                gone.append(host)
        for host in gone:
            if self.coordination is not None:
                self.coordination.on_peer_gone(host.node_id)
        self.at(MEMBERSHIP_S, self.membership)

    # ------------------------------------------------------------ chaos

    def freeze(self, host: Host, seconds: float) -> None:
        if host.core is not None:
            host.frozen_until = max(host.frozen_until, self.now + seconds)

    def partition(self, host: Host, seconds: float) -> None:
        cut = self.net.cut_until
        cut[host.addr] = max(cut.get(host.addr, 0.0), self.now + seconds)

    # ------------------------------------------------------------ the run

    def job(self, n: int) -> JobSpec:
        subtasks: list[dict[str, Any]] = []
        for i in range(self.rng.randint(1, 5)):
            after = sorted(self.rng.sample([s["id"] for s in subtasks], min(i, 2)))
            args = [f"{up}={{{{ {up}.stdout }}}}" for up in after]
            subtask: dict[str, Any] = {"id": f"s{i}", "after": after, "retries": 4}
            if self.rng.random() < 0.2:
                subtask.update(kind="llm", model=MODEL, prompt=" ".join(["say", *args]))
            else:
                subtask.update(kind="shell", run=["echo", *args])
            subtasks.append(subtask)
        job: dict[str, Any] = {"name": f"job{n}", "subtasks": subtasks}
        job["priority"] = self.rng.choice(["critical", "high", "normal", "low"])
        if self.rng.random() < self.chaos.deadlines:
            job["deadline"] = self.rng.choice(["15s", "40s", "120s"])
        return parse_job(job)

    def hosts_at_random(self, n: int) -> Iterator[Host]:
        for _ in range(n):
            yield self.rng.choice(list(self.hosts.values()))

    def quiet(self) -> bool:
        """Every task finished, every worker up, idle, its outbox empty."""
        return len(self.finished) == self.chaos.tasks and all(
            h.core is not None and not h.core.held and not h.core.outbox and not h.executing
            for h in self.hosts.values()
        )

    def run(self, until: float = 3000.0) -> None:
        chaos, rng = self.chaos, self.rng
        for host in self.hosts.values():
            self.start_worker(host)
        for n in range(chaos.tasks):
            self.at(rng.uniform(0.0, 60.0), partial(self.submit, self.job(n)))
        for host in self.hosts_at_random(chaos.worker_crashes):
            crash = partial(self.crash_worker, host, rng.uniform(0.5, 12.0))
            self.at(rng.uniform(5.0, CHAOS_UNTIL), crash)
        for host in self.hosts_at_random(chaos.freezes):
            freeze = partial(self.freeze, host, rng.choice([1.0, 3.0, 10.0, 20.0]))
            self.at(rng.uniform(5.0, CHAOS_UNTIL), freeze)
        for host in self.hosts_at_random(chaos.partitions):
            cut = partial(self.partition, host, rng.choice([0.5, 3.0, 8.0, 20.0]))
            self.at(rng.uniform(5.0, CHAOS_UNTIL), cut)
        for host in self.hosts_at_random(chaos.graceful_stops):
            stop = partial(self.stop_worker, host, rng.uniform(0.5, 10.0))
            self.at(rng.uniform(5.0, CHAOS_UNTIL), stop)
        for host in self.hosts_at_random(chaos.drains):
            drain = partial(self.drain, host, rng.uniform(1.0, 20.0))
            self.at(rng.uniform(5.0, CHAOS_UNTIL), drain)
        for _ in range(chaos.cancels):
            self.at(rng.uniform(5.0, CHAOS_UNTIL), self.cancel_some_task)
        for _ in range(chaos.coordinator_crashes):
            crash_c = partial(self.crash_coordinator, rng.uniform(0.5, 5.0))
            self.at(rng.uniform(10.0, CHAOS_UNTIL), crash_c)
        self.at(0.0, self.coordinator_loop)
        self.at(0.0, self.membership)
        while self.events and self.now < until:
            self.now, _, fn = heapq.heappop(self.events)
            fn()
            if self.now > CHAOS_UNTIL + 30.0 and self.quiet():
                break
        if self.coordination is not None:
            self.coord_counters.update(self.coordination.counters)
        for host in self.hosts.values():
            if host.core is not None:
                host.counters.update(host.core.counters)

    def close(self) -> None:
        self.coord_store.close()
        for host in self.hosts.values():
            host.store.close()


def check_end(sim: Sim) -> None:
    """The run is over: everything ended, the records agree with the commits, quiet."""
    c = sim.coordination
    assert c is not None
    coord = c.coordinator
    assert sorted(sim.finished) == sorted(sim.submitted) == sorted(coord.task_ids())
    assert len(sim.submitted) == sim.chaos.tasks
    for task_id in coord.task_ids():
        task = coord.record(task_id)
        assert task.final and sim.finished[task_id] == task.state
        for sid, rec in task.subtasks.items():
            key = (task_id, sid)
            assert sim.commits[key] == (rec.result is not None), (key, rec.state)
            if rec.result is not None:
                assert rec.result.stdout == sim.committed[key]
            if rec.state == "done":
                assert rec.current is not None and rec.current.number == rec.attempt
                assert sim.committed[key] == f"{sid}#{rec.attempt}@{rec.current.node_id}"
        if task.state == "done":
            assert all(r.state == "done" for r in task.subtasks.values())
    assert sim.quiet(), {
        h.node_id: (h.core and (sorted(h.core.held), sorted(h.core.outbox)), h.executing)
        for h in sim.hosts.values()
    }
    for host in sim.hosts.values():  # nothing left on any disk either
        assert host.store.outbox() == [] and host.disk == {}


def simulate(seed: int, chaos: Chaos) -> Sim:
    sim = Sim(seed, chaos)
    try:
        sim.run()
        check_end(sim)
    finally:
        sim.close()
    return sim


SEEDS = 100


@pytest.mark.parametrize("seed", range(SEEDS))
def test_every_task_ends_with_exactly_one_commit_per_subtask(seed: int) -> None:
    """Default chaos, then a random profile per seed (loss up to 25%, duplicates up to
    20%, latency up to 2 s, stragglers, crashes, freezes, partitions)."""
    chaos = Chaos() if seed == 0 else Chaos.of(random.Random(seed))
    sim = simulate(seed, chaos)
    # Chaos costs some tasks (retries run out, deadlines pass), not most of them.
    plain = [t for t, job in sim.submitted.items() if job.deadline_s is None]
    states = Counter(sim.finished[t] for t in plain if sim.finished[t] != "cancelled")
    assert states["done"] >= states.total() // 3, states


@settings(max_examples=60, deadline=None, derandomize=True)  # derandomized: not flaky
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.sampled_from([0.0, 0.05, 0.3]),
    dup=st.sampled_from([0.0, 0.1, 0.5]),
    max_latency_s=st.sampled_from([0.001, 0.3, 3.0]),
    late=st.sampled_from([0.0, 0.05]),
    crashes=st.integers(0, 5),
    coordinator_crashes=st.integers(0, 3),
)
def test_exactly_once_under_any_mix_of_loss_duplication_and_reordering(
    seed: int,
    loss: float,
    dup: float,
    max_latency_s: float,
    late: float,
    crashes: int,
    coordinator_crashes: int,
) -> None:
    chaos = Chaos(
        tasks=15,
        workers=3,
        loss=loss,
        dup=dup,
        max_latency_s=max_latency_s,
        late=late,
        worker_crashes=crashes,
        freezes=crashes,
        partitions=crashes,
        coordinator_crashes=coordinator_crashes,
    )
    simulate(seed, chaos)


def test_the_simulation_exercises_the_hard_paths() -> None:
    """Across a few seeds, every path the checks are about is taken: stale results are
    fenced off, refusals, losses, re-dispatches, worker queues, resends, duplicate
    dispatches, cancellations, deadlines, graceful stops that hand work back, restored
    outboxes, coordinator restores, llm requests."""
    coord: Counter[str] = Counter()
    workers: Counter[str] = Counter()
    net: Counter[str] = Counter()
    queued = 0
    for seed in range(1, 9):
        sim = simulate(seed, Chaos.of(random.Random(seed)))
        coord.update(sim.coord_counters)
        net.update(sim.net.counters)
        for host in sim.hosts.values():
            workers.update(host.counters)
            queued += sim.max_held[host.node_id] > host.config.slots
    assert coord["stale_results"] > 0 and coord["stale_messages"] > 0
    assert coord["dispatch_resent"] > 0
    assert coord["refused"] > 0 and coord["lost"] > 0 and coord["redispatched"] > 0
    assert coord["app_failures"] > 0 and coord["worker_errors"] > 0
    assert coord["restored_tasks"] > 0 and coord["deadline_exceeded"] > 0
    assert coord["tasks_cancelled"] > 0 and coord["cancelled_attempts"] > 0
    assert workers["resent"] > 0 and workers["duplicate_dispatches"] > 0
    assert workers["cancelled"] > 0 and workers["restored"] > 0 and workers["crashes"] > 0
    assert workers["attempts_lost_in_crash"] > 0 and workers["refused"] > 0
    assert workers["graceful_stops"] > 0 and workers["outcome_handed_back"] > 0
    assert workers["llm_started"] > 0
    assert net["lost"] > 0 and net["duplicated"] > 0 and net["late"] > 0
    assert queued > 0


def test_view_counts_this_coordinators_load() -> None:
    sim = Sim(0, Chaos(workers=3))
    try:
        c = sim.coordination
        assert c is not None
        spec = parse_job({"name": "j", "subtasks": [{"id": "a", "kind": "shell", "run": ["x"]}]})
        c.submit(spec, {})
        busy = {p.node_id: p.slots_busy for p in sim.view(c.coordinator.load_by_node())}
        assert sum(busy.values()) == 1
    finally:
        sim.close()
