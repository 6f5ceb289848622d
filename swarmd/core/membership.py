"""Versioned per-node state, digests, deltas and merge (scuttlebutt anti-entropy).

Every node owns one :class:`NodeState`: a heartbeat counter and key-values, each
stamped with a version from the owner's own counter. Nobody but the owner writes it,
so merging two copies is a join: the higher generation wins outright (a restarted
node supersedes its old self); within a generation the heartbeat is the maximum and
each key keeps its highest-versioned value. :class:`ClusterState` is a map of those,
plus tombstones of forgotten (node, generation) pairs so gossip cannot resurrect them.

No I/O, no clock: pure data and functions, so the merge laws can be property-tested.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from protocol.messages import KV, MAX_NODE_KVS, DigestEntry, NodeDelta


@dataclass(slots=True, frozen=True)
class Versioned:
    value: Any
    version: int


def _newer(a: Versioned, b: Versioned) -> Versioned:
    """The later of two values of one key; ties broken deterministically."""
    if a.version != b.version:
        return a if a.version > b.version else b
    return a if repr(a.value) >= repr(b.value) else b


@dataclass(slots=True)
class NodeState:
    node_id: str
    generation: int
    heartbeat: int = 0
    kvs: dict[str, Versioned] = field(default_factory=dict)
    max_version: int = -1  # derived from kvs; -1 means "compute it"

    def __post_init__(self) -> None:
        if self.max_version < 0:
            kvs = self.kvs
            self.max_version = max(v.version for v in kvs.values()) if kvs else 0

    def get(self, key: str, default: Any = None) -> Any:
        item = self.kvs.get(key)
        return default if item is None else item.value

    def set(self, key: str, value: Any) -> bool:
        """Owner-side write: stamp with the next version. False if unchanged."""
        current = self.kvs.get(key)
        if current is not None and current.value == value:
            return False
        self.max_version += 1
        self.kvs[key] = Versioned(value, self.max_version)
        return True

    def apply(self, kvs: Iterable[KV]) -> bool:
        """Take every key-value newer than what we hold. True if anything changed."""
        changed = False
        for kv in kvs:
            current = self.kvs.get(kv.key)
            if current is None or kv.version > current.version:
                self.kvs[kv.key] = Versioned(kv.value, kv.version)
                self.max_version = max(self.max_version, kv.version)
                changed = True
        return changed

    def newer_than(self, version: int) -> list[KV]:
        """Key-values above ``version``, oldest first (so a truncated prefix is sound)."""
        items = [KV(k, v.value, v.version) for k, v in self.kvs.items() if v.version > version]
        items.sort(key=lambda kv: kv.version)
        return items

    def digest(self) -> DigestEntry:
        return DigestEntry(self.node_id, self.generation, self.heartbeat, self.max_version)

    def copy(self) -> NodeState:
        return NodeState(self.node_id, self.generation, self.heartbeat, dict(self.kvs))

    def merge(self, other: NodeState) -> NodeState:
        """The join of two copies of one node's state (a new object)."""
        if other.generation != self.generation:
            return (self if self.generation > other.generation else other).copy()
        kvs = dict(self.kvs)
        for key, item in other.kvs.items():
            mine = kvs.get(key)
            kvs[key] = item if mine is None else _newer(mine, item)
        return NodeState(self.node_id, self.generation, max(self.heartbeat, other.heartbeat), kvs)


