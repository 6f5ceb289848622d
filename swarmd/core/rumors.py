"""What a node tells its peers besides its own heartbeat: bounded, rotating news.

Two kinds of news, each kept "hot" for a number of rounds after this node learned it
and sent in every gossip message meanwhile, a bounded number per message (the least
recently sent first, so a burst goes out in turns):

* **changed nodes**: a node whose key-values or generation this node just learned.
  Its digest entry goes into the digests, and a peer that lacks it asks for the delta.
* **liveness claims** (:class:`~protocol.messages.Claim`): "suspect/dead as of heartbeat
  h" from the node's watchers, "alive as of h" to refute one. A newer claim replaces an
  older one: higher heartbeat first, then dead > suspect > alive.

A claim remembers when its suspicion began (``born``, on this node's clock), so a
forwarded claim carries its age and every node times the suspicion out together.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from protocol.messages import Claim, Verdict

RANK: dict[str, int] = {"alive": 0, "suspect": 1, "dead": 2}


@dataclass(frozen=True, slots=True)
class Belief:
    gen: int
    hb: int
    verdict: Verdict
    born: float  # when the suspicion began, on this node's clock

    @property
    def key(self) -> tuple[int, int]:
        return (self.hb, RANK[self.verdict])

    def claim(self, node_id: str, now: float) -> Claim:
        age_ms = max(0, round((now - self.born) * 1000)) if self.verdict != "alive" else 0
        return Claim(node_id, self.gen, self.hb, self.verdict, age_ms)


class HotSet:
    """Node ids with an expiry; ``take`` hands out the newest first, each ``repeat``
    times in a row, then the least recently taken (a burst goes out in turns)."""

    def __init__(self, repeat: int = 3) -> None:
        self.repeat = repeat
        self._until: OrderedDict[str, float] = OrderedDict()
        self._sent: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._until

    def touch(self, node_id: str, until: float) -> None:
        self._until[node_id] = until
        self._until.move_to_end(node_id, last=False)  # new news goes out first
        self._sent[node_id] = 0

    def discard(self, node_id: str) -> None:
        self._until.pop(node_id, None)
        self._sent.pop(node_id, None)

    def take(self, now: float, limit: int) -> list[str]:
        out: list[str] = []
        until, sent, rotate = self._until, self._sent, []
        for node_id, expiry in until.items():
            if len(out) == limit:
                break
            if expiry < now:
                rotate.append((node_id, False))
                continue
            out.append(node_id)
            sent[node_id] += 1
            if sent[node_id] >= self.repeat:
                rotate.append((node_id, True))
        for node_id, keep in rotate:
            if keep:
                until.move_to_end(node_id)
            else:
                del until[node_id]
                del sent[node_id]
        return out


class Beliefs:
    """The newest liveness claim known about each node, and which are still news."""

    def __init__(self) -> None:
        self.latest: dict[str, Belief] = {}
        self.hot = HotSet()

    def get(self, node_id: str) -> Belief | None:
        return self.latest.get(node_id)

    def is_newer(self, node_id: str, gen: int, hb: int, verdict: str) -> bool:
        current = self.latest.get(node_id)
        if current is None or gen > current.gen:
            return True
        return gen == current.gen and (hb, RANK[verdict]) > current.key

    def judge(
        self, claim: Claim, gen: int, known_hb: int
    ) -> Literal["ignore", "alive", "refute", "suspect", "dead"]:
        """What to make of a claim about a node of generation ``gen`` that we saw beat
        up to ``known_hb``: nothing (old news, or of another generation), believe it,
        or refute it (we saw a beat after the one it is about)."""
        if claim.gen != gen or not self.is_newer(claim.id, claim.gen, claim.hb, claim.verdict):
            return "ignore"  # a new generation comes in a delta; an old one is moot
        if claim.verdict != "alive" and known_hb > claim.hb:
            return "refute"
        return claim.verdict

    def hold(self, node_id: str, belief: Belief, hot_until: float) -> None:
        self.latest[node_id] = belief
        self.hot.touch(node_id, hot_until)

    def forget(self, node_id: str) -> None:
        self.latest.pop(node_id, None)
        self.hot.discard(node_id)

    def news(self, now: float, limit: int) -> list[Claim]:
        latest = self.latest
        return [latest[i].claim(i, now) for i in self.hot.take(now, limit) if i in latest]
