"""Any node answers for any task: the asking side, over the peer links (CURVE).

A control request about a task this node does not have (``status``, ``result``,
``cancel``, ``explain``, ``watch``, ``logs``, ``artifact``) is answered by the node that
has it:

1. **Locate**: ``task_locate`` goes to every live (or suspect) peer at once, the task's
   submitter first (its id prefix); the first ``task_located`` with ``has`` wins. After
   ``LOCATE_S`` without one, or once every peer said no, the request fails with
   "unknown task T (asked N node(s): ...)" (``bad_request``, as an unknown task on its
   own node). Where a task was found is remembered (``REMEMBERED`` tasks), so a
   ``watch`` or ``logs --follow`` loop locates once.
2. **Forward**: ``task_forward`` carries the request to that node, which answers it as
   it answers a member's ``swarmctl --node`` (the same rules: any member may cancel);
   its ``task_forwarded`` reply is relayed as is. A node that does not answer by the
   deadline (``FORWARD_S`` plus the request's own wait), or is declared dead meanwhile,
   turns into an ``unavailable`` error: never a hang.

``tasks --all`` (``tasks`` with ``cluster``) asks every live peer for its list the same
way and merges the rows, each labelled with its coordinator; peers that do not answer
within ``LOCATE_S`` are named in ``missing``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Final

from protocol.forward import (
    CLUSTER_ROWS_MAX_BYTES,
    ForwardedReply,
    ForwardedRequest,
    TaskForward,
    TaskForwarded,
    TaskLocate,
    TaskLocated,
)
from protocol.messages import ErrorReply, Message, TasksReply, TasksRequest

from .core import forwarding as core
from .core.failure import Liveness
from .core.gossip import Member

LOCATE_S: Final = 2.0  # how long the peers are given to say whether they have a task
FORWARD_S: Final = 2.5  # locate and answer, in all, for a request that does not wait
REMEMBERED: Final = 1024  # tasks whose node is remembered

Send = Callable[[str, Message], bool]
_GONE: Final = object()  # what a waiting future gets when its node is declared dead
_UNREACHABLE: Final = object()  # the request could not be sent (no link, queue full)


class Forwarder:
    def __init__(
        self,
        *,
        members: Callable[[], list[Member]],
        send: Send,
        counters: Counter[str] | None = None,
        log: logging.Logger | None = None,
        locate_s: float = LOCATE_S,
        forward_s: float = FORWARD_S,
    ) -> None:
        self.members = members
        self.send = send
        self.counters: Counter[str] = Counter() if counters is None else counters
        self.log = log or logging.getLogger("swarmd.forwarding")
        self.locate_s = locate_s
        self.forward_s = forward_s
        self._waiting: dict[tuple[str, str], asyncio.Future[object]] = {}
        self._where: OrderedDict[str, str] = OrderedDict()  # task id -> node id

    # ------------------------------------------------------------ the peers

    def peers(self) -> list[core.Peer]:
        out = []
        for m in self.members():
            addr, name = m.state.get("addr"), m.state.get("name")
            if m.is_self or m.liveness not in (Liveness.ALIVE, Liveness.SUSPECT):
                continue
            if isinstance(addr, str):
                out.append(core.Peer(m.node_id, name if isinstance(name, str) else m.node_id, addr))
        return out

    # ------------------------------------------------------------ one task's request

    async def forward(self, request: ForwardedRequest) -> ForwardedReply:
        """``request`` answered by the node that has its task (see the module doc)."""
        task = getattr(request, "task", "")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.forward_s + _waits_s(request)
        self.counters["forward_requests"] += 1
        peer = self._remembered(task)
        if peer is not None:
            answer = await self._forward_to(peer, request, deadline)
            if not isinstance(answer, TaskForwarded) or answer.found:
                return self._relayed(peer, task, answer, request)
            self._where.pop(task, None)  # it moved (adopted by another node): locate again
        found = await self.locate(task, min(deadline, loop.time() + self.locate_s))
        if isinstance(found, ErrorReply):
            return found
        answer = await self._forward_to(found, request, deadline)
        if isinstance(answer, TaskForwarded) and not answer.found:  # gone since it said so
            self._where.pop(task, None)
            message = f"task {task!r} left {found.name} while the request was forwarded"
            return ErrorReply(code="unavailable", message=message + "; try again")
        return self._relayed(found, task, answer, request)

    def _relayed(
        self, peer: core.Peer, task: str, answer: object, request: ForwardedRequest
    ) -> ForwardedReply:
        if isinstance(answer, TaskForwarded) and answer.reply is not None:
            self.counters["forward_answered"] += 1
            return answer.reply
        self._where.pop(task, None)
        self.counters["forward_unanswered"] += 1
        if answer is _GONE:
            why = "was declared dead while it answered"
        elif answer is _UNREACHABLE:
            why = "cannot be reached now (no link to it, or its queue is full)"
        else:
            why = f"did not answer within {self.forward_s + _waits_s(request):g} s"
        return ErrorReply(
            code="unavailable",
            message=f"node {peer.name} ({peer.address}), which has task {task!r}, {why}: "
            "it may have died or left (a successor may take its tasks over); try again",
        )

    def _remembered(self, task: str) -> core.Peer | None:
        node_id = self._where.get(task)
        if node_id is None:
            return None
        for peer in self.peers():
            if peer.node_id == node_id:
                return peer
        self._where.pop(task, None)  # no longer live
        return None

    async def _forward_to(
        self, peer: core.Peer, request: ForwardedRequest, deadline: float
    ) -> object:
        ref = secrets.token_hex(8)
        future = self._expect(ref, peer.node_id)
        try:
            if not self.send(peer.address, TaskForward(ref=ref, request=request)):
                return _UNREACHABLE
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            self._waiting.pop((ref, peer.node_id), None)

    # ------------------------------------------------------------ locate

    async def locate(self, task: str, until: float) -> core.Peer | ErrorReply:
        """The live peer that has ``task`` (asked all at once), or the error to give."""
        ref = secrets.token_hex(8)
        peers = core.ask_order(task, self.peers())
        asked: dict[asyncio.Future[object], core.Peer] = {}
        for peer in peers:
            future = self._expect(ref, peer.node_id)
            if self.send(peer.address, TaskLocate(ref=ref, task=task)):
                asked[future] = peer
        self.counters["forward_locates"] += 1
        loop = asyncio.get_running_loop()
        pending = set(asked)
        try:
            while pending and (left := until - loop.time()) > 0:
                done, pending = await asyncio.wait(
                    pending, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                for future in done:
                    answer = future.result()
                    if isinstance(answer, TaskLocated) and answer.has:
                        return self._found(task, asked[future])
        finally:
            for peer in peers:
                self._waiting.pop((ref, peer.node_id), None)
        unsent = [p.name for p in peers if p not in asked.values()]
        silent = [asked[f].name for f in pending] + unsent
        self.counters["forward_unknown"] += 1
        names = [p.name for p in peers]
        message = core.unknown_task(task, names, silent, self.locate_s) + self._submitter_gone(task)
        return ErrorReply(code="bad_request", message=message[:4000])

    def _submitter_gone(self, task: str) -> str:
        """A hint when the node that made the task is known but not live."""
        hint = core.submitter_hint(task)
        for m in self.members() if hint else ():
            if m.node_id.startswith(hint) and not m.is_self:
                if m.liveness in (Liveness.ALIVE, Liveness.SUSPECT):
                    return ""
                name = m.state.get("name")
                name = name if isinstance(name, str) else m.node_id
                return f"; node {name}, which submitted it, is {m.liveness.value}"
        return ""

    def _found(self, task: str, peer: core.Peer) -> core.Peer:
        self._where[task] = peer.node_id
        self._where.move_to_end(task)
        while len(self._where) > REMEMBERED:
            self._where.popitem(last=False)
        return peer

    # ------------------------------------------------------------ the cluster's tasks

    async def cluster_tasks(
        self, own: TasksReply, node_id: str, name: str, newest: int = 0
    ) -> TasksReply:
        """This node's rows and every live peer's, labelled with their coordinator (the
        newest ``newest`` of them all; 0: all that fit)."""
        ref = secrets.token_hex(8)
        asked: dict[asyncio.Future[object], core.Peer] = {}
        missing: list[str] = []
        for peer in self.peers():
            future = self._expect(ref, peer.node_id)
            if self.send(peer.address, TaskForward(ref=ref, request=TasksRequest(newest=newest))):
                asked[future] = peer
            else:
                missing.append(f"{peer.name}: not reachable")
        try:
            if asked:
                await asyncio.wait(asked, timeout=self.locate_s)
        finally:
            for peer in asked.values():
                self._waiting.pop((ref, peer.node_id), None)
        per_node = [core.labelled(own.tasks, node_id, name)]
        truncated = own.truncated
        for future, peer in asked.items():
            answer = future.result() if future.done() else None
            reply = answer.reply if isinstance(answer, TaskForwarded) else None
            if isinstance(reply, TasksReply):
                per_node.append(core.labelled(reply.tasks, peer.node_id, peer.name))
                truncated += reply.truncated
            elif isinstance(reply, ErrorReply):
                missing.append(f"{peer.name}: {reply.code}: {reply.message}"[:4000])
            else:
                missing.append(f"{peer.name}: no answer within {self.locate_s:g} s")
        rows, past_newest = core.newest_rows(core.merged(per_node), newest)
        rows, past_limit = core.newest_within(rows, CLUSTER_ROWS_MAX_BYTES)
        truncated += past_newest + past_limit
        return TasksReply(tasks=rows, missing=missing, truncated=truncated)

    # ------------------------------------------------------------ answers

    def _expect(self, ref: str, node_id: str) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiting[(ref, node_id)] = future
        return future

    def on_answer(self, sender: str | None, message: TaskLocated | TaskForwarded) -> None:
        """A peer's answer on our link to it (``sender``: the node at that address)."""
        future = self._waiting.get((message.ref, sender or ""))
        if future is None or future.done():
            self.counters["forward_answers_unexpected"] += 1  # late, or never asked
            return
        future.set_result(message)

    def on_peer_gone(self, node_id: str) -> None:
        """``node_id`` was declared dead or left: what waits on it fails now."""
        for (_, waited), future in list(self._waiting.items()):
            if waited == node_id and not future.done():
                future.set_result(_GONE)


def _waits_s(request: ForwardedRequest) -> float:
    """How long the answering node may hold the request by design (watch, follow)."""
    timeout = getattr(request, "timeout_s", 0.0)
    follow = getattr(request, "follow", True)  # a watch always waits; logs only with -f
    return float(timeout) if follow else 0.0
