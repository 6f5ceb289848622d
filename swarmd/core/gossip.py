"""The gossip protocol machine: feed it messages and ticks, it returns messages to send.

One round, started by :meth:`Gossip.tick` towards a few random peers::

    A --Syn(digest_A)--------------------> B   B updates heartbeats from digest_A
    A <--SynAck(digest_B, what A lacks)--- B   A merges, measures the round trip
    A --Ack(what B lacks)----------------> B   B merges

Heartbeats travel in digests, key-values in deltas. The failure detector turns
heartbeat arrivals into alive / suspect / dead; a node's own ``status = left`` makes
it left at once. Dead and left nodes are forgotten after a while and tombstoned so
gossip cannot bring their old generation back.

Sans-I/O: no sockets, no clock, no global randomness. Time and an RNG are arguments,
outgoing messages and membership events are return values.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec

from protocol.messages import (
    KV,
    Ack,
    DigestEntry,
    GossipMessage,
    NodeDelta,
    NodeRef,
    Syn,
    SynAck,
    validate_state_value,
)

from .failure import DetectorConfig, FailureDetector, Liveness
from .membership import ClusterState, NodeState

# Enum members looked up through their class are slow on Python 3.11 (EnumType has a
# __getattr__): aliases for the comparisons made for every peer on every tick.
_ALIVE = Liveness.ALIVE
_SUSPECT = Liveness.SUSPECT
_DEAD = Liveness.DEAD
_LEFT = Liveness.LEFT

# Gossiped values are checked on every receipt, and most are scalars that arrive again
# and again (addresses, names, status, counts): a scalar's verdict is remembered. The
# check is a pure function of (key, value), so this changes nothing but the time taken.
_SCALARS: frozenset[type] = frozenset({str, int, float, bool, type(None)})
_SCALAR_VERDICTS_MAX = 65536
_scalar_verdicts: dict[tuple[str, type, Any], bool] = {}


def _valid_value(key: str, value: Any) -> bool:
    """Whether ``validate_state_value(key, value)`` accepts the value."""
    kind = type(value)
    if kind in _SCALARS:
        cache_key = (key, kind, value)
        verdict = _scalar_verdicts.get(cache_key)
        if verdict is not None:
            return verdict
    try:
        validate_state_value(key, value)
        verdict = True
    except msgspec.ValidationError:
        verdict = False
    if kind in _SCALARS:
        if len(_scalar_verdicts) >= _SCALAR_VERDICTS_MAX:
            _scalar_verdicts.clear()
        _scalar_verdicts[cache_key] = verdict
    return verdict


@dataclass(frozen=True, slots=True)
class GossipConfig:
    interval_s: float = 0.2
    fanout: int = 3
    max_delta_kvs: int = 4096
    forget_after_s: float = 60.0
    contact_probability: float = 0.2  # chance per round to dial an address not yet a member
    rtt_alpha: float = 0.2
    detector: DetectorConfig = field(default_factory=DetectorConfig)


@dataclass(frozen=True, slots=True)
class Send:
    """A message to send; ``addr`` None means reply on the channel it came in on."""

    addr: str | None
    message: GossipMessage


@dataclass(frozen=True, slots=True)
class MemberChanged:
    node_id: str
    addr: str | None
    generation: int
    old: Liveness | None  # None: first seen
    new: Liveness | None  # None: forgotten
    name: str | None = None


@dataclass(frozen=True, slots=True)
class IdentityConflict:
    """Another process claims this node's id: a copied state dir."""

    other_addr: str
    other_generation: int


Event = MemberChanged | IdentityConflict


@dataclass(frozen=True, slots=True)
class Member:
    state: NodeState
    liveness: Liveness
    is_self: bool
    rtt_s: float | None
    last_seen_s: float | None

    @property
    def node_id(self) -> str:
        return self.state.node_id


def keeps_identity(my_addr: str, other_addr: str) -> bool:
    """Which of two nodes sharing an id keeps it: both sides agree without talking."""
    return my_addr < other_addr


