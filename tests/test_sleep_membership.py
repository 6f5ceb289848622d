"""Sleep is not death, in the membership core: the failure detector, the gossip core
wired by hand (``tests.test_gossip.Wire``), the virtual-time simulation with loss, and
pricing's view of the members.

A node that says ``sleeping`` (logind's PrepareForSleep, in the daemon) is shown
sleeping by every peer at once and stays so while it is silent, however long; it is
never declared dead for that silence, and it is alive again as soon as it says it woke.
A node that vanishes without a word is dead, as before.
"""

from __future__ import annotations

from swarmd.core.failure import FailureDetector, Liveness
from swarmd.core.gossip import GossipConfig, MemberChanged
from swarmd.core.pricing import Demand, PricingConfig, price
from swarmd.peer_view import PricingView
from swarmd.simulator import Network, Simulation
from tests.test_gossip import INTERVAL, Wire, addr, view

SLEEPING, ALIVE, DEAD, SUSPECT = (
    Liveness.SLEEPING,
    Liveness.ALIVE,
    Liveness.DEAD,
    Liveness.SUSPECT,
)


# ------------------------------------------------------------------ the detector


def test_detector_a_sleeping_peer_is_not_judged_and_wakes_only_when_told() -> None:
    d = FailureDetector()
    for i in range(20):
        d.heartbeat("a", i * 0.2)
    assert d.mark_sleeping("a", 4.0) is ALIVE
    assert d.mark_sleeping("a", 4.1) is None  # already
    assert d.update(100.0) == []  # silence is no evidence of anything
    assert d.state("a") is SLEEPING
    assert d.mark_dead("a", 100.0) is None  # nor is a claim of death
    assert d.heartbeat("a", 100.1) is None and d.state("a") is SLEEPING
    assert d.resting() == ["a"]  # forgotten after a while, like the dead
    assert d.revive("a", 101.0) is SLEEPING
    assert d.state("a") is ALIVE and d.resting() == []


def test_detector_a_dead_peer_whose_word_came_late_is_sleeping() -> None:
    d = FailureDetector()
    d.heartbeat("a", 0.0)
    d.mark_dead("a", 5.0)
    assert d.mark_sleeping("a", 6.0) is DEAD
    d.mark_left("b", 1.0)
    assert d.mark_sleeping("b", 2.0) is None  # left is final
    assert d.state("b") is Liveness.LEFT


# ------------------------------------------------------------------ three gossip cores


def three() -> tuple[Wire, float]:
    wire = Wire(seed=3)
    wire.add("a", seeds=(addr("b"),))
    wire.add("b", seeds=(addr("a"),))
    wire.add("c", seeds=(addr("a"),))
    now = wire.run(0.0, 5 * INTERVAL)
    for g in wire.nodes.values():
        assert set(view(g, now).values()) == {ALIVE}, view(g, now)
        g.drain_events()
    return wire, now


def test_sleeping_is_shown_at_once_and_stays_through_a_long_silence() -> None:
    wire, now = three()
    a, b, c = (wire.nodes[addr(n)] for n in "abc")
    wire.deliver(addr("a"), a.sleep(now), now)
    assert b.liveness("a") is SLEEPING and c.liveness("a") is SLEEPING
    assert a.liveness("a") is SLEEPING  # its own view of itself (peers --json, self)
    changes = [e for e in b.drain_events() if isinstance(e, MemberChanged)]
    assert [(e.node_id, e.old, e.new) for e in changes] == [("a", ALIVE, SLEEPING)]

    wire.down.add(addr("a"))  # suspended: not a message in or out
    now = wire.run(now, 30.0)  # far beyond suspect (~1 s) and dead (~1.7 s)
    assert b.liveness("a") is SLEEPING and c.liveness("a") is SLEEPING
    assert view(b, now) == {"a": SLEEPING, "b": ALIVE, "c": ALIVE}
    assert not [e for e in b.drain_events() if isinstance(e, MemberChanged)]
    c.drain_events()

    wire.down.discard(addr("a"))  # woke: one exchange brings it back
    wire.deliver(addr("a"), a.wake(now), now)
    assert b.liveness("a") is ALIVE and c.liveness("a") is ALIVE
    assert a.liveness("a") is ALIVE
    changes = [e for e in c.drain_events() if isinstance(e, MemberChanged)]
    assert [(e.node_id, e.old, e.new) for e in changes] == [("a", SLEEPING, ALIVE)]
    now = wire.run(now, 10.0)  # and it stays alive: its heartbeats are judged again
    assert all(set(view(g, now).values()) == {ALIVE} for g in (a, b, c))


def test_a_node_that_vanishes_without_a_word_is_dead() -> None:
    wire, now = three()
    b = wire.nodes[addr("b")]
    wire.down.add(addr("a"))
    now = wire.run(now, 5.0)
    assert b.liveness("a") is DEAD


def test_a_peer_that_missed_the_word_learns_it_from_another_and_says_sleeping() -> None:
    wire, now = three()
    a, b, c = (wire.nodes[addr(n)] for n in "abc")
    wire.down.add(addr("c"))  # c hears nothing of a's announcement
    wire.deliver(addr("a"), a.sleep(now), now)
    assert b.liveness("a") is SLEEPING
    wire.down = {addr("a")}  # a suspends; c is back
    judged = set()
    for _ in range(round(10.0 / INTERVAL)):
        now += INTERVAL
        wire.round(now)
        judged.add(c.liveness("a"))
    assert c.liveness("a") is SLEEPING, judged  # b's copy of a's state says so
    assert b.liveness("a") is SLEEPING


