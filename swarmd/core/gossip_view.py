"""The member view of the gossip core: who is known, in which state, how near.

A mixin of :class:`swarmd.core.gossip.Gossip`, kept apart so the protocol machine stays
readable: the attributes below are the Gossip's own.
"""

from __future__ import annotations

from typing import Final

from .failure import FailureDetector, Liveness
from .gossip_types import Member
from .membership import ClusterState, NodeState

_ALIVE: Final = Liveness.ALIVE
_LEFT: Final = Liveness.LEFT
_SLEEPING: Final = Liveness.SLEEPING


class GossipView:
    state: ClusterState
    own: NodeState
    detector: FailureDetector
    _rtt: dict[str, float]
    _known_addrs: dict[str, str]

    def node_at(self, addr: str) -> str | None:
        """The node known to listen at ``addr``, if any."""
        return self._known_addrs.get(addr)

    def liveness(self, node_id: str) -> Liveness | None:
        if node_id == self.own.node_id:
            if self.own.get("status") == "left":
                return _LEFT
            return _SLEEPING if self.own.get("sleeping") is True else _ALIVE
        return self.detector.state(node_id)

    def members(self, now: float) -> list[Member]:
        out: list[Member] = []
        for node in self.state:
            liveness = self.liveness(node.node_id)
            if liveness is None:
                continue
            if node is self.own:
                out.append(Member(node, liveness, True, None, 0.0))
                continue
            last = self.detector.last_heartbeat(node.node_id)
            out.append(
                Member(
                    node,
                    liveness,
                    False,
                    self._rtt.get(node.node_id),
                    None if last is None else max(0.0, now - last),
                )
            )
        return out