class Gossip:
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
        self.detector = FailureDetector(self.config.detector)
        self.counters: Counter[str] = Counter()
        self._contacts: set[str] = set(seeds) - {addr}
        self._pending: dict[int, tuple[str, float]] = {}
        self._rtt: dict[str, float] = {}
        self._seq = 0
        self._events: list[Event] = []
        self._conflicts_seen: set[tuple[str, int]] = set()
        self._started = now

    # ------------------------------------------------------------ own state

    @property
    def node_id(self) -> str:
        return self.me.id

    def set(self, key: str, value: Any) -> bool:
        """Publish a key-value about this node (validated like any received one)."""
        validate_state_value(key, value)
        return self.own.set(key, value)

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
        for node_id, old, new in self.detector.update(now):
            self._changed(node_id, old, new)
        self._forget_expired(now)
        for seq in [s for s, (_, t) in self._pending.items() if now - t > 10.0]:
            del self._pending[seq]

        live, dead = self._targets()
        chosen = rng.sample(live, min(self.config.fanout, len(live)))
        if dead and rng.random() < len(dead) / (len(live) + 1):
            chosen.append(rng.choice(dead))
        known = {n.get("addr") for n in self.state} | {self.me.addr}
        strangers = sorted(self._contacts - known)
        if strangers:
            if not live:
                chosen.extend(rng.sample(strangers, min(len(strangers), 8)))
            elif rng.random() < self.config.contact_probability:
                chosen.append(rng.choice(strangers))
        digest = self.state.digest()
        return [self._syn(addr, digest, now) for addr in chosen]

    def leave(self, now: float) -> list[Send]:
        """Announce ``left`` to every live peer at once (graceful shutdown)."""
        self.own.set("status", "left")
        self.own.heartbeat += 1
        live, _ = self._targets()
        digest = self.state.digest()
        return [self._syn(addr, digest, now) for addr in live]

    def answered(self, seq: int) -> bool:
        """Whether the Syn numbered ``seq`` got its SynAck (or expired)."""
        return seq not in self._pending

    def _syn(self, addr: str, digest: list[DigestEntry], now: float) -> Send:
        self._seq += 1
        self._pending[self._seq] = (addr, now)
        return Send(addr, Syn(sender=self.me, seq=self._seq, digest=digest))

    def _targets(self) -> tuple[list[str], list[str]]:
        live: list[str] = []
        dead: list[str] = []
        own, state_of = self.own, self.detector.state
        for node_id, node in self.state.nodes.items():
            addr = node.get("addr")
            if node is own or addr is None:
                continue
            liveness = state_of(node_id)
            if liveness is _ALIVE or liveness is _SUSPECT:
                live.append(addr)
            elif liveness is _DEAD:
                dead.append(addr)
        return live, dead

    def _forget_expired(self, now: float) -> None:
        own, state_of, since_of = self.own, self.detector.state, self.detector.since
        forget_after_s = self.config.forget_after_s
        for node in list(self.state):
            if node is own:
                continue
            liveness = state_of(node.node_id)
            if liveness is not _DEAD and liveness is not _LEFT:
                continue
            since = since_of(node.node_id)
            if since is not None and now - since >= forget_after_s:
                self.state.forget(node.node_id)
                self.detector.remove(node.node_id)
                self._rtt.pop(node.node_id, None)
                self._events.append(
                    MemberChanged(
                        node.node_id,
                        node.get("addr"),
                        node.generation,
                        liveness,
                        None,
                        node.get("name"),
                    )
                )

    # ------------------------------------------------------------ messages arrive

    def receive(self, message: GossipMessage, now: float, rng: random.Random) -> list[Send]:
        if not self._accept_sender(message):
            if isinstance(message, Syn) and self._is_twin(message.sender):
                # Answer a twin (our id, another process) with our bare identity, every
                # time: it then sees the conflict too, whichever of us noticed first.
                return [Send(None, SynAck(sender=self.me, seq=message.seq, digest=[], delta=[]))]
            return []
        if isinstance(message, Syn):
            self._take_digest(message.digest, now)
            delta = self.state.delta_for(message.digest, self.config.max_delta_kvs, rng)
            reply = SynAck(sender=self.me, seq=message.seq, digest=self.state.digest(), delta=delta)
            return [Send(None, reply)]
        if isinstance(message, SynAck):
            pending = self._pending.pop(message.seq, None)
            if pending is not None:
                self._measure_rtt(message.sender.id, now - pending[1])
            else:
                self.counters["stale_synack"] += 1
            self._take_delta(message.delta, now)
            self._take_digest(message.digest, now)
            delta = self.state.delta_for(message.digest, self.config.max_delta_kvs, rng)
            return [Send(None, Ack(sender=self.me, delta=delta))]
        self._take_delta(message.delta, now)
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
        self._conflict(sender.addr, sender.gen)
        return False

    def _is_twin(self, sender: NodeRef) -> bool:
        return sender.id == self.me.id and sender.boot != self.me.boot

    def _conflict(self, other_addr: str, other_generation: int) -> None:
        key = (other_addr, other_generation)
        if key not in self._conflicts_seen:
            self._conflicts_seen.add(key)
            self._events.append(IdentityConflict(other_addr, other_generation))

    def _measure_rtt(self, node_id: str, sample: float) -> None:
        old = self._rtt.get(node_id)
        a = self.config.rtt_alpha
        self._rtt[node_id] = sample if old is None else (1 - a) * old + a * sample

    def _take_digest(self, digest: list[DigestEntry], now: float) -> None:
        get, own = self.state.nodes.get, self.own
        my_id, my_gen = self.me.id, self.me.gen
        heartbeat = self.detector.heartbeat
        for entry in digest:
            node = get(entry.id)
            if node is None or entry.hb <= node.heartbeat or node.generation != entry.gen:
                if entry.gen > my_gen and entry.id == my_id:
                    self._conflict("?", entry.gen)
                continue
            if node is own:
                continue
            node.heartbeat = entry.hb
            revived_from = heartbeat(entry.id, now)  # self._beat(), inlined
            if revived_from is not None:
                self._changed(entry.id, revived_from, _ALIVE)

    def _take_delta(self, delta: list[NodeDelta], now: float) -> None:
        for nd in delta:
            if nd.id == self.me.id:
                self._check_own_delta(nd)
                continue
            offered = nd
            nd = self._valid(nd)
            before = self.state.nodes.get(nd.id)
            before_gen = None if before is None else before.generation
            before_liveness = self.detector.state(nd.id)
            node, advanced = self.state.apply_delta(nd)
            if node is None:
                continue
            if nd is not offered and offered.kvs:
                # Refused values count as seen, or the sender offers them in every exchange.
                node.max_version = max(node.max_version, max(kv.version for kv in offered.kvs))
            if before_gen is None or node.generation > before_gen:
                self.detector.reset(nd.id, now)
                old = None if before_gen is None else before_liveness
                self._events.append(
                    MemberChanged(nd.id, node.get("addr"), node.generation, old, Liveness.ALIVE)
                )
            elif advanced:
                self._beat(nd.id, now)
            if node.get("status") == "left":
                previous = self.detector.state(nd.id)
                if self.detector.mark_left(nd.id, now):
                    self._changed(nd.id, previous, Liveness.LEFT)

    def _check_own_delta(self, nd: NodeDelta) -> None:
        addr = next((kv.value for kv in nd.kvs if kv.key == "addr"), None)
        if nd.gen > self.me.gen or (
            nd.gen == self.me.gen and isinstance(addr, str) and addr != self.me.addr
        ):
            self._conflict(addr if isinstance(addr, str) else "?", nd.gen)

    def _valid(self, nd: NodeDelta) -> NodeDelta:
        good: list[KV] = []
        for kv in nd.kvs:
            if not _valid_value(kv.key, kv.value):
                self.counters["invalid_state"] += 1
                continue
            good.append(kv)
        return nd if len(good) == len(nd.kvs) else NodeDelta(nd.id, nd.gen, nd.hb, good, nd.since)

    def _beat(self, node_id: str, now: float) -> None:
        revived_from = self.detector.heartbeat(node_id, now)
        if revived_from is not None:
            self._changed(node_id, revived_from, Liveness.ALIVE)

    def _changed(self, node_id: str, old: Liveness | None, new: Liveness) -> None:
        node = self.state.nodes.get(node_id)
        addr = None if node is None else node.get("addr")
        gen = 0 if node is None else node.generation
        self._events.append(MemberChanged(node_id, addr, gen, old, new))

    # ------------------------------------------------------------ the view

    def liveness(self, node_id: str) -> Liveness | None:
        if node_id == self.me.id:
            return Liveness.LEFT if self.own.get("status") == "left" else Liveness.ALIVE
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
