"""Who to talk to: the live and dead peers to pick from, and the watch ring.

Kept up to date one node at a time as liveness changes, so a gossip round costs the
same at any cluster size (no scan over every member per tick).

The watch ring orders this node and its alive peers by a stable hash of the node id.
Every node pushes its heartbeat to its ``k`` ring successors each round, and judges its
``k`` ring predecessors with the accrual detector: each node is watched by ``k`` others
that hear it every round, directly and relayed by one another. The rest of the cluster
learns of a failure from their claims (see :mod:`swarmd.core.rumors`).
"""

from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass, field


def ring_key(node_id: str) -> int:
    """A node's position on the ring: the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(node_id.encode(), digest_size=8).digest(), "big")


@dataclass
class _Pool:
    """A set of node ids with O(1) add, remove and uniform random sampling."""

    items: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def add(self, item: str) -> None:
        if item not in self.index:
            self.index[item] = len(self.items)
            self.items.append(item)

    def discard(self, item: str) -> None:
        i = self.index.pop(item, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.index[last] = i

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item: object) -> bool:
        return item in self.index

    def sample(self, rng: random.Random, k: int) -> list[str]:
        return rng.sample(self.items, min(k, len(self.items)))


class Roster:
    def __init__(self, me: str) -> None:
        self.me = me
        self.live = _Pool()  # alive or suspect, with an address
        self.dead = _Pool()  # dead or left, with an address: probed now and then
        self.addrs: dict[str, str] = {}  # node id -> address (live, dead and left only)
        self._ring: list[tuple[int, str]] = [(ring_key(me), me)]

    def update(self, node_id: str, addr: str | None, live: bool, alive: bool, dead: bool) -> None:
        """Place one peer: ``live`` = alive or suspect; ``alive`` puts it on the ring;
        ``dead`` (dead or left) makes it one to probe now and then."""
        if node_id == self.me:
            return
        if addr is None:
            live = alive = dead = False
        for pool, member in ((self.live, live), (self.dead, dead)):
            if member:
                pool.add(node_id)
            else:
                pool.discard(node_id)
        if addr is not None and (live or dead):
            self.addrs[node_id] = addr
        else:
            self.addrs.pop(node_id, None)
        entry = (ring_key(node_id), node_id)
        i = bisect.bisect_left(self._ring, entry)
        on_ring = i < len(self._ring) and self._ring[i] == entry
        if alive and not on_ring:
            self._ring.insert(i, entry)
        elif not alive and on_ring:
            del self._ring[i]

    def remove(self, node_id: str) -> None:
        self.update(node_id, None, False, False, False)

    def _around(self, k: int, step: int) -> list[str]:
        ring = self._ring
        n = len(ring)
        k = min(k, n - 1)
        i = bisect.bisect_left(ring, (ring_key(self.me), self.me))
        return [ring[(i + step * j) % n][1] for j in range(1, k + 1)]

    def successors(self, k: int) -> list[str]:
        """The ``k`` alive peers after this node on the ring: they watch it."""
        return self._around(k, 1)

    def predecessors(self, k: int) -> list[str]:
        """The ``k`` alive peers before this node on the ring: it watches them."""
        return self._around(k, -1)

    def targets(
        self,
        rng: random.Random,
        watchers: int,
        fanout: int,
        strangers: list[str],
        contact_probability: float,
    ) -> dict[str, None]:
        """Where this round's Syns go, in order: the ring successors (who watch us), a
        few random live nodes, now and then a dead one (it may be back), and addresses
        not known as any node's yet (``strangers``: all of a few when we know no live
        node, else one now and then)."""
        addrs = self.addrs
        chosen = dict.fromkeys(addrs[i] for i in self.successors(watchers))
        chosen.update(dict.fromkeys(addrs[i] for i in self.live.sample(rng, fanout)))
        dead = self.dead
        if dead and rng.random() < len(dead) / (len(self.live) + 1):
            chosen[addrs[rng.choice(dead.items)]] = None
        if strangers:
            if not self.live:
                chosen.update(dict.fromkeys(rng.sample(strangers, min(len(strangers), 8))))
            elif rng.random() < contact_probability:
                chosen[rng.choice(strangers)] = None
        return chosen
