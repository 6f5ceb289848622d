"""What a digest lists, and what is pushed unasked: bounded at any cluster size.

Up to ``full_max`` known nodes a digest lists them all (``complete``), as plain
scuttlebutt does; a node missing from a complete digest is one its sender lacks.
Beyond that it is a bounded sample: this node, the peers it watches (relaying their
heartbeats to its other watchers), nodes whose state changed lately (hot, see
:class:`~swarmd.core.rumors.HotSet`) and a few more in rotation, so that any
difference left over is found in time. A receiver answers with its own entries where
the digest shows newer state (:func:`wants`), and pushes the latest change of its hot
nodes that the digest did not list (:meth:`DigestMaker.pushed`).
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterable

from protocol.messages import MAX_NODE_KVS, DigestEntry, NodeDelta

from .membership import ClusterState
from .rumors import HotSet


class DigestMaker:
    def __init__(self, me: str, *, full_max: int, hot: int, sample: int) -> None:
        self.me = me
        self.full_max, self.hot_max, self.sample_size = full_max, hot, sample
        self.changed = HotSet()  # nodes whose state changed lately
        self._floor: dict[str, int] = {}  # changed node -> its max version before the change
        self._order: list[str] = [me]  # rotation of the sample
        self._cursor = 0
        self.hot: list[str] = []  # this round's hot nodes, chosen at the tick

    def next_round(self, now: float) -> None:
        """Choose this round's hot nodes: every message of the round carries them."""
        self.hot = self.changed.take(now, self.hot_max)

    def note_new(self, node_id: str) -> None:
        self._order.append(node_id)

    def note_change(self, node_id: str, floor: int, until: float) -> None:
        """A node's state changed from max version ``floor`` (0: new or new generation)."""
        if node_id not in self.changed or floor == 0:
            self._floor[node_id] = floor
        self.changed.touch(node_id, until)
        if node_id not in self.hot and len(self.hot) < 2 * self.hot_max:
            self.hot.append(node_id)  # out with the rest of this round already

    def forget(self, node_id: str) -> None:
        self.changed.discard(node_id)
        self._floor.pop(node_id, None)

    def digest(
        self, state: ClusterState, watched: Iterable[str], full: bool = False
    ) -> tuple[list[DigestEntry], bool]:
        """A digest and whether it is complete (lists every node we know)."""
        nodes = state.nodes
        if full or len(nodes) <= self.full_max:
            return state.digest(), True
        ids = dict.fromkeys([self.me, *watched])
        ids.update(dict.fromkeys(self.hot))
        ids.update(dict.fromkeys(self._sample(state, self.sample_size)))
        return [nodes[i].digest() for i in ids if i in nodes], False

    def pushed(self, state: ClusterState, listed: Container[str]) -> list[NodeDelta]:
        """The latest change of each hot node a peer's digest did not list, unasked.

        ``since`` is the version before the change: a peer holding less refuses it
        (it would leave a gap) and gets the rest once a digest lists the node. A node
        new to us (``since`` 0) is not pushed whole: the digest's entry draws it."""
        nodes, out = state.nodes, []
        for node_id in self.hot:
            node = nodes.get(node_id)
            since = self._floor.get(node_id, 0)
            if node is None or node_id in listed or since <= 0:
                continue
            since = min(since, node.max_version)
            kvs = node.newer_than(since)[:MAX_NODE_KVS]
            out.append(NodeDelta(node_id, node.generation, node.heartbeat, kvs, since))
        return out

    def _sample(self, state: ClusterState, k: int) -> list[str]:
        """The next ``k`` known nodes of a rotation through all of them."""
        nodes, order = state.nodes, self._order
        if len(order) > 2 * len(nodes) + 32:
            order = self._order = list(nodes)
        out: list[str] = []
        for _ in range(min(2 * k, len(order))):
            if self._cursor >= len(order):
                self._cursor = 0
            node_id = order[self._cursor]
            self._cursor += 1
            if node_id in nodes:
                out.append(node_id)
                if len(out) == k:
                    break
        return out


def wants(state: ClusterState, me: str, digest: list[DigestEntry]) -> list[DigestEntry]:
    """Our entries where a digest shows newer state (generation 0: a node we lack)."""
    get, forgotten = state.nodes.get, state.is_forgotten
    out: list[DigestEntry] = []
    for entry in digest:
        node = get(entry.id)
        if node is None:
            if entry.id != me and not forgotten(entry.id, entry.gen):
                out.append(DigestEntry(entry.id, 0, 0, 0))
        elif entry.gen > node.generation or (
            entry.gen == node.generation and entry.maxv > node.max_version
        ):
            out.append(node.digest())
    return out


def hot_rounds(base: float, n: int) -> float:
    """How many rounds news stays hot in a cluster of ``n``: enough to reach all."""
    return base + 2 * math.log2(n + 1)
