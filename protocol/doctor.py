"""``swarmctl doctor``: swarmctl to a node, and that node to each live peer.

The node asked (``doctor``) asks every alive peer to open a TCP connection back to the
address the peer knows for it (``reach``): whether its cluster port is reachable from
the others, the peer's clock for skew, and the peer's view of who is where for
duplicate node ids. The peer dials only the address its own membership holds for the
proven sender, never one named in the message. PROTOCOL.md has the table.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from protocol.base import Count, Message, Name, NodeId, Text

MAX_FINDINGS = 256
MAX_VIEW = 4096
Ref = Annotated[str, Meta(max_length=32)]
Clock = Annotated[float, Meta(ge=0)]
CheckName = Annotated[str, Meta(min_length=1, max_length=64)]


class DoctorRequest(Message, tag="doctor"):
    timeout_s: Annotated[float, Meta(gt=0, le=30)] = 4.0  # for the peers' reach replies


class Finding(Struct, frozen=True):
    """One line of ``swarmctl doctor``: what is wrong (or fine), and what to do."""

    check: CheckName
    level: Literal["ok", "warn", "fail"]
    detail: Text
    advice: Text = ""


class DoctorReply(Message, tag="doctor_reply"):
    node: NodeId
    name: Name
    findings: Annotated[list[Finding], Meta(max_length=MAX_FINDINGS)]


class ReachRequest(Message, tag="reach"):
    """Node to a peer: dial me back where you know me to listen."""

    ref: Ref


class MemberAddress(Struct, array_like=True, frozen=True):
    id: NodeId
    gen: Count
    addr: Annotated[str, Meta(max_length=262)]


class ReachReply(Message, tag="reach_reply"):
    ref: Ref
    address: Annotated[str, Meta(max_length=262)] = ""  # where it dialled ("": knows none)
    reachable: bool = False
    error: Text = ""  # why not: "timed out after 2 s", "connection refused", ...
    received: Clock = 0.0  # the peer's unix clock when the request came in
    answered: Clock = 0.0  # ... and when it answered
    view: Annotated[list[MemberAddress], Meta(max_length=MAX_VIEW)] = []
