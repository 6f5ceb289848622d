"""Two processes with one node id (a copied state dir), seen by a third node.

Twins that talk to each other see the conflict themselves (:mod:`.gossip` answers a
twin's Syn with its bare identity). Twins of one generation that never dial each
other — no mDNS, both seeded with the same third node — would otherwise merge into
one entry there, one of them invisible, for good: their writes interleave, and a
delta of versions above the twin's own never carries the other's address.

So the third node, seeing a sender whose id and generation it knows at another
address, answers with its whole copy of that node (:func:`twin_hint`); the sender
then dials that address itself every round (:func:`twin_told`), and the usual
exchange between twins has both see the conflict and agree who keeps the id — and
the keeper's new generation replaces the interleaved copy everywhere. A twin that
cannot be reached is decided on alone after ``ALONE_AFTER`` hints.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from protocol.messages import MAX_NODE_KVS, NodeDelta, NodeRef

from .gossip_types import IdentityConflict
from .membership import ClusterState, NodeState

ALONE_AFTER = 10  # hints (about one per gossip round) before deciding without the twin


def twin_hint(
    state: ClusterState, own: NodeState, sender: NodeRef, counters: Counter[str]
) -> list[NodeDelta]:
    """What to add to our answer to ``sender``: if the node we know by its id and
    generation is at another address, our whole copy of it (the address included), so
    the sender sees its twin and the usual identity-conflict resolution follows."""
    node = state.nodes.get(sender.id)
    if node is None or node is own or node.generation != sender.gen:
        return []  # another generation is told apart by the usual deltas
    addr = node.get("addr")
    if addr is None or addr == sender.addr:
        return []
    counters["twin_hints"] += 1
    kvs = node.newer_than(0)[:MAX_NODE_KVS]
    return [NodeDelta(node.node_id, node.generation, node.heartbeat, kvs, 0)]


def twin_told(twins: Counter[str], addr: str) -> bool:
    """A third node told us of a twin at ``addr`` (counted in ``twins``, whose
    addresses the caller dials every round): whether to stop waiting for it."""
    twins[addr] += 1
    return twins[addr] >= ALONE_AFTER


class Conflicts:
    """Identity conflicts of this node (``me``) as gossip reveals them — a twin's own
    message, a newer generation of our id, a twin a third node tells of — each raised
    once per (address, generation) through ``raise_``."""

    def __init__(self, me: NodeRef, raise_: Callable[[IdentityConflict], None]) -> None:
        self.me = me
        self._raise = raise_
        self._seen: set[tuple[str, int]] = set()
        self.twins: Counter[str] = Counter()  # twin address -> times a third node told us

    def is_twin(self, sender: NodeRef) -> bool:
        """Our id from another process (a copied state dir)."""
        return sender.id == self.me.id and sender.boot != self.me.boot

    def found(self, other_addr: str, other_generation: int) -> None:
        key = (other_addr, other_generation)
        if key not in self._seen:
            self._seen.add(key)
            self._raise(IdentityConflict(other_addr, other_generation))

    def own_delta(self, nd: NodeDelta) -> None:
        """Somebody gossips state under our id: a newer generation of it is a conflict;
        one of our generation at another address is a twin a third node told us of."""
        addr = next((kv.value for kv in nd.kvs if kv.key == "addr"), None)
        if nd.gen > self.me.gen:
            self.found(addr if isinstance(addr, str) else "?", nd.gen)
        elif (
            # Dial it (see ``twins``) so both see the conflict and agree who keeps the
            # id; decide alone if it stays silent.
            nd.gen == self.me.gen
            and isinstance(addr, str)
            and addr != self.me.addr
            and twin_told(self.twins, addr)
        ):
            self.found(addr, nd.gen)
