"""Any node answers for any task, in one process: the pure part (whom to ask first,
the unknown-task error, the cluster list's merge and limit), the asking side
(:class:`swarmd.forwarding.Forwarder`: first positive answer wins, deadlines, a node
declared dead, stray answers) and the answering side (:class:`swarmd.control.Control`
serving ``task_locate`` / ``task_forward``), every message through the real codec.
Real daemons: tests/test_anynode.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from protocol import codec
from protocol.forward import TaskForward, TaskForwarded, TaskLocate, TaskLocated
from protocol.messages import (
    ErrorReply,
    Message,
    TaskReply,
    TaskRequest,
    TasksReply,
    TasksRequest,
)
from swarmd import control as control_module
from swarmd.control import Control
from swarmd.core import forwarding as core
from swarmd.core.failure import Liveness
from swarmd.core.jobspec import parse_job
from swarmd.core.tasks import Coordinator
from swarmd.forwarding import Forwarder
from swarmd.routing import Router

LOG = logging.getLogger("test")

# ---------------------------------------------------------------- the pure part


def test_the_submitter_is_asked_first_then_by_name() -> None:
    peers = [core.Peer("zz9999ab", "a", "h:1"), core.Peer("abcdef12", "z", "h:2")]
    order = core.ask_order("abcdef-0123456789", peers)
    assert [p.name for p in order] == ["z", "a"]
    assert [p.name for p in core.ask_order("not-a-hint", peers)] == ["a", "z"]
    assert core.submitter_hint("abcdef-01") == "abcdef" and core.submitter_hint("abc") == ""


def test_the_unknown_task_error_names_who_was_asked() -> None:
    assert (
        core.unknown_task("t", ["n1", "n2"], [], 2.0)
        == "unknown task 't' (asked 2 node(s): n1, n2)"
    )
    silent = core.unknown_task("t", ["n1", "n2"], ["n2"], 2.0)
    assert silent.endswith("; no answer within 2 s from n2")
    assert "no other live node" in core.unknown_task("t", [], [], 2.0)


def test_cluster_rows_are_labelled_merged_and_kept_newest_within_the_limit() -> None:
    a = core.labelled([{"id": "a1", "submitted": 1.0}, {"id": "a2", "submitted": 3.0}], "A", "na")
    b = core.labelled([{"id": "b1", "submitted": 2.0}], "B", "nb")
    rows = core.merged([a, b])
    assert [r["id"] for r in rows] == ["a1", "b1", "a2"]
    assert rows[1]["coordinator"] == "nb" and rows[1]["coordinator_id"] == "B"
    assert core.newest_within(rows, 1 << 20) == (rows, 0)
    one = core.rows_size(rows[-1:])
    kept, left_out = core.newest_within(rows, one + 4)  # the header counted as 5 bytes
    assert [r["id"] for r in kept] == ["a2"] and left_out == 2
    assert core.newest_rows(rows, 2) == (rows[1:], 1)
    assert core.newest_rows(rows, 0) == (rows, 0) == core.newest_rows(rows, 3)


# ---------------------------------------------------------------- an in-process cluster


def coordinator_with(node_id: str, *task_names: str) -> Coordinator:
    c = Coordinator(node_id=node_id, node_name=node_id)
    for i, name in enumerate(task_names):
        job = parse_job(
            {"name": name, "subtask": [{"id": "main", "kind": "shell", "run": ["true"]}]}
        )
        c.submit(f"{node_id[:6]}-{i:010d}", job, time.time())
    return c


def answering_control(node_id: str, coordinator: Coordinator, address: str = "") -> Control:
    coordination = SimpleNamespace(
        coordinator=coordinator,
        has_task=lambda t: t in coordinator.task_ids(),
        commits=SimpleNamespace(durable=lambda *_a: True, failing=False),
        clock=time.time,
        replication=None,  # a node alone: no successor holds replicas
        moved_to=lambda _t: None,
    )
    node = SimpleNamespace(
        coordination=coordination, node_id=node_id, name=node_id, address=address
    )
    return Control(node)  # type: ignore[arg-type]


def member(node_id: str, liveness: Liveness = Liveness.ALIVE, is_self: bool = False) -> Any:
    state = {"addr": f"{node_id}:1", "name": node_id}
    return SimpleNamespace(node_id=node_id, liveness=liveness, is_self=is_self, state=state)


class Net:
    """Peers by address: each answers with its Control, or stays silent; what goes
    either way is encoded and decoded as on the wire."""

    def __init__(self, controls: dict[str, Control | None]) -> None:
        self.controls = controls
        self.sent: list[tuple[str, Message]] = []
        self.forwarder = Forwarder(
            members=lambda: [member("me", is_self=True), *(member(n) for n in controls)],
            send=self.send,
            locate_s=0.5,
            forward_s=0.8,
        )

    def send(self, addr: str, message: Message) -> bool:
        node_id = addr.removesuffix(":1")
        message = codec.decode(codec.encode(message))  # type: ignore[assignment]
        self.sent.append((node_id, message))
        ctl = self.controls[node_id]
        if ctl is None:
            return True  # silent

        def reply(answer: Message) -> bool:
            back = codec.decode(codec.encode(answer))
            assert isinstance(back, TaskLocated | TaskForwarded)
            self.forwarder.on_answer(node_id, back)
            return True

        spawn: Callable[[Any], object] = asyncio.ensure_future
        assert ctl.serve(message, reply, False, spawn, LOG)
        return True

    def kinds(self) -> list[tuple[str, str]]:
        return [(n, type(m).__name__) for n, m in self.sent]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_forwarded_to_the_node_that_has_the_task_and_remembered() -> None:
    a = coordinator_with("aaaaaa01", "x")
    net = Net(
        {
            "aaaaaa01": answering_control("aaaaaa01", a),
            "bbbbbb02": answering_control("bbbbbb02", coordinator_with("bbbbbb02")),
        }
    )
    task = a.task_ids()[0]

    async def twice() -> tuple[Any, Any]:
        request = TaskRequest(task=task, what="status")
        return await net.forwarder.forward(request), await net.forwarder.forward(request)

    first, second = run(twice())
    assert isinstance(first, TaskReply) and first.body == a.status(task)
    assert second == first
    kinds = net.kinds()
    assert kinds.count(("aaaaaa01", "TaskLocate")) == 1  # the second went straight there
    assert kinds.count(("aaaaaa01", "TaskForward")) == 2
    assert ("bbbbbb02", "TaskForward") not in kinds  # it said it has no such task


def test_an_unknown_task_is_an_error_naming_the_nodes_asked_without_waiting() -> None:
    net = Net({n: answering_control(n, coordinator_with(n)) for n in ("aaaaaa01", "bbbbbb02")})
    started = time.monotonic()
    reply = run(net.forwarder.forward(TaskRequest(task="cccccc-0000000000", what="result")))
    assert isinstance(reply, ErrorReply) and reply.code == "bad_request"
    assert reply.message == "unknown task 'cccccc-0000000000' (asked 2 node(s): aaaaaa01, bbbbbb02)"
    assert time.monotonic() - started < 0.4  # every node said no: no need to wait


def test_a_silent_node_is_waited_for_until_the_locate_deadline_and_named() -> None:
    net = Net(
        {"aaaaaa01": answering_control("aaaaaa01", coordinator_with("aaaaaa01")), "bbbbbb02": None}
    )
    started = time.monotonic()
    reply = run(net.forwarder.forward(TaskRequest(task="t1", what="status")))
    took = time.monotonic() - started
    assert isinstance(reply, ErrorReply)
    assert reply.message.endswith("no answer within 0.5 s from bbbbbb02")
    assert 0.45 < took < 2


class LocatesOnly(Control):
    """Says it has every task, then never answers the forwarded request."""

    def serve(self, request: object, reply: Any, local: bool, spawn: Any, log: Any) -> bool:
        if isinstance(request, TaskLocate):
            reply(TaskLocated(ref=request.ref, task=request.task, has=True))
        return True


def test_a_node_that_does_not_answer_the_forward_is_an_error_by_the_deadline() -> None:
    hung = LocatesOnly(SimpleNamespace())  # type: ignore[arg-type]
    net = Net({"aaaaaa01": hung})
    started = time.monotonic()
    reply = run(net.forwarder.forward(TaskRequest(task="aaaaaa-0000000001", what="status")))
    took = time.monotonic() - started
    assert isinstance(reply, ErrorReply) and reply.code == "unavailable"
    assert "node aaaaaa01 (aaaaaa01:1), which has task 'aaaaaa-0000000001'" in reply.message
    assert "did not answer within 0.8 s" in reply.message
    assert 0.7 < took < 2
    assert net.forwarder._waiting == {}  # nothing left behind


def test_a_node_declared_dead_fails_what_waits_on_it_at_once() -> None:
    net = Net({"aaaaaa01": LocatesOnly(SimpleNamespace())})  # type: ignore[arg-type]
    net.forwarder.forward_s = 30.0

    async def dies() -> Any:
        pending = asyncio.ensure_future(net.forwarder.forward(TaskRequest(task="t", what="status")))
        while ("aaaaaa01", "TaskForward") not in net.kinds():
            await asyncio.sleep(0.01)
        net.forwarder.on_peer_gone("aaaaaa01")
        return await asyncio.wait_for(pending, 1.0)

    reply = run(dies())
    assert isinstance(reply, ErrorReply) and "was declared dead" in reply.message


def test_answers_from_a_node_not_asked_or_late_are_dropped_and_counted() -> None:
    net = Net({})

    async def stray() -> None:
        future = net.forwarder._expect("r1", "aaaaaa01")
        net.forwarder.on_answer("bbbbbb02", TaskLocated(ref="r1", task="t", has=True))
        assert not future.done()  # another node's answer for that ref
        net.forwarder.on_answer("aaaaaa01", TaskLocated(ref="r2", task="t", has=True))
        net.forwarder.on_answer(None, TaskLocated(ref="r1", task="t", has=True))

    run(stray())
    assert net.forwarder.counters["forward_answers_unexpected"] == 3


def test_the_answering_side() -> None:
    a = coordinator_with("aaaaaa01", "x", "y")
    ctl = answering_control("aaaaaa01", a)
    task = a.task_ids()[0]
    got: list[Message] = []

    async def ask(message: Message) -> Message:
        got.clear()
        assert ctl.serve(message, got.append, False, asyncio.ensure_future, LOG)
        while not got:
            await asyncio.sleep(0)
        return got[0]

    assert run(ask(TaskLocate(ref="r", task=task))) == TaskLocated(ref="r", task=task, has=True)
    assert run(ask(TaskLocate(ref="r", task="zz"))) == TaskLocated(ref="r", task="zz", has=False)
    unknown = run(ask(TaskForward(ref="r", request=TaskRequest(task="zz", what="status"))))
    assert unknown == TaskForwarded(ref="r", found=False)
    found = run(ask(TaskForward(ref="r", request=TaskRequest(task=task, what="explain"))))
    assert isinstance(found, TaskForwarded) and found.found
    assert found.reply == TaskReply(body=a.explain(task))
    # a cluster list asked of a peer is its own list, never gathered again
    listed = run(ask(TaskForward(ref="r", request=TasksRequest(cluster=True))))
    assert isinstance(listed, TaskForwarded) and listed.reply == TasksReply(tasks=a.tasks())


def test_an_answer_too_big_to_forward_says_where_to_ask(monkeypatch: pytest.MonkeyPatch) -> None:
    a = coordinator_with("aaaaaa01", "x")
    ctl = answering_control("aaaaaa01", a, address="10.0.0.1:7946")
    monkeypatch.setattr(control_module, "FORWARD_REPLY_MAX", 10)
    forwarded = run(
        ctl._answer_forwarded(
            TaskForward(ref="r", request=TaskRequest(task=a.task_ids()[0], what="result"))
        )
    )
    assert isinstance(forwarded.reply, ErrorReply)
    assert "too big to forward" in forwarded.reply.message
    assert "swarmctl --node 10.0.0.1:7946" in forwarded.reply.message


def test_the_cluster_list_merges_labels_and_names_who_is_missing() -> None:
    a, b = coordinator_with("aaaaaa01", "x"), coordinator_with("bbbbbb02", "y", "z")
    net = Net(
        {
            "aaaaaa01": answering_control("aaaaaa01", a),
            "bbbbbb02": answering_control("bbbbbb02", b),
            "cccccc03": None,
        }
    )
    own = TasksReply(tasks=[{"id": "me-1", "submitted": 0.0}])
    reply = run(net.forwarder.cluster_tasks(own, "me", "me"))
    assert [r["coordinator"] for r in reply.tasks] == [
        "me",
        "aaaaaa01",
        "bbbbbb02",
        "bbbbbb02",
    ]
    assert reply.missing == ["cccccc03: no answer within 0.5 s"]


def test_forward_messages_on_the_local_socket_are_refused() -> None:
    """They are node to node: a local client gets an error and they are counted."""
    node = SimpleNamespace(counters=Counter())
    router = Router(node)
    forward = TaskForward(ref="r", request=TaskRequest(task="t", what="cancel"))
    for message in (TaskLocate(ref="r", task="t"), forward):
        replies: list[Message] = []
        router.on_server(message, replies.append, True)
        assert isinstance(replies[0], ErrorReply) and replies[0].code == "bad_request"
    assert node.counters["dropped_forward_on_control"] == 2


def test_the_cluster_list_can_be_only_the_newest_rows() -> None:
    a, b = coordinator_with("aaaaaa01", "x", "y", "z"), coordinator_with("bbbbbb02", "w")
    net = Net(
        {"aaaaaa01": answering_control("aaaaaa01", a), "bbbbbb02": answering_control("bbbbbb02", b)}
    )
    own = TasksReply(tasks=[])
    reply = run(net.forwarder.cluster_tasks(own, "me", "me", newest=2))
    assert [r["id"] for r in reply.tasks] == [a.task_ids()[2], b.task_ids()[0]]
    assert reply.truncated == 2  # x and y
    asked = [m.request for n, m in net.sent if isinstance(m, TaskForward)]
    assert asked == [TasksRequest(newest=2)] * 2  # each node sends at most 2


def test_a_node_that_cannot_be_reached_is_said_so() -> None:
    net = Net({"aaaaaa01": answering_control("aaaaaa01", coordinator_with("aaaaaa01", "x"))})
    task = net.controls["aaaaaa01"].node.coordination.coordinator.task_ids()[0]  # type: ignore[union-attr]
    assert isinstance(run(net.forwarder.forward(TaskRequest(task=task, what="status"))), TaskReply)
    net.send = lambda _addr, _message: False  # type: ignore[method-assign]
    net.forwarder.send = net.send
    reply = run(net.forwarder.forward(TaskRequest(task=task, what="status")))
    assert isinstance(reply, ErrorReply) and "cannot be reached now" in reply.message
    unknown = run(net.forwarder.forward(TaskRequest(task="other", what="status")))
    assert (
        isinstance(unknown, ErrorReply)
        and "no answer within 0.5 s from aaaaaa01" in unknown.message
    )


def test_an_unknown_task_whose_submitter_is_dead_says_so() -> None:
    net = Net({"bbbbbb02": answering_control("bbbbbb02", coordinator_with("bbbbbb02"))})
    alive = net.forwarder.members
    net.forwarder.members = lambda: [*alive(), member("aaaaaa01", Liveness.DEAD)]
    reply = run(net.forwarder.forward(TaskRequest(task="aaaaaa-0000000001", what="status")))
    assert isinstance(reply, ErrorReply) and reply.code == "bad_request"
    assert reply.message == (
        "unknown task 'aaaaaa-0000000001' (asked 1 node(s): bbbbbb02); "
        "node aaaaaa01, which submitted it, is dead"
    )
    other = run(net.forwarder.forward(TaskRequest(task="cccccc-0000000001", what="status")))
    assert isinstance(other, ErrorReply) and "submitted" not in other.message
