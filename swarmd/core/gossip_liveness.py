"""How the gossip core changes a node's liveness: beats and revivals, a node's own
word that it sleeps, a confirmed crash, forgetting the long gone.

A mixin of :class:`swarmd.core.gossip.Gossip`, kept apart so the protocol machine stays
readable: the attributes below are the Gossip's own.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from .crash import Quarantine
from .digests import DigestMaker, hot_rounds
from .failure import FailureDetector, Liveness
from .gossip_types import Event, GossipConfig, MemberChanged
from .membership import ClusterState
from .roster import Roster
from .rumors import Belief, Beliefs

_ALIVE: Final = Liveness.ALIVE
_SUSPECT: Final = Liveness.SUSPECT
_DEAD: Final = Liveness.DEAD
_LEFT: Final = Liveness.LEFT
_SLEEPING: Final = Liveness.SLEEPING


class GossipLiveness:
    config: GossipConfig
    state: ClusterState
    detector: FailureDetector
    roster: Roster
    beliefs: Beliefs
    digests: DigestMaker
    quarantine: Quarantine
    counters: Counter[str]
    _events: list[Event]
    _rtt: dict[str, float]
    _advanced: dict[str, float]
    _known_addrs: dict[str, str]

    def _hot_until(self, now: float) -> float:
        rounds = hot_rounds(self.config.hot_rounds, len(self.state.nodes))
        return now + rounds * self.config.interval_s

    def crashed(self, node_id: str, generation: int, now: float) -> bool:
        """The transport lost its link to the node and probes found nothing listening at
        its port (:mod:`.crash`): that generation's process is gone, a confirmed
        suspicion. Dead at once, and the claim goes out as news; for a while beats of
        that generation relayed late raise the claim instead of reviving it."""
        node = self.state.nodes.get(node_id)
        liveness = self.detector.state(node_id)
        if node is None or node.generation != generation:
            return False
        if liveness is not _ALIVE and liveness is not _SUSPECT:
            return False
        self.quarantine.hold(node_id, generation, now)
        self._hold(node_id, Belief(generation, node.heartbeat, "dead", now), now)
        self._changed(node_id, self.detector.mark_dead(node_id, now), _DEAD)
        self.counters["crashes_confirmed"] += 1
        return True

    def _quarantined(self, node_id: str, gen: int, hb: int, now: float) -> bool:
        """A beat (or an alive claim) of a crashed generation, heard within its
        quarantine: an old one relayed late. Our dead claim rises to it instead."""
        if not self.quarantine.covers(node_id, gen, now):
            return False
        belief = self.beliefs.get(node_id)
        if belief is not None and belief.hb < hb:
            self._hold(node_id, Belief(gen, hb, "dead", belief.born), now)
        return True

    def _forget_expired(self, now: float) -> None:
        since_of, forget_after_s = self.detector.since, self.config.forget_after_s
        for node_id in self.detector.resting():  # longest resting first
            since = since_of(node_id)
            if since is None or now - since < forget_after_s:
                break
            liveness = self.detector.state(node_id)
            node = self.state.nodes.get(node_id)
            self.state.forget(node_id)
            self.detector.remove(node_id)
            self._drop(node_id)
            if node is not None:
                self._events.append(
                    MemberChanged(
                        node_id, node.get("addr"), node.generation, liveness, None, node.get("name")
                    )
                )

    def _drop(self, node_id: str) -> None:
        self.roster.remove(node_id)
        self.beliefs.forget(node_id)
        self.quarantine.forget(node_id)
        self.digests.forget(node_id)
        self._rtt.pop(node_id, None)
        self._advanced.pop(node_id, None)
        for addr in [a for a, i in self._known_addrs.items() if i == node_id]:
            del self._known_addrs[addr]

    def _hold(self, node_id: str, belief: Belief, now: float) -> None:
        self.beliefs.hold(node_id, belief, self._hot_until(now))

    def _sleeping(self, node_id: str, says_sleeping: bool, now: float) -> None:
        """A node's own word decides whether it sleeps: ``sleeping`` makes it sleeping
        whatever its heartbeats did (alive, suspect, or already dead because the word
        came late); ``sleeping = false`` after that makes it alive again."""
        liveness = self.detector.state(node_id)
        if says_sleeping and liveness is not _SLEEPING:
            old = self.detector.mark_sleeping(node_id, now)
            if old is not None:
                self.beliefs.forget(node_id)
                self._changed(node_id, old, _SLEEPING)
        elif not says_sleeping and liveness is _SLEEPING:
            self._advanced[node_id] = now
            self._revive(node_id, now)

    def _beat(self, node_id: str, gen: int, hb: int, now: float) -> None:
        """Its heartbeat rose to ``hb``: a watched peer's arrival, or a refutation."""
        self._advanced[node_id] = now
        detector = self.detector
        liveness = detector.state(node_id)
        if liveness is _ALIVE:
            if detector.is_watched(node_id):
                detector.heartbeat(node_id, now)
            return
        if liveness is not _SUSPECT and liveness is not _DEAD:
            return
        if self._quarantined(node_id, gen, hb, now):
            return
        belief = self.beliefs.get(node_id)
        if belief is None or belief.gen != gen or hb > belief.hb:
            self._hold(node_id, Belief(gen, hb, "alive", now), now)
            self._revive(node_id, now)

    def _revive(self, node_id: str, now: float) -> None:
        old = self.detector.revive(node_id, now)
        if old is not None:
            self._changed(node_id, old, _ALIVE)

    def _changed(self, node_id: str, old: Liveness | None, new: Liveness) -> None:
        node = self.state.nodes.get(node_id)
        addr = None if node is None else node.get("addr")
        gen = 0 if node is None else node.generation
        self._events.append(MemberChanged(node_id, addr, gen, old, new))
        self._place(node_id)

    def _place(self, node_id: str) -> None:
        """Put a node where it now belongs: live or dead targets, on the ring or off."""
        node = self.state.nodes.get(node_id)
        addr = None if node is None else node.get("addr")
        liveness = self.detector.state(node_id)
        if addr is not None:
            self._known_addrs[addr] = node_id
        alive = liveness is _ALIVE
        # Left nodes are probed like dead ones: one that restarts at its address with
        # nobody to dial (no seeds, no mDNS) is found there, not after forget_after.
        resting = liveness is _DEAD or liveness is _LEFT or liveness is _SLEEPING
        self.roster.update(node_id, addr, alive or liveness is _SUSPECT, alive, resting)
