"""Gossip messages: a digest (Syn), the answer with deltas (SynAck), the last deltas (Ack)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from protocol.base import Address, Count, Message, NodeId


class NodeRef(Struct, array_like=True, frozen=True):
    """Who sent a gossip message: id, generation, a per-process nonce, address."""

    id: NodeId
    gen: Count
    boot: Count
    addr: Address


class DigestEntry(Struct, array_like=True, frozen=True):
    """What the sender knows of one node: its generation, heartbeat, max version."""

    id: NodeId
    gen: Count
    hb: Count
    maxv: Count


class KV(Struct, array_like=True, frozen=True):
    key: Annotated[str, Meta(min_length=1, max_length=64)]
    value: Any
    version: Annotated[int, Meta(ge=1)]


MAX_NODE_KVS = 256


class NodeDelta(Struct, array_like=True, frozen=True):
    """Key-values of one node newer than ``since``, the version the receiver had.

    ``since`` lets the receiver refuse a delta that would leave a gap (it holds less
    than ``since``), e.g. a late reply to an old digest: applying it would advance its
    max version past values it never received.
    """

    id: NodeId
    gen: Count
    hb: Count
    kvs: Annotated[list[KV], Meta(max_length=MAX_NODE_KVS)]
    since: Count = 0


Verdict = Literal["alive", "suspect", "dead"]


class Claim(Struct, array_like=True, frozen=True):
    """What the sender believes of one node's liveness, as of its heartbeat ``hb``.

    ``suspect``/``dead`` at hb h: nobody it trusts has seen the node beat past h.
    ``alive`` at hb h refutes any suspicion at a lower hb. ``age_ms``: how long ago
    the suspicion began, so every node times it out at about the same moment.
    """

    id: NodeId
    gen: Count
    hb: Count
    verdict: Verdict
    age_ms: Count = 0


MAX_DIGEST = 65536
MAX_NEWS = 1024
Digest = Annotated[list[DigestEntry], Meta(max_length=MAX_DIGEST)]
Delta = Annotated[list[NodeDelta], Meta(max_length=65536)]
News = Annotated[list[Claim], Meta(max_length=MAX_NEWS)]


class Syn(Message, tag="syn"):
    """``complete``: the digest lists every node the sender knows, so a node missing
    from it is one the sender lacks; otherwise it is a bounded sample. ``known``: how
    many nodes the sender knows (0: not said); one far behind sends complete digests."""

    sender: NodeRef
    seq: Count
    digest: Digest
    complete: bool = True
    news: News = []
    known: Count = 0


class SynAck(Message, tag="synack"):
    sender: NodeRef
    seq: Count
    digest: Digest
    delta: Delta
    complete: bool = True
    news: News = []
    known: Count = 0


class Ack(Message, tag="ack"):
    sender: NodeRef
    delta: Delta
    news: News = []