@dataclass(slots=True)
class ClusterState:
    nodes: dict[str, NodeState] = field(default_factory=dict)
    # node id -> highest forgotten generation; state of that generation or older is refused
    forgotten: dict[str, int] = field(default_factory=dict)
    # node id -> its heartbeat when forgotten: the same generation beating past it is alive
    # after all (a partition or a sleep longer than forget_after_s), and comes back
    forgotten_heartbeat: dict[str, int] = field(default_factory=dict)

    def __iter__(self) -> Iterator[NodeState]:
        return iter(self.nodes.values())

    def is_forgotten(self, node_id: str, generation: int) -> bool:
        return generation <= self.forgotten.get(node_id, -1)

    def forget(self, node_id: str) -> None:
        state = self.nodes.pop(node_id, None)
        if state is not None:
            if state.generation >= self.forgotten.get(node_id, -1):
                self.forgotten_heartbeat[node_id] = state.heartbeat
            self.forgotten[node_id] = max(self.forgotten.get(node_id, -1), state.generation)

    def outlived(self, node_id: str, generation: int, heartbeat: int) -> bool:
        """Whether a tombstoned generation has beaten since: it was alive all along."""
        return generation == self.forgotten.get(node_id) and heartbeat > (
            self.forgotten_heartbeat.get(node_id, heartbeat)
        )

    def digest(self) -> list[DigestEntry]:
        # NodeState.digest inlined: this runs for every node in every gossip message.
        entry = DigestEntry
        return [
            entry(n.node_id, n.generation, n.heartbeat, n.max_version) for n in self.nodes.values()
        ]

    def delta_for(
        self,
        digest: Iterable[DigestEntry],
        max_kvs: int,
        rng: random.Random,
        complete: bool = True,
    ) -> list[NodeDelta]:
        """What the owner of ``digest`` lacks, within ``max_kvs`` key-values.

        Only a ``complete`` digest (every node its owner knows) says that a node missing
        from it is lacking; a partial one is answered for the nodes it lists.
        Nodes are visited in random order so a budget that truncates the delta still
        lets every node's state through over successive rounds.
        """
        nodes = self.nodes
        get = nodes.get
        stale: list[tuple[NodeState, int]] = []
        matched = 0
        for theirs in digest:
            node = get(theirs.id)
            if node is None:
                continue
            matched += 1
            # Most entries are in sync: one combined test lets them through quickly.
            if theirs.maxv < node.max_version or theirs.gen != node.generation:
                if theirs.gen < node.generation:
                    stale.append((node, 0))
                elif theirs.gen == node.generation:
                    stale.append((node, theirs.maxv))
            # else: they are as new or newer; heartbeats travel in digests
        if complete and matched < len(nodes):
            seen = {d.id for d in digest}
            stale.extend((node, 0) for node_id, node in nodes.items() if node_id not in seen)
        rng.shuffle(stale)
        out: list[NodeDelta] = []
        budget = max_kvs
        for node, since in stale:
            kvs = node.newer_than(since)[: min(budget, MAX_NODE_KVS)]
            budget -= len(kvs)
            out.append(NodeDelta(node.node_id, node.generation, node.heartbeat, kvs, since))
            if budget <= 0:
                break
        return out

    def apply_delta(self, delta: NodeDelta) -> tuple[NodeState | None, bool]:
        """Merge one node's delta. Returns (state or None if refused, heartbeat advanced)."""
        if self.is_forgotten(delta.id, delta.gen) and not self.outlived(
            delta.id, delta.gen, delta.hb
        ):
            return None, False
        node = self.nodes.get(delta.id)
        if node is None or node.generation < delta.gen:
            if delta.since > 0:
                return None, False  # a partial delta cannot start a node: it would leave a gap
            node = NodeState(delta.id, delta.gen)
            self.nodes[delta.id] = node
        elif node.generation > delta.gen or delta.since > node.max_version:
            return None, False  # older generation, or values between would be missing
        advanced = delta.hb > node.heartbeat
        if advanced:
            node.heartbeat = delta.hb
        node.apply(delta.kvs)
        return node, advanced

    def merge(self, other: ClusterState) -> ClusterState:
        """The join of two cluster views (a new object)."""
        forgotten = dict(self.forgotten)
        for node_id, gen in other.forgotten.items():
            forgotten[node_id] = max(forgotten.get(node_id, -1), gen)
        nodes: dict[str, NodeState] = {}
        for node_id in self.nodes.keys() | other.nodes.keys():
            a, b = self.nodes.get(node_id), other.nodes.get(node_id)
            merged = a.merge(b) if a and b else (a or b)
            assert merged is not None
            if merged.generation > forgotten.get(node_id, -1):
                nodes[node_id] = merged.copy()
        return ClusterState(nodes, forgotten)
