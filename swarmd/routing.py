"""Where what the transport delivers goes: gossip to membership, work items to the
worker or the coordinator, the rest to the control API — after the trust checks
(:mod:`.trust`): nothing from an unproven, revoked or forging sender, no node-to-node
message on the control socket."""

from __future__ import annotations

from typing import Any

from protocol.messages import (
    Ack,
    AnyMessage,
    BlobWant,
    Bundle,
    CancelAttempt,
    Dispatch,
    DoctorRequest,
    ErrorReply,
    ReachReply,
    ReachRequest,
    ResultAck,
    StreamChunk,
    Syn,
    SynAck,
    TaskForward,
    TaskForwarded,
    TaskLocate,
    TaskLocated,
    UsageReply,
    WorkItem,
    WorkMessage,
)
from protocol.succession import ReplicaAck, ReplicaDrop, ReplicaPut, Succession, TaskQuery

from .transport import Reply

_SUCCESSION = (ReplicaPut, ReplicaAck, ReplicaDrop, Succession, TaskQuery)


class Router:
    def __init__(self, node: Any) -> None:
        self.node = node  # swarmd.node.Node: its parts exist once messages arrive

    def on_server(
        self, message: AnyMessage, reply: Reply, local: bool, sender: str | None = None
    ) -> None:
        if not local and not self.node.trust.admit(message, sender):
            return
        if local and isinstance(message, Syn | Ack | WorkMessage | TaskLocate | TaskForward):
            kind = (  # node-to-node only
                "gossip"
                if isinstance(message, Syn | Ack)
                else "forward"
                if isinstance(message, TaskLocate | TaskForward)
                else "work"
            )
            self.node.counters[f"dropped_{kind}_on_control"] += 1
            what = f"{type(message).__name__} is not a control request"
            reply(ErrorReply(code="bad_request", message=what))
        elif isinstance(message, Syn | Ack):
            self.node.membership.on_request(message, reply)
        elif isinstance(message, Bundle):
            for item in message.items:
                self._work(item, sender)
        elif isinstance(message, WorkItem):
            self._work(message, sender)
        elif isinstance(message, DoctorRequest | ReachRequest):
            self.node.doctor.serve(message, reply, local, sender)
        else:
            self._control(message, reply, local)

    def _control(self, message: AnyMessage, reply: Reply, local: bool) -> None:
        assert self.node.control is not None  # messages come in only once it is built
        if not self.node.control.serve(
            message, reply, local, self.node.lifecycle.spawn, self.node.log
        ):
            self.node.counters["dropped_unexpected"] += 1

    def _work(self, message: WorkItem, sender: str | None) -> None:
        worker, coordination = self.node.worker, self.node.coordination
        assert worker is not None and coordination is not None
        if isinstance(message, Dispatch):
            worker.on_dispatch(message)
        elif isinstance(message, CancelAttempt):
            worker.on_cancel(message, self._proven_address(sender))
        elif isinstance(message, ResultAck):
            worker.on_ack(message, self._proven_address(sender))
        elif isinstance(message, BlobWant):
            worker.on_blob_want(message, self._proven_address(sender))
        elif isinstance(message, _SUCCESSION):
            if coordination.successor is not None:
                coordination.successor.on_message(message, sender)
        elif isinstance(message, StreamChunk):
            if self.node.gateway is not None:
                self.node.gateway.relay.on_chunk(message)
            else:
                self.node.counters["dropped_stream_chunks"] += 1
        else:
            coordination.on_message(message, sender)

    def _proven_address(self, sender: str | None) -> str | None:
        """Where the proven sender listens (None: no sender known, nothing to check;
        "?": one this node does not know as a live member, which matches no one)."""
        if sender is None or self.node.membership is None:
            return None
        return self.node.membership.address_of(sender) or "?"

    def _usage_reply(self, addr: str, message: UsageReply) -> None:
        """A peer's book for a ``swarmctl usage`` this node is gathering."""
        owner = None if self.node.membership is None else self.node.membership.node_at(addr)
        if self.node.trust is not None and self.node.trust.admit_answer(message, owner):
            self.node.usage.on_reply(owner, message)

    def _forward_answer(self, addr: str, message: TaskLocated | TaskForwarded) -> None:
        """A peer's answer about a task this node asked for (:mod:`.forwarding`)."""
        control = self.node.control
        owner = None if self.node.membership is None else self.node.membership.node_at(addr)
        if control is None or control.forwarder is None:
            self.node.counters["dropped_unexpected"] += 1
        elif self.node.trust is not None and self.node.trust.admit_answer(message, owner):
            control.forwarder.on_answer(owner, message)

    def on_link(self, addr: str, message: AnyMessage) -> None:
        if isinstance(message, SynAck) and self.node.membership is not None:
            if self.node.trust is not None and self.node.trust.admit_answer(
                message, self.node.membership.node_at(addr)
            ):
                self.node.membership.on_answer(addr, message)
        elif isinstance(message, UsageReply) and self.node.usage is not None:
            self._usage_reply(addr, message)
        elif isinstance(message, ReachReply) and self.node.membership is not None:
            owner = self.node.membership.node_at(addr)
            if self.node.trust is not None and self.node.trust.admit_answer(message, owner):
                self.node.doctor.on_reach_reply(owner, message)
        elif isinstance(message, TaskLocated | TaskForwarded):
            self._forward_answer(addr, message)
        else:
            self.node.counters["dropped_unexpected"] += 1
