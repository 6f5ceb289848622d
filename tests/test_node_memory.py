"""Node-level behaviour in one process: real :class:`swarmd.node.Node` objects (each
with its own state dir, SQLite store, worker and python pool) in one event loop, over
the in-memory transport (every message through the protocol codec), mDNS off.

What the real-daemon tests prove end to end (test_cluster, test_tasks_cluster,
test_drain, test_worker), proved here in seconds: a cluster forms, work crosses nodes,
refusals move work, a partitioned worker's subtask moves and its late result is fenced
off, drain stops placements, an unacknowledged result is resent, a copied node id is
resolved. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from protocol.messages import (
    AttemptResult,
    BlobChunk,
    DrainReply,
    DrainRequest,
    SubmitReply,
    SubmitRequest,
)
from swarmd import blobs
from swarmd.config import Config
from swarmd.core.failure import Liveness
from swarmd.core.tasks import SubtaskRecord
from swarmd.identity import ensure_state_dir, store_cluster_secret, write_node_id
from swarmd.node import Node
from swarmd.transport.memory import DropRule, MemoryHub

SECRET = bytes(range(32))
TIMEOUT_S = 20.0  # per wait; each test takes a few seconds when all is well


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (no plugin needed)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 90))

    return run


async def until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting until {what}")
        await asyncio.sleep(0.02)


class Swarm:
    """Nodes on one memory hub; node i listens at 10.0.0.i:7946."""

    def __init__(self, root: Path, hub: MemoryHub) -> None:
        self.root = root
        self.hub = hub
        self.nodes: dict[str, Node] = {}
        self._runs: dict[str, asyncio.Task[int]] = {}

    async def start(
        self,
        name: str,
        *,
        allow_shell: bool = True,
        node_id: str | None = None,
        max_queue: int | None = None,
    ) -> Node:
        state = self.root / name
        ensure_state_dir(state)
        store_cluster_secret(state, SECRET)
        if node_id is not None:
            write_node_id(state, node_id)
        address = f"10.0.0.{len(self.nodes) + 1}:7946"
        config = Config(
            state_dir=state,
            name=name,
            bind="127.0.0.1",
            advertise=address,
            join=tuple(n.address for n in self.nodes.values())[:1],
            mdns=False,
            max_concurrency=2,
            max_queue=max_queue,
            allow_shell=allow_shell,
            drain_grace_s=1.0,
        )
        node = Node(config, logging.getLogger(f"swarmd.{name}"), transport=self.hub.open)
        self.nodes[name] = node
        self._runs[name] = asyncio.create_task(node.run())
        await asyncio.wait_for(node.ready.wait(), TIMEOUT_S)
        return node

    async def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        codes = await asyncio.wait_for(asyncio.gather(*self._runs.values()), 30)
        assert codes == [0] * len(codes)

    def alive(self, viewer: Node, of: Node) -> bool:
        return any(
            m.node_id == of.node_id and m.liveness is Liveness.ALIVE for m in viewer.members()
        )

    async def formed(self) -> None:
        nodes = list(self.nodes.values())
        await until(
            lambda: all(self.alive(a, b) for a in nodes for b in nodes), "all see all alive"
        )

    async def submit(self, node: Node, *subtasks: dict[str, Any]) -> str:
        job = {"name": "t", "subtask": list(subtasks)}
        reply = await self.hub.request(node.address, SubmitRequest(job=job))
        assert isinstance(reply, SubmitReply), reply
        return reply.task


def swarm_test(test: Callable[[Swarm], Awaitable[None]], **hub: Any) -> Callable[[Path], None]:
    """A test body given a Swarm; every node is stopped (cleanly) afterwards."""

    @in_loop
    async def run(tmp_path: Path) -> None:
        swarm = Swarm(tmp_path, MemoryHub(**hub))
        try:
            await test(swarm)
        finally:
            await swarm.stop()

    run.__name__ = test.__name__
    return run  # type: ignore[return-value]


def truth(i: int) -> dict[str, Any]:
    return {"id": f"s{i}", "kind": "python", "call": "operator:truth", "args": [i + 1]}


def subtasks(node: Node, task: str) -> dict[str, SubtaskRecord]:
    assert node.coordination is not None
    return node.coordination.coordinator.record(task).subtasks


def task_state(node: Node, task: str) -> str:
    assert node.coordination is not None
    return node.coordination.coordinator.record(task).state


def placed_on(node: Node, task: str) -> set[str]:
    return {a.node_id for r in subtasks(node, task).values() for a in r.attempts}


def counter(node: Node, name: str) -> int:
    return node.stats().get(name, 0)


# ---------------------------------------------------------------- the tests


@swarm_test
async def test_a_cluster_forms(swarm: Swarm) -> None:
    for name in ("a", "b", "c"):
        await swarm.start(name)
    await swarm.formed()
    assert len({n.node_id for n in swarm.nodes.values()}) == 3
    assert swarm.hub.counters["carried"] > 0


@swarm_test
async def test_a_task_is_dispatched_across_nodes_and_completes(swarm: Swarm) -> None:
    coordinator = await swarm.start("c", allow_shell=False)  # runs no python itself
    w1, w2 = await swarm.start("w1"), await swarm.start("w2")
    await swarm.formed()
    task = await swarm.submit(coordinator, *(truth(i) for i in range(6)))
    await until(lambda: task_state(coordinator, task) == "done", "the task is done")
    records = subtasks(coordinator, task)
    assert {r.result.output for r in records.values() if r.result} == {"true"}
    assert placed_on(coordinator, task) <= {w1.node_id, w2.node_id}
    assert counter(w1, "worker_accepted") + counter(w2, "worker_accepted") == 6


@swarm_test
async def test_a_worker_without_allow_shell_refuses_and_the_work_goes_elsewhere(
    swarm: Swarm,
) -> None:
    coordinator = await swarm.start("c", allow_shell=False)
    refuser = await swarm.start("r", allow_shell=False)
    worker = await swarm.start("w")
    await swarm.formed()
    assert refuser.membership is not None
    refuser.membership.set("slots", 2)  # it claims it could: the worker itself refuses
    refuser.membership.set("allow_shell", True)
    worker.set_draining(True)  # so the coordinator tries the refuser first
    await until(lambda: _draining(coordinator, worker), "the coordinator sees w draining")
    await until(lambda: _slots(coordinator, refuser) == 2, "the coordinator believes r")
    task = await swarm.submit(coordinator, truth(1))
    await until(lambda: counter(refuser, "worker_refused") >= 1, "r refuses")
    worker.set_draining(False)
    await until(lambda: task_state(coordinator, task) == "done", "the task is done")
    assert placed_on(coordinator, task) == {worker.node_id}
    assert counter(refuser, "worker_accepted") == 0
    assert counter(coordinator, "tasks_refused") >= 1


@swarm_test
async def test_a_partitioned_worker_s_subtask_moves_and_its_late_result_is_fenced(
    swarm: Swarm,
) -> None:
    coordinator = await swarm.start("c", allow_shell=False)
    slow = await swarm.start("w1")
    await swarm.formed()
    sleep = {"id": "z", "kind": "python", "call": "time:sleep", "args": [1.5]}
    task = await swarm.submit(coordinator, sleep)
    await until(lambda: subtasks(coordinator, task)["z"].state == "running", "z runs on w1")
    other = await swarm.start("w2")
    await until(lambda: swarm.alive(coordinator, other), "c sees w2")
    swarm.hub.partition({slow.address}, {coordinator.address, other.address})
    await until(lambda: task_state(coordinator, task) == "done", "the task is done on w2")
    record = subtasks(coordinator, task)["z"]
    assert [(a.number, a.node_id) for a in record.attempts][-1] == (2, other.node_id)
    swarm.hub.heal()
    await until(lambda: counter(coordinator, "tasks_stale_results") >= 1, "w1's result is fenced")
    assert slow.store is not None
    await until(lambda: not slow.store.outbox(), "w1 was told to forget it")
    assert record.result is not None and record.attempt == 2  # committed once: attempt 2's
    assert counter(slow, "worker_finished") == 1


@swarm_test
async def test_drain_stops_new_placements(swarm: Swarm) -> None:
    coordinator = await swarm.start("c", allow_shell=False)
    drained, worker = await swarm.start("w1"), await swarm.start("w2")
    await swarm.formed()
    reply = await swarm.hub.request(drained.address, DrainRequest(draining=True))
    assert isinstance(reply, DrainReply) and reply.draining
    await until(lambda: _draining(coordinator, drained), "the coordinator sees w1 draining")
    task = await swarm.submit(coordinator, *(truth(i) for i in range(4)))
    await until(lambda: task_state(coordinator, task) == "done", "the task is done")
    assert placed_on(coordinator, task) == {worker.node_id}
    assert counter(drained, "worker_accepted") == 0


@swarm_test
async def test_an_unacknowledged_result_is_resent_until_acked(swarm: Swarm) -> None:
    coordinator = await swarm.start("c", allow_shell=False)
    worker = await swarm.start("w")
    await swarm.formed()
    lost = swarm.hub.drop(
        DropRule(kind=AttemptResult, src=worker.address, dst=coordinator.address, count=1)
    )
    task = await swarm.submit(coordinator, truth(1))
    await until(lambda: task_state(coordinator, task) == "done", "the task is done")
    assert lost.count == 0 and swarm.hub.counters["dropped_rule"] == 1
    assert counter(worker, "worker_resent") >= 1
    assert worker.store is not None
    await until(lambda: not worker.store.outbox(), "the outbox is empty once acked")


@swarm_test
async def test_a_copied_node_id_is_detected_and_one_node_takes_a_new_id(swarm: Swarm) -> None:
    copied = "c0ffee0000000001"
    first = await swarm.start("a", node_id=copied)  # 10.0.0.1: the lower address keeps it
    second = await swarm.start("b", node_id=copied)
    third = await swarm.start("c")
    await until(lambda: second.node_id != copied, "b takes a new id")
    assert first.node_id == copied
    assert (second.config.state_dir / "node_id").read_text().strip() == second.node_id
    await swarm.formed()
    assert counter(first, "identity_conflicts") + counter(second, "identity_conflicts") >= 1
    ids = {m.node_id for m in third.members() if m.liveness is Liveness.ALIVE}
    assert ids == {copied, second.node_id, third.node_id}


def _draining(viewer: Node, of: Node) -> bool:
    return any(m.node_id == of.node_id and m.state.get("draining") for m in viewer.members())


def _slots(viewer: Node, of: Node) -> int:
    return next((m.state.get("slots") for m in viewer.members() if m.node_id == of.node_id), -1)


@swarm_test
async def test_max_queue_is_gossiped_and_bounds_what_a_worker_holds(swarm: Swarm) -> None:
    """``[node] max_queue``: the peers see it as ``queue_max``; a coordinator never
    has more than slots + max_queue attempts held on that worker at once."""
    coordinator = await swarm.start("c", allow_shell=False)
    worker = await swarm.start("w", max_queue=5)
    await swarm.formed()
    await until(lambda: _state(coordinator, worker, "queue_max") == 5, "queue_max gossiped")
    held: list[int] = []
    sleepy = {"kind": "python", "call": "time:sleep", "args": [0.05]}
    task = await swarm.submit(coordinator, *({"id": f"s{i}", **sleepy} for i in range(20)))

    def done() -> bool:
        held.append(worker.worker.core.load)
        return task_state(coordinator, task) == "done"

    await until(done, "the task is done")
    assert max(held) == 2 + 5  # the slots full and the queue full, never more
    assert counter(worker, "worker_refused") == 0


def _state(viewer: Node, of: Node, key: str) -> Any:
    return next((m.state.get(key) for m in viewer.members() if m.node_id == of.node_id), None)


@swarm_test
async def test_a_big_result_s_lost_chunks_are_asked_again(swarm: Swarm) -> None:
    coordinator = await swarm.start("c", allow_shell=False)
    worker = await swarm.start("w")
    await swarm.formed()
    lost = swarm.hub.drop(
        DropRule(kind=BlobChunk, src=worker.address, dst=coordinator.address, count=1)
    )
    make = {
        "id": "big",
        "kind": "shell",
        "run": ["sh", "-c", "head -c 3000000 /dev/zero > big.bin"],
        "outputs": ["big.bin"],
    }
    task = await swarm.submit(coordinator, make)
    await until(lambda: task_state(coordinator, task) == "done", "the task is done")
    assert lost.count == 0
    assert counter(coordinator, "tasks_transfer_resumed") >= 1
    kept = coordinator.config.state_dir / "artifacts" / task / "big"
    assert blobs.read_manifest(kept) == [
        ("big.bin", 3_000_000, hashlib.sha256(bytes(3_000_000)).digest())
    ]
