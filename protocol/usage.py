"""Usage messages: ``swarmctl usage`` to a node, and that node to each live peer.

A node asked with ``cluster`` true asks every live peer (``cluster`` false: its own
book only) and sums the answers; a peer that does not answer within ``timeout_s`` is
listed in ``missing``. PROTOCOL.md has the table.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from protocol.base import Count, Message, Name, NodeId, Text

MAX_USAGE_ROWS = 20_000  # the most a book holds (swarmd.core.usage.UsageConfig.max_rows)
Ref = Annotated[str, Meta(max_length=32)]


class UsageRequest(Message, tag="usage"):
    since: Annotated[float, Meta(ge=0)] = 0.0  # unix time: buckets that end after it
    cluster: bool = True  # ask every live peer too
    timeout_s: Annotated[float, Meta(gt=0, le=30)] = 3.0  # per peer, all in parallel
    ref: Ref = ""  # node to node: echoed in the reply, to match it


class UsageRow(Struct, array_like=True, frozen=True):
    profile: Name
    model: Name
    node: Name  # the serving node's id ("(other)" for rows folded past the cap)
    node_name: Name
    client: Name  # an API key's id, "local" (gateway without keys) or "cli"
    requests: Count
    errors: Count
    tokens_in: Count
    tokens_out: Count
    cost: Annotated[float, Meta(ge=0)]


class UsageNode(Struct, array_like=True, frozen=True):
    id: NodeId
    name: Name
    why: Text = ""  # for a missing node: why its book is not in the sum


class UsageReply(Message, tag="usage_reply"):
    ref: Ref = ""
    since: Annotated[float, Meta(ge=0)] = 0.0
    until: Annotated[float, Meta(ge=0)] = 0.0  # the answering node's clock
    rows: Annotated[list[UsageRow], Meta(max_length=MAX_USAGE_ROWS)] = []
    nodes: Annotated[list[UsageNode], Meta(max_length=4096)] = []  # whose books are summed
    missing: Annotated[list[UsageNode], Meta(max_length=4096)] = []  # live peers not summed