def test_a_sleeper_forgotten_after_forget_after_is_back_when_it_wakes() -> None:
    """Listed like a dead node: forget_after (60 s default), then tombstoned; a wake
    after that still brings it back at once (it talks in person)."""
    config = GossipConfig(forget_after_s=5.0)
    wire = Wire(seed=5)
    a = wire.add("a", seeds=(addr("b"),), config=config)
    b = wire.add("b", seeds=(addr("a"),), config=config)
    c = wire.add("c", seeds=(addr("a"),), config=config)
    now = wire.run(0.0, 5 * INTERVAL)
    wire.deliver(addr("a"), a.sleep(now), now)
    wire.down.add(addr("a"))
    now = wire.run(now, 4.0)
    assert b.liveness("a") is SLEEPING
    now = wire.run(now, 3.0)
    assert "a" not in view(b, now) and "a" not in view(c, now)
    wire.down.clear()
    wire.deliver(addr("a"), a.wake(now), now)
    assert b.liveness("a") is ALIVE and c.liveness("a") is ALIVE
    now = wire.run(now, 3.0)
    assert all(set(view(g, now).values()) == {ALIVE} for g in (a, b, c))


def test_suspicion_claims_about_a_sleeper_change_nothing() -> None:
    """A watcher that declared it dead before the word reached it spreads `dead`
    claims; peers that know it sleeps keep it sleeping."""
    wire, now = three()
    a, b, c = (wire.nodes[addr(n)] for n in "abc")
    wire.down.add(addr("c"))
    wire.deliver(addr("a"), a.sleep(now), now)
    wire.down = {addr("a"), addr("b")}  # c alone: declares a (and b) dead
    now = wire.run(now, 5.0)
    assert c.liveness("a") is DEAD
    wire.down = {addr("a")}
    for _ in range(round(5.0 / INTERVAL)):
        now += INTERVAL
        wire.round(now)
        assert b.liveness("a") is SLEEPING
    assert c.liveness("a") is SLEEPING


# ------------------------------------------------------------------ simulation, with loss


def test_simulation_sleep_and_wake_under_loss() -> None:
    """20 nodes, 10 % loss: nobody calls the sleeper dead in 40 s of sleep, and
    every node sees it alive within a second of its wake (forget_after, 60 s, is
    longer than this sleep: see the test above for a longer one)."""
    sim = Simulation(20, seed=7, network=Network(loss=0.10))
    assert sim.run_until_true(sim.converged, 30.0, 0.5)
    sleeper = sim.node_id(5)
    sim.sleep(5)
    others = [sim.addr(i) for i in range(20) if i != 5]
    assert sim.run_until_true(
        lambda: all(sim.nodes[x].liveness(sleeper) is SLEEPING for x in others), 5.0, 0.1
    )
    seen: set[Liveness | None] = set()
    for _ in range(40):
        sim.run_for(1.0)
        seen |= {sim.nodes[x].liveness(sleeper) for x in others}
    assert seen == {SLEEPING}, seen
    woke = sim.now
    sim.wake(5)
    assert sim.run_until_true(
        lambda: all(sim.nodes[x].liveness(sleeper) is ALIVE for x in others), 1.0, 0.05
    ), {x: sim.nodes[x].liveness(sleeper) for x in others}
    print(f"sleeper alive on all 19 peers {sim.now - woke:.2f} s after its wake")
    assert sim.run_until_true(sim.converged, 10.0, 0.5)
    assert sim.count(DEAD) == 0 and sim.count(SUSPECT) == 0


# ------------------------------------------------------------------ pricing


def test_pricing_never_places_on_a_sleeper_and_says_why() -> None:
    """Pricing's view built from a peer's members (as the daemon builds it): the
    sleeping node is no candidate, with the reason `sleeping` for `swarmctl explain`."""
    wire, now = three()
    a, b = wire.nodes[addr("a")], wire.nodes[addr("b")]
    for g, name in ((a, "a"), (b, "b"), (wire.nodes[addr("c")], "c")):
        g.set("name", name)
        g.set("slots", 4)
    now = wire.run(now, 3 * INTERVAL)
    view_of_b = PricingView(lambda: b.members(now), {}, lambda: 0)
    before = price(Demand("shell", node="a"), view_of_b.capacities({}), PricingConfig())
    assert before.winner is not None and before.winner.name == "a"

    wire.deliver(addr("a"), a.sleep(now), now)
    placement = price(Demand("shell"), view_of_b.capacities({}), PricingConfig())
    rows = {c.name: c for c in placement.candidates}
    assert rows["a"].why_not == "sleeping"
    assert placement.winner is not None and placement.winner.name != "a"
    pinned = price(Demand("shell", node="a"), view_of_b.capacities({}), PricingConfig())
    assert pinned.winner is None  # a pin waits for the wake

    wire.deliver(addr("a"), a.wake(now), now)
    after = price(Demand("shell", node="a"), view_of_b.capacities({}), PricingConfig())
    assert after.winner is not None and after.winner.name == "a"
