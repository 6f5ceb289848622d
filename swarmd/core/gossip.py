"""The gossip protocol machine: feed it messages and ticks, it returns messages to send.

One round, started by :meth:`Gossip.tick` towards this node's ring successors and a
few random peers::

    A --Syn(digest_A, news)-------------------> B   B updates heartbeats from digest_A
    A <--SynAck(digest_B, what A lacks, news)-- B   A merges, measures the round trip
    A --Ack(what B lacks, news)---------------> B   B merges

The cost of a round does not grow with the cluster. Beyond ``full_digest_max`` nodes
a digest is a bounded sample: this node, the ring predecessors it watches (their
heartbeats, relayed), nodes that changed lately (:mod:`.rumors`) and a few more in
rotation; B adds its own entries where A's are newer so A's Ack can carry them.
Liveness is not gossiped as every heartbeat to everyone: each node's ``watchers``
ring neighbours (:mod:`.roster`) judge it with the accrual detector, and the rest of
the cluster takes their claims ("suspect as of heartbeat h"), refuted by anyone who
has seen it beat past h. A node's own ``status = left`` makes it left at once, and its
own ``sleeping = true`` sleeping at once (until it says ``sleeping = false``). Dead,
left and sleeping nodes are forgotten after a while and tombstoned so gossip cannot
bring their old generation back.

Sans-I/O: no sockets, no clock, no global randomness. Time and an RNG are arguments,
outgoing messages and membership events are return values.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

from protocol.messages import (
    KV,
    Ack,
    Claim,
    DigestEntry,
    GossipMessage,
    NodeDelta,
    NodeRef,
    Syn,
    SynAck,
    validate_state_value,
)

from .crash import Quarantine
from .digests import DigestMaker, wants
from .failure import FailureDetector, Liveness
from .gossip_liveness import GossipLiveness
from .gossip_types import (
    Event,
    GossipConfig,
    IdentityConflict,
    Member,
    MemberChanged,
    Send,
    _valid_value,
    keeps_identity,
)
from .gossip_view import GossipView
from .membership import ClusterState, NodeState
from .roster import Roster
from .rumors import Belief, Beliefs
from .twins import Conflicts, twin_hint

__all__ = [
    "Event",
    "Gossip",
    "GossipConfig",
    "IdentityConflict",
    "Member",
    "MemberChanged",
    "Send",
    "keeps_identity",
]

# Enum members looked up through their class are slow on Python 3.11 (EnumType has a
# __getattr__): aliases for the comparisons made for every peer on every tick.
_SUSPECT = Liveness.SUSPECT
_DEAD = Liveness.DEAD
_LEFT = Liveness.LEFT
_SLEEPING = Liveness.SLEEPING


class Gossip(GossipLiveness, GossipView):
    def __init__(
        self,
        *,
        node_id: str,
        generation: int,
        boot: int,
        addr: str,
        now: float,
        config: GossipConfig | None = None,
        seeds: tuple[str, ...] = (),
    ) -> None:
        self.config = config or GossipConfig()
        self.me = NodeRef(node_id, generation, boot, addr)
        self.state = ClusterState()
        self.own = NodeState(node_id, generation)
        self.state.nodes[node_id] = self.own
        self.own.set("addr", addr)
        self.own.set("status", "alive")
        self.detector = FailureDetector(self.config.detector, watch_all=False)
        self.roster = Roster(node_id)
        self.beliefs = Beliefs()  # liveness claims
        config = self.config
        self.digests = DigestMaker(
            node_id,
            full_max=config.full_digest_max,
            hot=config.digest_hot,
            sample=config.digest_sample,
        )
        self.counters: Counter[str] = Counter()
        self._contacts: set[str] = set(seeds) - {addr}
        self._known_addrs: dict[str, str] = {addr: node_id}
        self._pending: dict[int, tuple[str, float]] = {}  # in the order sent
        self._rtt: dict[str, float] = {}
        self._advanced: dict[str, float] = {}  # node id -> when its heartbeat last rose
        self._behind = False  # a peer knows many more nodes: send complete digests
        self._own_news = False
        self._seq = 0
        self._events: list[Event] = []
        self.conflicts = Conflicts(self.me, self._events_append)
        self.quarantine = Quarantine(self.config.crash.quarantine_s)
        self._started = now

    # ------------------------------------------------------------ own state

    @property
    def node_id(self) -> str:
        return self.me.id

    def set(self, key: str, value: Any) -> bool:
        """Publish a key-value about this node (validated like any received one)."""
        validate_state_value(key, value)
        before = self.own.max_version
        changed = self.own.set(key, value)
        if changed and not self._own_news:
            self.digests.note_change(self.me.id, before, math.inf)  # given an end at the tick
            self._own_news = True
        return changed

    def add_contact(self, addr: str) -> None:
        """An address where a peer may listen (a --join seed or an mDNS record)."""
        if addr != self.me.addr:
            self._contacts.add(addr)

    def drain_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------ time passes

    def tick(self, now: float, rng: random.Random) -> list[Send]:
        """One gossip round: beat, judge peers, forget the long dead, pick targets."""
        self.own.heartbeat += 1
        if self._own_news:
            self._own_news = False
            self.digests.changed.touch(self.me.id, self._hot_until(now))
        for node_id, old, new in self.detector.update(now):
            self._changed(node_id, old, new)
            node = self.state.nodes.get(node_id)
            if new is _SUSPECT and node is not None:  # our own judgement, as a watcher
                self._hold(node_id, Belief(node.generation, node.heartbeat, "suspect", now), now)
        self._forget_expired(now)
        pending = self._pending
        for seq in [s for s, (_, t) in pending.items() if now - t > 10.0]:
            del pending[seq]
        self._rewatch(now)
        self.digests.next_round(now)

        known, config = self._known_addrs, self.config
        strangers = sorted(c for c in self._contacts if c not in known)
        chosen = self.roster.targets(
            rng, config.watchers, config.fanout, strangers, config.contact_probability
        )
        chosen.update(dict.fromkeys(self.conflicts.twins))
        digest, complete = self._digest()
        self._behind = False  # until a peer shows it again
        news = self._news(now)
        return [self._syn(addr, digest, complete, news, now) for addr in chosen]

    def leave(self, now: float) -> list[Send]:
        """Announce ``left`` to every live peer at once (graceful shutdown)."""
        self.own.set("status", "left")
        return self._announce(now, self._live_addrs())

    def sleep(self, now: float) -> list[Send]:
        """Announce ``sleeping`` to every live peer at once (the machine suspends next):
        they show this node sleeping, not dead, and place nothing on it."""
        self.set("sleeping", True)
        return self._announce(now, self._live_addrs())

    def wake(self, now: float) -> list[Send]:
        """Announce that this node is awake to every member it knows, whatever it thought
        of them before the sleep (they answer with what changed meanwhile)."""
        self.set("sleeping", False)
        addrs = {a for n in self.state if n is not self.own and isinstance(a := n.get("addr"), str)}
        return self._announce(now, sorted(addrs))

    def _live_addrs(self) -> list[str]:
        addrs = self.roster.addrs
        return [addrs[i] for i in self.roster.live.items]

    def _announce(self, now: float, addrs: list[str]) -> list[Send]:
        self.own.heartbeat += 1
        digest, complete = self._digest()
        news = self._news(now)
        return [self._syn(addr, digest, complete, news, now) for addr in addrs]

    def answered(self, seq: int) -> bool:
        """Whether the Syn numbered ``seq`` got its SynAck (or expired)."""
        return seq not in self._pending

    def _syn(
        self, addr: str, digest: list[DigestEntry], complete: bool, news: list[Claim], now: float
    ) -> Send:
        self._seq += 1
        self._pending[self._seq] = (addr, now)
        known = len(self.state.nodes)
        syn = Syn(
            sender=self.me, seq=self._seq, digest=digest, complete=complete, news=news, known=known
        )
        return Send(addr, syn)

    def _rewatch(self, now: float) -> None:
        """Watch exactly the ring predecessors: a newcomer is judged from its last beat."""
        want = self.roster.predecessors(self.config.watchers)
        detector = self.detector
        for node_id in detector.watched:
            if node_id not in want:
                detector.unwatch(node_id)
        for node_id in want:
            if not detector.is_watched(node_id):
                detector.watch(node_id, now, self._advanced.get(node_id))

    # ------------------------------------------------------------ what we tell

    def _digest(self) -> tuple[list[DigestEntry], bool]:
        return self.digests.digest(self.state, self.detector.watched, self._behind)

    def _news(self, now: float) -> list[Claim]:
        return self.beliefs.news(now, self.config.news_max)

    # ------------------------------------------------------------ messages arrive

    def receive(self, message: GossipMessage, now: float, rng: random.Random) -> list[Send]:
        if not self._accept_sender(message):
            if isinstance(message, Syn) and self.conflicts.is_twin(message.sender):
                # Answer a twin (our id, another process) with our bare identity, every
                # time: it then sees the conflict too, whichever of us noticed first.
                return [Send(None, SynAck(sender=self.me, seq=message.seq, digest=[], delta=[]))]
            return []
        max_kvs = self.config.max_delta_kvs
        known = len(self.state.nodes)
        gap = min(self.config.digest_hot, max(2, known // 8))
        if not isinstance(message, Ack) and message.known > known + gap:
            self._behind = True  # hot entries would take too long to fill the gap
        if isinstance(message, Syn):
            self._take_digest(message.digest, now)
            self._take_news(message.news, now)
            delta = self.state.delta_for(message.digest, max_kvs, rng, message.complete)
            delta += twin_hint(self.state, self.own, message.sender, self.counters)
            digest, complete = self._digest()
            if not message.complete:
                delta += self.digests.pushed(self.state, {e.id for e in message.digest})
            if not message.complete or not complete:
                extra = {e.id: e for e in wants(self.state, self.me.id, message.digest)}
                digest = [e for e in digest if e.id not in extra] + list(extra.values())
            reply = SynAck(
                sender=self.me,
                seq=message.seq,
                digest=digest,
                delta=delta,
                complete=complete,
                news=self._news(now),
                known=len(self.state.nodes),
            )
            return [Send(None, reply)]
        if isinstance(message, SynAck):
            pending = self._pending.pop(message.seq, None)
            if pending is not None:
                self._measure_rtt(message.sender.id, now - pending[1])
            else:
                self.counters["stale_synack"] += 1
            self._take_delta(message.delta, now)
            self._take_digest(message.digest, now)
            self._take_news(message.news, now)
            delta = self.state.delta_for(message.digest, max_kvs, rng, message.complete)
            if not message.complete:
                delta += self.digests.pushed(self.state, {e.id for e in message.digest})
            return [Send(None, Ack(sender=self.me, delta=delta, news=self._news(now)))]
        self._take_delta(message.delta, now)
        self._take_news(message.news, now)
        return []

    def _accept_sender(self, message: GossipMessage) -> bool:
        sender = message.sender
        if sender.id != self.me.id:
            if self.state.forgotten.get(sender.id) == sender.gen:
                # It talks to us itself, so it is alive (a partition longer than
                # forget_after healed). Tombstones stop third parties resurrecting
                # stale state, not the node in person: its full state comes next.
                self.state.forgotten[sender.id] = sender.gen - 1
                self.counters["tombstone_lifted"] += 1
            return True
        if sender.boot == self.me.boot:
            self.counters["self_loop"] += 1  # a seed or mDNS record that is this node
            if isinstance(message, Syn):
                # Our own Syn came back: the address we dialed it at is an alias of ours.
                dialed = self._pending.pop(message.seq, None)
                if dialed is not None:
                    self._contacts.discard(dialed[0])
            return False
        self.conflicts.found(sender.addr, sender.gen)
        return False

    def _events_append(self, event: Event) -> None:
        self._events.append(event)

    def _measure_rtt(self, node_id: str, sample: float) -> None:
        old = self._rtt.get(node_id)
        a = self.config.rtt_alpha
        self._rtt[node_id] = sample if old is None else (1 - a) * old + a * sample

    def _take_digest(self, digest: list[DigestEntry], now: float) -> None:
        get, own = self.state.nodes.get, self.own
        my_id, my_gen = self.me.id, self.me.gen
        for entry in digest:
            node = get(entry.id)
            if node is None or entry.hb <= node.heartbeat or node.generation != entry.gen:
                if entry.gen > my_gen and entry.id == my_id:
                    self.conflicts.found("?", entry.gen)
                continue
            if node is own:
                continue
            node.heartbeat = entry.hb
            self._beat(entry.id, entry.gen, entry.hb, now)

    def _take_news(self, news: list[Claim], now: float) -> None:
        for claim in news:
            if claim.id == self.me.id:
                if claim.verdict != "alive" and claim.gen == self.me.gen:
                    self._refute(claim, now)
                continue
            node = self.state.nodes.get(claim.id)
            liveness = self.detector.state(claim.id)
            if node is None or liveness is None or liveness is _LEFT or liveness is _SLEEPING:
                continue  # gone for good, or asleep by its own word: not a matter of claims
            action = self.beliefs.judge(claim, node.generation, node.heartbeat)
            if action == "alive":
                if self._quarantined(claim.id, claim.gen, claim.hb, now):
                    continue
                self._hold(claim.id, Belief(claim.gen, claim.hb, "alive", now), now)
                if claim.hb > node.heartbeat:
                    node.heartbeat, self._advanced[claim.id] = claim.hb, now
                self._revive(claim.id, now)
            elif action == "refute":  # we saw it beat after the accuser did: say so
                self._hold(claim.id, Belief(node.generation, node.heartbeat, "alive", now), now)
                self.counters["claims_refuted"] += 1
            elif action != "ignore":
                born = now - claim.age_ms / 1000
                self._hold(claim.id, Belief(claim.gen, claim.hb, action, born), now)
                old = self.detector.suspect(claim.id, born)
                if old is not None:
                    self._changed(claim.id, old, _SUSPECT)
                old = self.detector.mark_dead(claim.id, now) if action == "dead" else None
                if old is not None:
                    self._changed(claim.id, old, _DEAD)

    def _refute(self, claim: Claim, now: float) -> None:
        """Somebody suspects us: say we are alive, as of a heartbeat above theirs."""
        mine = self.beliefs.get(self.me.id)
        if mine is not None and mine.hb > claim.hb:
            return  # already refuted
        self.own.heartbeat = max(self.own.heartbeat, claim.hb + 1)
        self._hold(self.me.id, Belief(self.me.gen, self.own.heartbeat, "alive", now), now)
        self.counters["suspected"] += 1

    def _take_delta(self, delta: list[NodeDelta], now: float) -> None:
        for nd in delta:
            if nd.id == self.me.id:
                self.conflicts.own_delta(nd)
                continue
            offered = nd
            nd = self._valid(nd)
            before = self.state.nodes.get(nd.id)
            before_gen = None if before is None else before.generation
            before_maxv = -1 if before is None else before.max_version
            before_liveness = self.detector.state(nd.id)
            node, advanced = self.state.apply_delta(nd)
            if node is None:
                continue
            if nd is not offered and offered.kvs:
                # Refused values count as seen, or the sender offers them in every exchange.
                node.max_version = max(node.max_version, max(kv.version for kv in offered.kvs))
            if before_gen is None or node.generation > before_gen:
                self.detector.reset(nd.id, now)
                self.beliefs.forget(nd.id)
                self._advanced[nd.id] = now
                self.digests.note_new(nd.id)
                old = None if before_gen is None else before_liveness
                self._events.append(
                    MemberChanged(nd.id, node.get("addr"), node.generation, old, Liveness.ALIVE)
                )
            elif advanced:
                self._beat(nd.id, node.generation, node.heartbeat, now)
            if node.generation != before_gen or node.max_version != before_maxv:
                floor = 0 if node.generation != before_gen else before_maxv
                self.digests.note_change(nd.id, floor, self._hot_until(now))
            if node.get("status") == "left":
                previous = self.detector.state(nd.id)
                if self.detector.mark_left(nd.id, now):
                    self._changed(nd.id, previous, Liveness.LEFT)
            else:
                self._sleeping(nd.id, node.get("sleeping") is True, now)
            self._place(nd.id)

    def _valid(self, nd: NodeDelta) -> NodeDelta:
        good: list[KV] = []
        for kv in nd.kvs:
            if not _valid_value(kv.key, kv.value):
                self.counters["invalid_state"] += 1
                continue
            good.append(kv)
        return nd if len(good) == len(nd.kvs) else NodeDelta(nd.id, nd.gen, nd.hb, good, nd.since)
