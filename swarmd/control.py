"""The API swarmctl calls: control requests in, replies out, built from the node's view.

Requests arrive on the owner-only unix socket in the state dir, or from members over
the CURVE socket (``swarmctl --node HOST:PORT``); both speak the same protocol.

Journal first: a task's state is shown only once it is committed. A request about a
task with changes still to commit is answered after the commit (the end of the loop
turn); while commits fail (disk full) it gets an ``unavailable`` error saying why,
and so do submit and cancel.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import msgspec

from protocol import codec
from protocol.forward import (
    FORWARD_REPLY_MAX,
    TASKS_ROWS_MAX_BYTES,
    ForwardedReply,
    ForwardedRequest,
    TaskForward,
    TaskForwarded,
    TaskLocate,
    TaskLocated,
)
from protocol.messages import (
    ArtifactRequest,
    ControlReply,
    ControlRequest,
    DrainReply,
    DrainRequest,
    ErrorReply,
    JoinTokenRequest,
    LogsRequest,
    PeersReply,
    PeersRequest,
    RevokeReply,
    RevokeRequest,
    StatsReply,
    StatsRequest,
    SubmitReply,
    SubmitRequest,
    TaskReply,
    TaskRequest,
    TasksReply,
    TasksRequest,
    UsageRequest,
    WatchReply,
    WatchRequest,
)

from .artifacts import ArtifactReader
from .blobs import BlobError
from .core.forwarding import newest_rows, newest_within
from .core.gossip import Member
from .core.jobspec import (
    JobError,
    PeerFacts,
    check_feasible,
    job_to_data,
    parse_job,
    resolve_pins,
)
from .core.tasks import FINAL_TASK, UnknownTask
from .credentials import NotAdmin
from .forwarding import Forwarder
from .journal_health import JournalUnavailable
from .peer_rows import peers
from .usage import Usage
from .work import Coordination

INLINE_REPLY_MAX = 8 * 1024 * 1024  # artifacts a task_reply may carry (the frame is 16 MiB)
TOO_BIG_FOR_ONE_REPLY = (
    "the task's artifacts are too big for one reply: fetch them in pieces with "
    "`artifact` requests (as `swarmctl result --out` does)"
)
DURABLE_WAIT_S = 5.0  # a task request waits this long for its task's commit


class NodeFacade(Protocol):
    """What the control API needs from the running node."""

    def members(self) -> list[Member]: ...
    def peer_facts(self) -> list[PeerFacts]: ...
    @property
    def coordination(self) -> Coordination: ...
    def join_token(self, request: JoinTokenRequest) -> ControlReply: ...
    def stats(self) -> dict[str, int]: ...
    @property
    def node_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    def set_draining(self, draining: bool) -> int: ...
    def revoke(self, node_id: str) -> bool: ...
    def revoked(self) -> list[str]: ...
    @property
    def usage(self) -> Usage | None: ...


class Control:
    def __init__(self, node: NodeFacade) -> None:
        self.node = node
        self._handlers: dict[type, Callable[[Any, bool], ControlReply]] = {
            PeersRequest: lambda _r, _l: PeersReply(peers=peers(self.node.members())),
            JoinTokenRequest: self.join_token,
            StatsRequest: lambda _r, _l: StatsReply(
                node=self.node.node_id, name=self.node.name, counters=self.node.stats()
            ),
            SubmitRequest: lambda r, _l: self.submit(r),
            TaskRequest: lambda r, _l: self.task(r),
            TasksRequest: lambda r, _l: self.tasks(r),
            DrainRequest: lambda r, _l: self.drain(r),
            ArtifactRequest: lambda r, _l: self.artifact(r),
            RevokeRequest: self.revoke,
            UsageRequest: lambda r, _l: self.usage(r),
            TaskLocate: lambda r, _l: TaskLocated(
                ref=r.ref, task=r.task, has=self.node.coordination.has_task(r.task)
            ),
        }
        self._reader: ArtifactReader | None = None
        # Asks the peers about tasks this node does not have (None: it does not).
        self.forwarder: Forwarder | None = None

    @property
    def reader(self) -> ArtifactReader:
        if self._reader is None:
            store = self.node.coordination.store
            self._reader = ArtifactReader(store, store.path.parent)
        return self._reader

    def artifact(self, request: ArtifactRequest) -> ControlReply:
        """A piece of a subtask's committed artifacts (``swarmctl result --out``)."""
        try:
            subtasks = self.node.coordination.coordinator.record(request.task).subtasks
        except UnknownTask:
            return self._unknown(request.task)
        if request.subtask not in subtasks:
            message = f"task {request.task} has no subtask {request.subtask!r}"
            return ErrorReply(code="bad_request", message=message)
        try:
            return self.reader.read(request)
        except (OSError, BlobError) as exc:
            return ErrorReply(code="internal", message=f"cannot read the artifacts: {exc}")

    def usage(self, request: UsageRequest) -> ControlReply:
        """This node's usage book (a peer gathering ``swarmctl usage`` asks this)."""
        if self.node.usage is None:
            return ErrorReply(code="unavailable", message="the usage book is not ready")
        return self.node.usage.local_reply(request)

    async def _usage_cluster(self, request: UsageRequest) -> ControlReply:
        """Every live node's usage book, summed (``swarmctl usage``)."""
        if self.node.usage is None:
            return ErrorReply(code="unavailable", message="the usage book is not ready")
        return await self.node.usage.gather(request)

    def join_token(self, request: JoinTokenRequest, local: bool) -> ControlReply:
        """Only on the node's own socket: a member asking over the network could
        otherwise admit node ids that revoking it would not shut out."""
        if not local:
            message = "join tokens are issued only on the node's own socket"
            return ErrorReply(code="not_allowed", message=message)
        return self.node.join_token(request)

    def revoke(self, request: RevokeRequest, local: bool) -> ControlReply:
        if not local:
            return ErrorReply(code="not_allowed", message="revoke only on the node's own socket")
        if request.node == self.node.node_id:
            return ErrorReply(code="bad_request", message="a node cannot revoke itself")
        try:
            added = self.node.revoke(request.node)
        except NotAdmin as exc:
            return ErrorReply(code="not_allowed", message=str(exc))
        return RevokeReply(node=request.node, added=added, revoked=self.node.revoked())

    def drain(self, request: DrainRequest) -> ControlReply:
        running = self.node.set_draining(request.draining)
        return DrainReply(
            node=self.node.node_id, name=self.node.name, draining=request.draining, running=running
        )

    def submit(self, request: SubmitRequest) -> ControlReply:
        """Validate the job against the live cluster, then coordinate it here. A
        ``node`` pin by id prefix is kept (and journaled) as the full id it matched."""
        try:
            job = parse_job(request.job, source=str(request.job.get("name", "job")))
            peers = self.node.peer_facts()
            check_feasible(job, peers)
        except JobError as exc:
            return ErrorReply(code="bad_request", message=str(exc)[:4000])
        pinned = resolve_pins(job, peers)
        data = request.job if pinned is job else job_to_data(pinned)
        if not pinned.deadline_best_effort:
            admission = self.node.coordination.admit(pinned)
            if admission is not None and not admission.meets:
                self.node.coordination.counters["deadline_refused"] += 1
                return ErrorReply(code="bad_request", message=admission.refusal())
        try:
            task_id = self.node.coordination.submit(pinned, request.files, data)
        except JournalUnavailable as exc:
            return ErrorReply(code="unavailable", message=str(exc)[:4000])
        return SubmitReply(task=task_id)

    def tasks(self, request: TasksRequest) -> TasksReply:
        """The tasks this node coordinates, oldest first (the newest N if asked)."""
        rows, left_out = newest_rows(self.node.coordination.coordinator.tasks(), request.newest)
        return TasksReply(tasks=rows, truncated=left_out)

    def task(self, request: TaskRequest) -> ControlReply:
        coordination = self.node.coordination
        c = coordination.coordinator
        try:
            if request.what == "status":
                return TaskReply(body=self._with_replica(c.status(request.task)))
            if request.what == "result":
                body = c.result(request.task)
                if not request.artifacts:
                    return TaskReply(body=body)
                total = self.reader.inline_total(request.task)
                if total is None or total > INLINE_REPLY_MAX:
                    return ErrorReply(code="bad_request", message=TOO_BIG_FOR_ONE_REPLY)
                return TaskReply(body=body, artifacts=coordination.store.artifacts(request.task))
            if request.what == "explain":
                return TaskReply(body=self._with_replica(c.explain(request.task)))
            coordination.run(c.cancel(request.task, coordination.clock()))
            return TaskReply(body=c.status(request.task))
        except UnknownTask:
            return self._unknown(request.task)

    def forwards(self, request: object) -> bool:
        """Whether ``request`` is answered by other nodes: about a task this node does
        not have, or the cluster's task list."""
        if self.forwarder is None:
            return False
        if isinstance(request, TasksRequest):
            return request.cluster
        if isinstance(request, TaskRequest | WatchRequest | LogsRequest | ArtifactRequest):
            return not self.node.coordination.has_task(request.task)
        return False

    def answers_later(self, request: object, forward: bool = True) -> bool:
        """Requests answered when something happens (push), once what they show is
        committed, or by other nodes: ``answer_later`` them."""
        if isinstance(request, TaskForward) or (forward and self.forwards(request)):
            return True
        commits = self.node.coordination.commits
        if isinstance(request, TaskRequest):
            return request.what == "cancel" or not commits.durable(request.task)
        if isinstance(request, TasksRequest):
            return not commits.durable()
        if isinstance(request, UsageRequest):
            return request.cluster
        if isinstance(request, SubmitRequest):  # once its successor holds the replica
            return self.node.coordination.replication is not None
        return isinstance(request, WatchRequest | LogsRequest)

    async def answer_later(self, request: Any, forward: bool = True) -> Any:
        """The answer to a request :meth:`answers_later` (a ``task_forwarded`` to a
        ``task_forward``, else a control reply)."""
        if isinstance(request, TaskForward):
            return await self._answer_forwarded(request)
        if forward and self.forwards(request):
            return await self._forward(request)
        if isinstance(request, SubmitRequest):
            reply = self.submit(request)
            replication = self.node.coordination.replication
            if isinstance(reply, SubmitReply) and replication is not None:
                await replication.wait_replicated(reply.task)
            return reply
        if isinstance(request, UsageRequest):
            return await self._usage_cluster(request)
        if isinstance(request, TaskRequest | TasksRequest):
            return await self._once_durable(request)
        coordination = self.node.coordination
        try:
            if isinstance(request, LogsRequest):
                return await coordination.watchers.logs(request)
            row = await coordination.watchers.watch(
                request.task, request.seen, request.timeout_s, request.final_only
            )
            if not coordination.commits.durable(request.task):  # changed again since
                if not await coordination.commits.wait_durable(request.task, DURABLE_WAIT_S):
                    return self._not_durable()
                row = {**coordination.coordinator.summary(request.task), "version": row["version"]}
            if request.with_result and row["state"] in FINAL_TASK:
                row["result"] = coordination.coordinator.result(request.task)
        except UnknownTask:
            return self._unknown(request.task)
        except KeyError as exc:  # a subtask id that is not the task's
            return ErrorReply(code="bad_request", message=str(exc.args[0]) if exc.args else "")
        return WatchReply(task=row)

    async def _once_durable(self, request: TaskRequest | TasksRequest) -> ControlReply:
        """Answer once what the request shows (or changes: cancel) is committed."""
        coordination = self.node.coordination
        task = request.task if isinstance(request, TaskRequest) else None
        if isinstance(request, TaskRequest) and request.what == "cancel":
            if coordination.commits.failing:
                return self._not_durable()
            try:
                coordination.run(
                    coordination.coordinator.cancel(request.task, coordination.clock())
                )
            except UnknownTask:
                return self._unknown(request.task)
            request = msgspec.structs.replace(request, what="status")
        if not await coordination.commits.wait_durable(task, DURABLE_WAIT_S):
            return self._not_durable()
        return self.handle(request, True)

    async def _answer_here(self, request: ForwardedRequest) -> ControlReply:
        """``request`` answered from this node's own tasks, never forwarded on."""
        if self.answers_later(request, forward=False):
            reply: ControlReply = await self.answer_later(request, forward=False)
            return reply
        return self.handle(request, False)

    async def _forward(self, request: ForwardedRequest) -> ControlReply:
        assert self.forwarder is not None
        if not isinstance(request, TasksRequest):
            return await self.forwarder.forward(request)
        own = await self._answer_here(TasksRequest(newest=request.newest))
        if not isinstance(own, TasksReply):
            return own  # this node's own list cannot be shown now (not committed)
        me = (self.node.node_id, self.node.name)
        return await self.forwarder.cluster_tasks(own, *me, newest=request.newest)

    async def _answer_forwarded(self, message: TaskForward) -> TaskForwarded:
        """A member node relays a request about a task it does not have (or asks for
        this node's task list): answered as if a member had asked here directly."""
        inner = message.request
        if isinstance(inner, TasksRequest):
            inner = TasksRequest(newest=inner.newest)  # its own list: never gathered again
        elif not self.node.coordination.has_task(inner.task):
            return TaskForwarded(ref=message.ref, found=False)
        try:
            reply = await self._answer_here(inner)
        except Exception as exc:
            logging.getLogger("swarmd.control").exception("forwarded request failed")
            reply = ErrorReply(code="internal", message=str(exc)[:4000])
        if isinstance(reply, TasksReply):
            rows, left_out = newest_within(reply.tasks, TASKS_ROWS_MAX_BYTES)
            reply = TasksReply(tasks=rows, truncated=reply.truncated + left_out)
        return TaskForwarded(ref=message.ref, found=True, reply=self._forwardable(reply))

    def _forwardable(self, reply: ControlReply) -> ForwardedReply:
        if not isinstance(reply, ForwardedReply):  # type: ignore[arg-type,misc]
            return ErrorReply(code="internal", message=f"unexpected {type(reply).__name__}")
        size = len(codec.encode(reply))
        if size <= FORWARD_REPLY_MAX:
            return reply  # type: ignore[return-value]
        where = getattr(self.node, "address", "") or "its node"
        return ErrorReply(
            code="bad_request",
            message=f"the answer is too big to forward ({size} bytes, over the "
            f"{FORWARD_REPLY_MAX >> 20} MiB a forwarded answer may carry): ask the node "
            f"that has the task itself: swarmctl --node {where} ...; artifacts come in "
            "pieces with `result --out` from any node",
        )

    def _not_durable(self) -> ErrorReply:
        reason = self.node.coordination.health.reason or "the journal commit is late"
        return ErrorReply(
            code="unavailable",
            message=f"task state not shown until it is committed: {reason} (held in "
            "memory; the commit is retried, new work is refused meanwhile)",
        )

    def _with_replica(self, body: dict[str, Any]) -> dict[str, Any]:
        """Where the task's replica is (swarmd/replication.py), with its status."""
        replication = self.node.coordination.replication
        if replication is not None:
            body["replica"] = replication.describe(body["id"])
        return body

    def _unknown(self, task: str) -> ErrorReply:
        moved = self.node.coordination.moved_to(task)
        if moved is not None:
            return ErrorReply(
                code="bad_request",
                message=f"task {task!r} moved: {moved.coordinator} ({moved.addr}) adopted it "
                f"at coordinator epoch {moved.epoch} while this node was away; ask there",
            )
        return ErrorReply(
            code="bad_request",
            message=f"unknown task {task!r} on this node (ask its coordinator)",
        )

    def handles(self, request: object) -> bool:
        return type(request) in self._handlers

    def serve(
        self,
        request: object,
        reply: Callable[[ControlReply], object],
        local: bool,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        log: logging.Logger,
    ) -> bool:
        """Answer ``request`` through ``reply``, now or (a watch) later on a task of
        ``spawn``'s; False if it is no control request (then answered with an error)."""
        if self.answers_later(request):
            spawn(_answer_later(self.answer_later(request), reply, log))  # type: ignore[arg-type]
        elif self.handles(request):
            try:
                reply(self.handle(request, local))  # type: ignore[arg-type]
            except Exception as exc:
                log.exception("control request failed")
                reply(ErrorReply(code="internal", message=str(exc)[:4000]))
        else:
            name = type(request).__name__
            reply(ErrorReply(code="bad_request", message=f"unexpected {name}"))
            return False
        return True

    def handle(self, request: ControlRequest, local: bool) -> ControlReply:
        handler = self._handlers.get(type(request))
        if handler is None:
            return ErrorReply(code="unsupported", message=f"not a control request: {request!r}")
        return handler(request, local)


async def _answer_later(
    answer: Awaitable[ControlReply], reply: Callable[[ControlReply], object], log: logging.Logger
) -> None:
    try:
        reply(await answer)
    except Exception as exc:
        log.exception("control request failed")
        reply(ErrorReply(code="internal", message=str(exc)[:4000]))
