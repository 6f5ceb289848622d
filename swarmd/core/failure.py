"""Accrual failure detection with suspicion before death.

Each observed heartbeat arrival feeds a window of inter-arrival times. The suspicion
level phi (Hayashibara et al.; the normal-approximation form Akka and Cassandra use)
says how unlikely the current silence is given that history. The standard deviation
has a floor and an acceptable pause is added to the mean, so a quiet, very regular
peer is not declared suspect after a few milliseconds of jitter.

A peer whose phi crosses the threshold becomes *suspect*; if no heartbeat arrives
for ``suspicion_s`` more it is *dead*. A heartbeat from a suspect or dead peer makes
it alive again. Time is always passed in.

A peer that announced it is going to sleep (a laptop suspending) is *sleeping*
(:meth:`mark_sleeping`): like a dead or left peer it rests and is not judged, but it is
expected back; only :meth:`revive` (its gossip says it woke) makes it alive again.

With ``watch_all=False`` phi is judged only for the peers passed to :meth:`watch` (the
gossip core watches a few ring neighbours); the others change state only when told
(:meth:`suspect`, :meth:`mark_dead`, :meth:`revive`), and a suspect still turns dead
``suspicion_s`` after its suspicion began. :meth:`update` then costs O(watched +
suspects), not O(peers).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final


class Liveness(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"
    SLEEPING = "sleeping"


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    phi_threshold: float = 8.0
    window: int = 100
    min_std_s: float = 0.1
    acceptable_pause_s: float = 0.3
    first_interval_s: float = 0.5  # assumed mean before any interval is measured
    suspicion_s: float = 0.6


@dataclass(slots=True)
class _History:
    last: float
    intervals: deque[float]
    total: float = 0.0
    total_sq: float = 0.0

    def arrival(self, now: float, window: int) -> None:
        """A heartbeat arrived at ``now``: record the interval since the previous one."""
        interval = now - self.last
        if interval < 0.0:
            interval = 0.0
        self.last = now
        intervals = self.intervals
        if len(intervals) == window:
            old = intervals.popleft()
            self.total -= old
            self.total_sq -= old * old
        intervals.append(interval)
        self.total += interval
        self.total_sq += interval * interval

    def mean_std(self, config: DetectorConfig) -> tuple[float, float]:
        """Mean (plus the acceptable pause) and floored deviation of the intervals."""
        n = len(self.intervals)
        if n == 0:
            mean, std = config.first_interval_s, config.first_interval_s / 4
        else:
            mean = self.total / n
            variance = self.total_sq / n - mean * mean
            std = math.sqrt(variance) if variance > 0.0 else 0.0
        floor = config.min_std_s
        return mean + config.acceptable_pause_s, std if std > floor else floor


_MAX_EXPONENT: Final = 700.0  # math.exp overflows just above 709


def phi(elapsed: float, mean: float, std: float) -> float:
    """-log10 of the probability that a heartbeat is still to come after ``elapsed``."""
    y = (elapsed - mean) / std
    exponent = -y * (1.5976 + 0.070566 * y * y)
    if exponent > _MAX_EXPONENT:
        # Far earlier than the mean (a peer with long, regular intervals): math.exp would
        # overflow, and the exact value below already rounds to 0 long before this.
        return 0.0
    e = math.exp(exponent)
    if elapsed > mean:
        return -math.log10(e / (1.0 + e)) if e > 0 else math.inf
    return -math.log10(1.0 - 1.0 / (1.0 + e))


# Module-level aliases: an enum member looked up through its class costs a lot more than
# a global, and these comparisons run for every peer on every heartbeat and tick.
_ALIVE: Final = Liveness.ALIVE
_SUSPECT: Final = Liveness.SUSPECT
_DEAD: Final = Liveness.DEAD
_LEFT: Final = Liveness.LEFT
_SLEEPING: Final = Liveness.SLEEPING


@dataclass(slots=True)
class _Peer:
    history: _History
    state: Liveness = Liveness.ALIVE
    since: float = 0.0  # when the current state began


@dataclass
class FailureDetector:
    config: DetectorConfig = field(default_factory=DetectorConfig)
    watch_all: bool = True
    _peers: dict[str, _Peer] = field(default_factory=dict)
    _watched: dict[str, None] = field(default_factory=dict)  # dicts: a stable order
    _suspects: dict[str, None] = field(default_factory=dict)
    # dead, left or sleeping peers, in the order they became so (for forgetting them)
    _resting: dict[str, None] = field(default_factory=dict)

    def _enter(self, node_id: str, peer: _Peer, state: Liveness, since: float) -> Liveness:
        """Move ``peer`` to ``state`` from ``since``; the previous state."""
        old = peer.state
        peer.state, peer.since = state, since
        if state is _SUSPECT:
            self._suspects[node_id] = None
        else:
            self._suspects.pop(node_id, None)
        if state is _DEAD or state is _LEFT or state is _SLEEPING:
            self._resting.pop(node_id, None)
            self._resting[node_id] = None
        else:
            self._resting.pop(node_id, None)
        return old

    @property
    def watched(self) -> list[str]:
        return list(self._watched)

    def resting(self) -> list[str]:
        """Dead, left and sleeping peers, longest resting first."""
        return list(self._resting)

    def watch(self, node_id: str, now: float, last: float | None = None) -> None:
        """Judge ``node_id`` by phi from now on; its last heartbeat was at ``last``."""
        self._watched[node_id] = None
        peer = self._peers.get(node_id)
        start = now if last is None else min(last, now)
        if peer is None:
            self._peers[node_id] = _Peer(_History(start, deque()), _ALIVE, now)
        else:
            peer.history = _History(start, deque())

    def is_watched(self, node_id: str) -> bool:
        return node_id in self._watched

    def unwatch(self, node_id: str) -> None:
        self._watched.pop(node_id, None)

    def suspect(self, node_id: str, since: float) -> Liveness | None:
        """Told the peer is suspect since ``since``; the previous state if it changed."""
        peer = self._peers.get(node_id)
        if peer is None or peer.state is not _ALIVE:
            return None
        return self._enter(node_id, peer, _SUSPECT, since)

    def mark_dead(self, node_id: str, now: float) -> Liveness | None:
        peer = self._peers.get(node_id)
        if peer is None or peer.state is _DEAD or peer.state is _LEFT or peer.state is _SLEEPING:
            return None
        return self._enter(node_id, peer, _DEAD, now)

    def mark_sleeping(self, node_id: str, now: float) -> Liveness | None:
        """It said it is going to sleep: resting, not judged, expected back. The
        previous state if it changed (a dead peer whose announcement came late too)."""
        peer = self._peers.get(node_id)
        if peer is None:
            peer = self._peers[node_id] = _Peer(_History(now, deque()), _ALIVE, now)
        elif peer.state is _SLEEPING or peer.state is _LEFT:
            return None
        return self._enter(node_id, peer, _SLEEPING, now)

    def revive(self, node_id: str, now: float) -> Liveness | None:
        """Evidence of life beyond a suspicion (or a sleeping peer's word that it woke):
        alive again with a fresh history."""
        peer = self._peers.get(node_id)
        if peer is None or peer.state is _ALIVE or peer.state is _LEFT:
            return None
        peer.history = _History(now, deque())
        return self._enter(node_id, peer, _ALIVE, now)

    def heartbeat(self, node_id: str, now: float) -> Liveness | None:
        """Record a heartbeat arrival. Returns the previous state if this revived the peer."""
        peer = self._peers.get(node_id)
        if peer is None:
            self._peers[node_id] = _Peer(_History(now, deque()), _ALIVE, now)
            return None
        state = peer.state
        if state is _LEFT or state is _SLEEPING:
            return None  # a sleeping peer wakes by saying so (revive), not by beating
        if state is _DEAD:
            # A fresh start: the silence of the outage is not a normal interval.
            peer.history = _History(now, deque())
            return self._enter(node_id, peer, _ALIVE, now)
        peer.history.arrival(now, self.config.window)
        if state is _SUSPECT:
            return self._enter(node_id, peer, _ALIVE, now)
        return None

    def phi(self, node_id: str, now: float) -> float:
        peer = self._peers.get(node_id)
        if peer is None:
            return 0.0
        h = peer.history
        mean, std = h.mean_std(self.config)
        return phi(now - h.last, mean, std)

    def state(self, node_id: str) -> Liveness | None:
        peer = self._peers.get(node_id)
        return None if peer is None else peer.state

    def since(self, node_id: str) -> float | None:
        peer = self._peers.get(node_id)
        return None if peer is None else peer.since

    def last_heartbeat(self, node_id: str) -> float | None:
        peer = self._peers.get(node_id)
        return None if peer is None else peer.history.last

    def mark_left(self, node_id: str, now: float) -> bool:
        peer = self._peers.get(node_id)
        if peer is None:
            peer = self._peers[node_id] = _Peer(_History(now, deque()), _ALIVE, now)
        elif peer.state is _LEFT:
            return False
        self._enter(node_id, peer, _LEFT, now)
        return True

    def update(self, now: float) -> list[tuple[str, Liveness, Liveness]]:
        """Advance suspicion; returns (node, old, new) for every transition."""
        changes: list[tuple[str, Liveness, Liveness]] = []
        config = self.config
        quiet = config.acceptable_pause_s  # below this phi is negligible
        threshold, suspicion_s = config.phi_threshold, config.suspicion_s
        peers = self._peers
        judged = peers.keys() if self.watch_all else self._watched
        for node_id in judged:
            peer = peers.get(node_id)
            if peer is None or peer.state is not _ALIVE:
                continue
            h = peer.history
            elapsed = now - h.last
            if elapsed < quiet:
                continue
            mean, std = h.mean_std(config)
            if phi(elapsed, mean, std) >= threshold:
                self._enter(node_id, peer, _SUSPECT, now)
                changes.append((node_id, _ALIVE, _SUSPECT))
        for node_id in [s for s in self._suspects if now - peers[s].since >= suspicion_s]:
            self._enter(node_id, peers[node_id], _DEAD, now)
            changes.append((node_id, _SUSPECT, _DEAD))
        return changes

    def remove(self, node_id: str) -> None:
        self._peers.pop(node_id, None)
        self._watched.pop(node_id, None)
        self._suspects.pop(node_id, None)
        self._resting.pop(node_id, None)

    def reset(self, node_id: str, now: float) -> None:
        """A new generation of the node: forget its history, alive from now."""
        peer = self._peers[node_id] = _Peer(_History(now, deque()), _ALIVE, now)
        self._enter(node_id, peer, _ALIVE, now)
