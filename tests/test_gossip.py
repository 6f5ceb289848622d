"""The sans-I/O gossip engine, with two or three instances wired by hand.

Messages are passed between the Gossip objects in a loop; time is a float we advance,
randomness a seeded Random. No sockets, no sleeps.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from typing import Any

import msgspec
import pytest

from protocol.messages import Claim, Cpu, GossipMessage, Hardware, Memory, Syn, SynAck
from swarmd.core.failure import Liveness
from swarmd.core.gossip import Event, Gossip, GossipConfig, IdentityConflict, MemberChanged, Send

INTERVAL = GossipConfig().interval_s


def addr(name: str) -> str:
    return f"{name}.lan:7946"


class Wire:
    """Gossip instances by address; delivers messages and their replies instantly."""

    def __init__(self, seed: int = 0) -> None:
        self.nodes: dict[str, Gossip] = {}
        self.rng = random.Random(seed)
        self.down: set[str] = set()  # addresses whose messages vanish (both ways)
        self.delivered: list[tuple[str, str, str]] = []  # (src, dst, message tag)

    def add(
        self,
        name: str,
        *,
        now: float = 0.0,
        seeds: tuple[str, ...] = (),
        generation: int = 1,
        boot: int | None = None,
        config: GossipConfig | None = None,
        node_id: str | None = None,
    ) -> Gossip:
        g = Gossip(
            node_id=node_id or name,
            generation=generation,
            boot=self.rng.getrandbits(32) if boot is None else boot,
            addr=addr(name),
            now=now,
            config=config,
            seeds=seeds,
        )
        self.nodes[g.me.addr] = g
        return g

    def deliver(self, src: str, sends: Iterable[Send], now: float) -> None:
        queue: deque[tuple[str, str, GossipMessage]] = deque(
            (src, s.addr, s.message) for s in sends if s.addr is not None
        )
        while queue:
            frm, to, message = queue.popleft()
            target = self.nodes.get(to)
            if target is None or frm in self.down or to in self.down:
                continue
            self.delivered.append((frm, to, type(message).__name__))
            for reply in target.receive(message, now, self.rng):
                queue.append((to, reply.addr or frm, reply.message))

    def round(self, now: float) -> None:
        for a, g in list(self.nodes.items()):
            if a == g.me.addr and a not in self.down:  # once per node, not per alias
                self.deliver(a, g.tick(now, self.rng), now)

    def run(self, start: float, seconds: float) -> float:
        now = start
        for _ in range(round(seconds / INTERVAL)):
            now += INTERVAL
            self.round(now)
        return now


def view(g: Gossip, now: float) -> dict[str, Liveness]:
    return {m.node_id: m.liveness for m in g.members(now)}


def member_events(events: list[Event]) -> list[tuple[Any, ...]]:
    """(node, addr, generation, old, new) of each MemberChanged: the fields asserted on."""
    return [
        (e.node_id, e.addr, e.generation, e.old, e.new)
        for e in events
        if isinstance(e, MemberChanged)
    ]


def changes(events: list[Event], node_id: str) -> list[tuple[Liveness | None, Liveness | None]]:
    return [(e.old, e.new) for e in events if isinstance(e, MemberChanged) and e.node_id == node_id]


def test_two_nodes_learn_each_other_and_their_key_values() -> None:
    wire = Wire()
    a = wire.add("a", seeds=(addr("b"),))
    b = wire.add("b")  # knows nobody: learns of a when a dials it
    a.set("name", "alpha")
    b.set("queue", 3)
    b.set("draining", True)
    now = wire.run(0.0, 2 * INTERVAL)
    assert view(a, now) == view(b, now) == {"a": Liveness.ALIVE, "b": Liveness.ALIVE}
    assert a.state.nodes["b"].get("queue") == 3 and a.state.nodes["b"].get("draining") is True
    assert b.state.nodes["a"].get("name") == "alpha"
    assert b.state.nodes["a"].get("addr") == addr("a")
    a_events, b_events = a.drain_events(), b.drain_events()
    assert member_events(a_events) == [("b", addr("b"), 1, None, Liveness.ALIVE)]
    assert member_events(b_events) == [("a", addr("a"), 1, None, Liveness.ALIVE)]
    assert len(a_events) == len(b_events) == 1

    # A later write travels in the next round; heartbeats keep both alive for a minute.
    b.set("queue", 4)
    now = wire.run(now, INTERVAL)
    assert a.state.nodes["b"].get("queue") == 4
    now = wire.run(now, 60.0)
    assert view(a, now) == view(b, now) == {"a": Liveness.ALIVE, "b": Liveness.ALIVE}
    assert a.drain_events() == b.drain_events() == []
    assert a.state.nodes["b"].heartbeat == b.own.heartbeat


def test_three_nodes_meet_through_one_seed() -> None:
    wire = Wire(seed=3)
    a = wire.add("a")
    b = wire.add("b", seeds=(addr("a"),))
    c = wire.add("c", seeds=(addr("a"),))
    for g in (a, b, c):
        g.set("name", f"name-{g.node_id}")
    now = wire.run(0.0, 5 * INTERVAL)
    everyone = {"a": Liveness.ALIVE, "b": Liveness.ALIVE, "c": Liveness.ALIVE}
    for g in (a, b, c):
        assert view(g, now) == everyone
        for other in (a, b, c):
            assert g.state.nodes[other.node_id].get("name") == f"name-{other.node_id}"
    # b and c never had each other's address: they got it by gossip, then talked directly.
    assert (addr("b"), addr("c"), "Syn") in wire.delivered
    assert (addr("c"), addr("b"), "Syn") in wire.delivered


def test_round_trip_time_is_measured_from_syn_to_synack() -> None:
    wire = Wire()
    a = wire.add("a", seeds=(addr("b"),))
    b = wire.add("b")
    rng = random.Random(1)

    def exchange(sent: float, answered: float) -> None:
        (syn,) = a.tick(sent, rng)
        assert syn.addr == addr("b") and isinstance(syn.message, Syn)
        (synack,) = b.receive(syn.message, sent + 0.001, rng)
        assert synack.addr is None
        (ack,) = a.receive(synack.message, answered, rng)
        assert b.receive(ack.message, answered + 0.001, rng) == []

    exchange(10.0, 10.05)
    (member,) = [m for m in a.members(10.05) if m.node_id == "b"]
    assert member.rtt_s == pytest.approx(0.05)
    exchange(10.2, 10.35)  # a 0.15 s sample moves the average by rtt_alpha = 0.2
    (member,) = [m for m in a.members(10.4) if m.node_id == "b"]
    assert member.rtt_s == pytest.approx(0.8 * 0.05 + 0.2 * 0.15)
    # b never ticked, so its heartbeat has not moved since a first saw it at 10.05.
    assert member.last_seen_s == pytest.approx(10.4 - 10.05)
    assert not member.is_self and member.liveness is Liveness.ALIVE
    (me,) = [m for m in a.members(10.4) if m.is_self]
    assert (me.node_id, me.rtt_s, me.last_seen_s) == ("a", None, 0.0)
    # b answered but never asked: it has no round trip to a.
    (other,) = [m for m in b.members(10.4) if m.node_id == "a"]
    assert other.rtt_s is None

    # A SynAck for a Syn we never sent (or long expired) is used, but times nothing.
    (syn,) = b.tick(11.0, rng)
    (synack,) = a.receive(syn.message, 11.0, rng)
    b.receive(synack.message, 11.1, rng)
    b.receive(synack.message, 11.2, rng)  # duplicated by the network
    assert b.counters["stale_synack"] == 1


def test_leave_is_seen_after_one_exchange() -> None:
    wire = Wire(seed=5)
    a = wire.add("a")
    b = wire.add("b", seeds=(addr("a"),))
    c = wire.add("c", seeds=(addr("a"),))
    now = wire.run(0.0, 5 * INTERVAL)
    assert all(len(view(g, now)) == 3 for g in (a, b, c))
    for g in (a, b, c):
        g.drain_events()

    wire.delivered.clear()
    now += 0.05
    sends = a.leave(now)
    assert sorted(s.addr for s in sends if s.addr) == [addr("b"), addr("c")]
    wire.deliver(addr("a"), sends, now)
    # Exactly Syn -> SynAck -> Ack with each peer, nothing else.
    assert sorted(wire.delivered) == sorted(
        [
            (addr("a"), addr("b"), "Syn"),
            (addr("b"), addr("a"), "SynAck"),
            (addr("a"), addr("b"), "Ack"),
            (addr("a"), addr("c"), "Syn"),
            (addr("c"), addr("a"), "SynAck"),
            (addr("a"), addr("c"), "Ack"),
        ]
    )
    for g in (b, c):
        assert g.liveness("a") is Liveness.LEFT
        assert changes(g.drain_events(), "a") == [(Liveness.ALIVE, Liveness.LEFT)]
    assert a.liveness("a") is Liveness.LEFT
    # Left stays left (no suspicion, no death) until it is forgotten.
    wire.down.add(addr("a"))
    now = wire.run(now, 10.0)
    for g in (b, c):
        assert view(g, now)["a"] is Liveness.LEFT
        assert changes(g.drain_events(), "a") == []


def test_restart_with_a_new_generation_supersedes_the_old_state() -> None:
    wire = Wire(seed=7)
    a = wire.add("a")
    b = wire.add("b", seeds=(addr("a"),))
    b.set("queue", 7)
    b.set("name", "old")
    for i in range(20):
        b.set("queue", i)  # push the old max version well above what the new one will have
    now = wire.run(0.0, 3.0)
    assert a.state.nodes["b"].get("queue") == 19
    a.drain_events()

    wire.down.add(addr("b"))  # b crashes
    now = wire.run(now, 3.0)
    assert a.liveness("b") is Liveness.DEAD
    assert changes(a.drain_events(), "b") == [
        (Liveness.ALIVE, Liveness.SUSPECT),
        (Liveness.SUSPECT, Liveness.DEAD),
    ]

    wire.down.discard(addr("b"))
    b2 = wire.add("b", now=now, seeds=(addr("a"),), generation=2)
    b2.set("name", "new")
    assert b2.own.max_version < a.state.nodes["b"].max_version
    now += INTERVAL
    wire.deliver(addr("b"), b2.tick(now, wire.rng), now)
    node = a.state.nodes["b"]
    assert node.generation == 2
    assert node.get("name") == "new"
    assert node.get("queue") is None  # nothing of the old generation survives
    assert member_events(a.drain_events()) == [("b", addr("b"), 2, Liveness.DEAD, Liveness.ALIVE)]
    # The detector started over: no history, alive since the restart was seen.
    assert a.liveness("b") is Liveness.ALIVE
    assert a.detector.since("b") == a.detector.last_heartbeat("b") == now
    now = wire.run(now, 5.0)
    assert view(a, now) == view(b2, now) == {"a": Liveness.ALIVE, "b": Liveness.ALIVE}


def test_another_process_with_our_id_is_a_conflict() -> None:
    wire = Wire()
    a = wire.add("a", boot=1111)
    twin = Gossip(node_id="a", generation=1, boot=2222, addr=addr("twin"), now=0.0)
    rng = random.Random(0)
    syn = Syn(sender=twin.me, seq=1, digest=twin.state.digest())
    bare = SynAck(sender=a.me, seq=1, digest=[], delta=[])
    assert a.receive(syn, 1.0, rng) == [Send(None, bare)]
    assert a.receive(syn, 1.2, rng) == [Send(None, bare)]  # answered every time
    assert a.drain_events() == [IdentityConflict(addr("twin"), 1)]  # reported once
    # The bare answer tells the twin too, whichever of the two noticed first.
    assert twin.receive(bare, 1.3, rng) == []
    assert twin.drain_events() == [IdentityConflict(addr("a"), 1)]
    # A restarted twin (new generation) is reported again.
    twin2 = Gossip(node_id="a", generation=5, boot=3333, addr=addr("twin"), now=0.0)
    a.receive(Syn(sender=twin2.me, seq=1, digest=[]), 1.4, rng)
    assert a.drain_events() == [IdentityConflict(addr("twin"), 5)]
    # A third node that has heard of a newer generation of us tells us indirectly.
    b = wire.add("b")
    digest = [*b.state.digest(), twin2.own.digest()]
    a.receive(Syn(sender=b.me, seq=1, digest=digest), 1.6, rng)
    assert a.drain_events() == [IdentityConflict("?", 5)]
    assert a.state.nodes["a"] is a.own and a.own.generation == 1


def test_a_syn_from_ourselves_is_dropped_and_counted() -> None:
    wire = Wire()
    a = wire.add("a")
    rng = random.Random(0)
    syn = Syn(sender=a.me, seq=1, digest=a.state.digest())
    assert a.receive(syn, 1.0, rng) == []
    assert a.counters["self_loop"] == 1
    assert a.drain_events() == []
    assert view(a, 1.0) == {"a": Liveness.ALIVE}


def test_a_seed_that_is_ourselves_is_counted_as_a_self_loop() -> None:
    """--join 127.0.0.1:7946 on the node listening there: it dials itself."""
    wire = Wire()
    a = wire.add("a", seeds=("127.0.0.1:7946",))
    wire.nodes["127.0.0.1:7946"] = a  # the alias reaches the same process
    now = wire.run(0.0, INTERVAL)
    assert a.counters["self_loop"] >= 1
    assert view(a, now) == {"a": Liveness.ALIVE}


def test_a_seed_that_is_ourselves_is_not_dialed_again() -> None:
    wire = Wire()
    a = wire.add("a", seeds=("127.0.0.1:7946",))
    wire.nodes["127.0.0.1:7946"] = a
    now = wire.run(0.0, INTERVAL)
    assert a.counters["self_loop"] == 1
    wire.run(now, 10.0)
    assert a.counters["self_loop"] == 1


def test_a_malformed_hardware_value_is_dropped_and_the_rest_applied() -> None:
    wire = Wire()
    a = wire.add("a", seeds=(addr("b"),))
    b = wire.add("b")
    good_hw = msgspec.to_builtins(Hardware(Cpu(cores=8), Memory(total=16, available=8)))
    b.set("hw", good_hw)
    # A buggy or hostile peer: bypass validation on its side.
    b.own.set("hw", {"cpu": "eight", "memory": None})
    b.own.set("draining", "yes please")
    b.own.set("queue", 5)
    now = wire.run(0.0, 5 * INTERVAL)
    node = a.state.nodes["b"]
    assert node.get("queue") == 5
    assert node.get("hw") is None and node.get("draining") is None
    # Refused once each: a's max version for b moved past them with "queue".
    assert a.counters["invalid_state"] == 2
    assert a.liveness("b") is Liveness.ALIVE
    # Fixed values flow again.
    b.set("hw", good_hw)
    wire.run(now, INTERVAL)
    assert a.state.nodes["b"].get("hw") == good_hw
    assert a.counters["invalid_state"] == 2
    with pytest.raises(msgspec.ValidationError):
        b.set("hw", {"cpu": "eight"})  # our own writes are validated up front


def test_a_malformed_newest_value_is_refused_once() -> None:
    wire = Wire()
    a = wire.add("a", seeds=(addr("b"),))
    b = wire.add("b")
    b.own.set("hw", {"cpu": "eight"})
    wire.run(0.0, 10.0)
    assert a.state.nodes["b"].get("hw") is None
    assert a.counters["invalid_state"] == 1


def test_dead_nodes_are_forgotten_and_not_resurrected_by_old_gossip() -> None:
    wire = Wire(seed=11)
    forgetful = GossipConfig(forget_after_s=5.0)
    patient = GossipConfig(forget_after_s=3600.0)
    a = wire.add("a", config=forgetful)
    b = wire.add("b", seeds=(addr("a"),), config=patient)
    c = wire.add("c", seeds=(addr("a"),), config=patient)
    now = wire.run(0.0, 2.0)
    assert all(len(view(g, now)) == 3 for g in (a, b, c))
    a.drain_events()

    wire.down.add(addr("c"))
    now = wire.run(now, 4.0)
    assert a.liveness("c") is b.liveness("c") is Liveness.DEAD
    dead_since = a.detector.since("c")
    assert dead_since is not None
    now = wire.run(now, 5.0)
    assert "c" not in a.state.nodes and a.liveness("c") is None
    assert a.state.forgotten == {"c": 1}
    events = a.drain_events()
    assert changes(events, "c") == [
        (Liveness.ALIVE, Liveness.SUSPECT),
        (Liveness.SUSPECT, Liveness.DEAD),
        (Liveness.DEAD, None),
    ]
    assert ("c", addr("c"), 1, Liveness.DEAD, None) in member_events(events)

    # b still holds c (dead) and offers it in every exchange; a keeps refusing it.
    assert b.liveness("c") is Liveness.DEAD
    now = wire.run(now, 10.0)
    assert "c" not in a.state.nodes and "c" not in view(a, now)
    assert changes(a.drain_events(), "c") == []

    # c comes back as a new generation: that is a new member, welcome.
    wire.down.discard(addr("c"))
    c2 = wire.add("c", now=now, seeds=(addr("a"),), generation=2, config=patient)
    now = wire.run(now, 1.0)
    assert (
        view(a, now)
        == view(c2, now)
        == {
            "a": Liveness.ALIVE,
            "b": Liveness.ALIVE,
            "c": Liveness.ALIVE,
        }
    )
    assert a.state.nodes["c"].generation == 2
    assert changes(a.drain_events(), "c") == [(None, Liveness.ALIVE)]


def test_claims_suspect_refute_and_revive() -> None:
    """A suspect claim is taken, refuted by the accused, and the refutation revives it."""
    wire = Wire(seed=13)
    a = wire.add("a")
    b = wire.add("b", seeds=(addr("a"),))
    c = wire.add("c", seeds=(addr("a"),))
    now = wire.run(0.0, 2.0)
    for g in (a, b, c):
        g.drain_events()
    rng = random.Random(0)
    hb = a.state.nodes["c"].heartbeat

    def news(*claims: Claim) -> Syn:
        return Syn(sender=b.me, seq=99, digest=[], complete=False, news=list(claims))

    # Claims about an unknown node, or another generation of a known one: ignored.
    a.receive(news(Claim("zed", 1, 5, "suspect"), Claim("c", 7, hb, "dead")), now, rng)
    assert a.liveness("c") is Liveness.ALIVE and "zed" not in a.state.nodes
    # Below the heartbeat a already saw: a refutes it instead of believing it.
    a.receive(news(Claim("c", 1, hb - 1, "suspect")), now, rng)
    assert a.liveness("c") is Liveness.ALIVE and a.counters["claims_refuted"] == 1
    # At the newest heartbeat a knows, 0.4 s old: suspect since then, not dead yet.
    a.receive(news(Claim("c", 1, hb, "suspect", 400)), now, rng)
    assert a.liveness("c") is Liveness.SUSPECT
    assert a.detector.since("c") == pytest.approx(now - 0.4)
    assert changes(a.drain_events(), "c") == [(Liveness.ALIVE, Liveness.SUSPECT)]
    # The claim travels to c, which answers alive at a heartbeat above it.
    (syn,) = [s for s in a.tick(now + 0.01, rng) if s.addr == addr("c")]
    assert isinstance(syn.message, Syn)
    assert Claim("c", 1, hb, "suspect", 410) in syn.message.news
    (synack,) = c.receive(syn.message, now + 0.01, rng)
    assert c.counters["suspected"] == 1
    assert isinstance(synack.message, SynAck)
    (alive,) = [x for x in synack.message.news if x.id == "c"]
    assert alive.verdict == "alive" and alive.hb > hb
    a.receive(synack.message, now + 0.02, rng)
    assert a.liveness("c") is Liveness.ALIVE
    assert changes(a.drain_events(), "c") == [(Liveness.SUSPECT, Liveness.ALIVE)]
    now = wire.run(now, 3.0)
    assert all(view(g, now) == {k: Liveness.ALIVE for k in "abc"} for g in (a, b, c))


def test_a_dead_claim_is_dead_at_once() -> None:
    wire = Wire(seed=14)
    a = wire.add("a")
    wire.add("b", seeds=(addr("a"),))
    now = wire.run(0.0, 1.0)
    a.drain_events()
    hb = a.state.nodes["b"].heartbeat
    relay = wire.add("c")  # a third party passes the claim on
    claim = Claim("b", 1, hb, "dead")
    a.receive(Syn(sender=relay.me, seq=9, digest=[], complete=False, news=[claim]), now, wire.rng)
    assert a.liveness("b") is Liveness.DEAD
    assert changes(a.drain_events(), "b") == [
        (Liveness.ALIVE, Liveness.SUSPECT),
        (Liveness.SUSPECT, Liveness.DEAD),
    ]
    # b is not dead: its next beat revives it.
    now = wire.run(now, 2 * INTERVAL)
    assert a.liveness("b") is Liveness.ALIVE
