"""The gossip core finds a restarted seedless node, and twins that never dial each other.

Instances wired by hand (``tests.test_gossip.Wire``): no sockets, no sleeps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from protocol.messages import GossipMessage
from swarmd.core.failure import Liveness
from swarmd.core.gossip import Gossip, IdentityConflict, Send
from swarmd.core.twins import ALONE_AFTER
from tests.test_gossip import INTERVAL, Wire, addr


def test_a_seedless_node_that_left_and_restarted_is_found_at_its_address() -> None:
    """No seeds, no mDNS: after a restart it knows nobody, so its peers must dial it."""
    wire = Wire(seed=11)
    a = wire.add("a")  # seedless
    b = wire.add("b", seeds=(addr("a"),))
    c = wire.add("c", seeds=(addr("b"),))  # never had a's address but from gossip
    now = wire.run(0.0, 5 * INTERVAL)
    assert all(g.liveness("a") is Liveness.ALIVE for g in (b, c))

    now += INTERVAL
    wire.deliver(addr("a"), a.leave(now), now)  # SIGTERM: left at once
    assert b.liveness("a") is c.liveness("a") is Liveness.LEFT
    a2 = wire.add("a", now=now, generation=2)  # restarted, still seedless
    rounds = 0
    while not all(g.liveness("a") is Liveness.ALIVE for g in (b, c)):
        rounds += 1
        assert rounds <= 15, f"not back after {rounds - 1} rounds (forget_after is 60 s)"
        now += INTERVAL
        wire.round(now)
    print(f"a restarted: alive again on b and c after {rounds} rounds")
    assert b.state.nodes["a"].generation == c.state.nodes["a"].generation == 2
    assert {m.node_id for m in a2.members(now)} == {"a", "b", "c"}


class CutWire(Wire):
    """A Wire where some pairs of addresses cannot reach each other (both ways)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.cut: set[frozenset[str]] = set()

    def deliver(self, src: str, sends: Iterable[Send], now: float) -> None:
        queue: deque[tuple[str, str, GossipMessage]] = deque(
            (src, s.addr, s.message) for s in sends if s.addr is not None
        )
        while queue:
            frm, to, message = queue.popleft()
            target = self.nodes.get(to)
            if target is None or frozenset((frm, to)) in self.cut:
                continue
            self.delivered.append((frm, to, type(message).__name__))
            for reply in target.receive(message, now, self.rng):
                queue.append((to, reply.addr or frm, reply.message))


def twins(wire: Wire) -> tuple[Gossip, Gossip, Gossip]:
    """A state dir copied: a and b share id "x" and generation; both seeded with c."""
    c = wire.add("c")
    a = wire.add("a", node_id="x", seeds=(addr("c"),))
    b = wire.add("b", node_id="x", seeds=(addr("c"),))
    for g, name in ((a, "a"), (b, "b"), (c, "c")):
        g.set("name", name)
    return a, b, c


def conflicts(g: Gossip) -> list[IdentityConflict]:
    return [e for e in g.drain_events() if isinstance(e, IdentityConflict)]


def test_twins_of_one_generation_told_by_a_third_node_dial_each_other() -> None:
    wire = Wire(seed=2)
    a, b, c = twins(wire)
    now, rounds = 0.0, 0
    seen: dict[str, list[IdentityConflict]] = {"a": [], "b": []}
    while not (seen["a"] and seen["b"]):
        rounds += 1
        assert rounds <= 10, f"twins not told within 10 rounds: {seen}"
        now += INTERVAL
        wire.round(now)
        seen["a"] += conflicts(a)
        seen["b"] += conflicts(b)
    print(f"both twins saw the conflict after {rounds} rounds")
    # Each learnt the other's address: Membership lets exactly one keep the id.
    assert seen == {"a": [IdentityConflict(addr("b"), 1)], "b": [IdentityConflict(addr("a"), 1)]}
    assert c.counters["twin_hints"] >= 1
    # They met directly, which is what told the one that was not hinted.
    assert {(addr("a"), addr("b"), "Syn"), (addr("b"), addr("a"), "Syn")} & set(wire.delivered)


def test_a_twin_that_cannot_be_reached_is_decided_on_alone() -> None:
    wire = CutWire(seed=4)
    a, b, _ = twins(wire)
    wire.cut.add(frozenset((addr("a"), addr("b"))))
    now, told = 0.0, []
    for _ in range(4 * ALONE_AFTER):
        now += INTERVAL
        wire.round(now)
        told += conflicts(a) + conflicts(b)
        if told:
            break
    assert told and told[0].other_addr in (addr("a"), addr("b")), told
