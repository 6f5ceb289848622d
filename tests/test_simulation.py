"""Cluster-scale behaviour of the membership core in the deterministic simulator.

Virtual time only: every run is a pure function of its seed, and no test sleeps. The
measured numbers (rounds to converge, detection and heal times) are printed straight
to the terminal (capsys.disabled(), so without -s too) and repeated in assertion
messages.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from protocol.messages import Claim, Cpu, Gpu, Hardware, Memory, ModelProfile, Syn
from swarmd.core.failure import DetectorConfig, Liveness
from swarmd.core.gossip import GossipConfig
from swarmd.simulator import Network, Simulation

INTERVAL = GossipConfig().interval_s
DETECTOR = DetectorConfig()

# Sizes for the loss and partition runs. A gossip round costs the same per node at any
# N (bounded digests, liveness judged by ring neighbours): the 150-node loss run is ~3 s.
LOSS_NODES = 150
PARTITION_NODES = 200


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n[simulation] {line}", end="")


def ids(sim: Simulation, indices: range) -> set[str]:
    return {sim.node_id(i) for i in indices}


def rounds_until(sim: Simulation, predicate: Callable[[], bool], limit_rounds: int) -> int | None:
    """Gossip rounds (from now) until ``predicate()`` holds, checked after every round."""
    for r in range(1, limit_rounds + 1):
        sim.run_for(INTERVAL)
        if predicate():
            return r
    return None


@pytest.mark.parametrize("n", [25, 50, 100, 200])
def test_convergence_takes_logarithmic_rounds(n: int, capsys: pytest.CaptureFixture[str]) -> None:
    """From every node knowing only node 0 to everybody alive everywhere.

    Node 0 acts as a hub (everyone dials it first), so this takes a few rounds at any N;
    the second half measures the epidemic spread of a value with no hub.
    """
    sim = Simulation(n, seed=n)  # every node knows only node 0 as its seed
    bound = 3 * math.log2(n) + 3
    rounds = rounds_until(sim, sim.converged, math.ceil(bound) + 10)
    report(capsys, f"n={n}: converged in {rounds} rounds (bound {bound:.1f})")
    assert rounds is not None and rounds <= bound, f"n={n}: {rounds} rounds > {bound:.1f}"
    assert sim.count(Liveness.ALIVE) == n * n

    # Epidemic spread of one new value, with no seed acting as a hub any more.
    sim.run_for(1.0)
    writer = sim.nodes[sim.addr(n - 1)]
    writer.set("queue", 42)
    spread_bound = math.log2(n) + 1

    def everyone_has_it() -> bool:
        return all(g.state.nodes[writer.node_id].get("queue") == 42 for g in sim.nodes.values())

    spread = rounds_until(sim, everyone_has_it, math.ceil(spread_bound) + 10)
    report(capsys, f"n={n}: a new value reached everybody in {spread} rounds")
    assert spread is not None and spread <= spread_bound, f"n={n}: spread took {spread} rounds"


def test_twenty_percent_loss_kills_nobody(capsys: pytest.CaptureFixture[str]) -> None:
    n = LOSS_NODES
    sim = Simulation(n, seed=20)
    assert sim.run_until_true(sim.converged, 10.0, INTERVAL)
    sim.network.loss = 0.2
    sent, lost = sim.network.sent, sim.network.lost
    writer = sim.nodes[sim.addr(n // 3)]
    writer.set("queue", 9)
    worst_suspect = 0
    for r in range(50):  # 10 virtual seconds
        sim.run_for(INTERVAL)
        dead = sim.count(Liveness.DEAD)
        assert dead == 0, f"round {r}: {dead} (observer, node) pairs dead under 20% loss"
        worst_suspect = max(worst_suspect, sim.count(Liveness.SUSPECT))
    ratio = (sim.network.lost - lost) / (sim.network.sent - sent)
    report(
        capsys,
        f"n={n}, 20% loss, 10 s: lost {ratio:.1%} of messages, "
        f"0 dead, at most {worst_suspect} suspect pairs at once",
    )
    assert 0.18 < ratio < 0.22
    # Suspicion needs ~1 s (5 rounds) with no fresher heartbeat from any of the ~6
    # exchanges a node takes part in per round: at 20% independent loss, not even that.
    assert worst_suspect == 0
    assert all(len(g.state.nodes) == n for g in sim.nodes.values())
    assert all(g.state.nodes[writer.node_id].get("queue") == 9 for g in sim.nodes.values())


def test_partition_is_detected_and_heals(capsys: pytest.CaptureFixture[str]) -> None:
    n = PARTITION_NODES
    sim = Simulation(n, seed=30)
    assert sim.run_until_true(sim.converged, 10.0, INTERVAL)
    half = n // 2
    west, east = range(half), range(half, n)
    sides = [(west, ids(sim, west), ids(sim, east)), (east, ids(sim, east), ids(sim, west))]

    def split_seen() -> bool:
        for side, own, other in sides:
            for i in side:
                liveness = sim.nodes[sim.addr(i)].liveness  # what its members() would say
                if any(liveness(x) is not Liveness.ALIVE for x in own):
                    return False
                if any(liveness(x) is not Liveness.DEAD for x in other):
                    return False
        return True

    for i in east:
        sim.network.partition[sim.addr(i)] = 1
    # Dead = last heartbeat seen (at most a round or two before the cut) + suspicion onset
    # (mean interval + 0.3 s pause + ~5.2 deviations: ~1-2 s with the jitter of relayed
    # heartbeats) + suspicion_s, + one tick. Bound: 6 s.
    split_bound = 6.0
    rounds = rounds_until(sim, split_seen, math.ceil(split_bound / INTERVAL))
    split_s = None if rounds is None else round(rounds * INTERVAL, 2)
    report(capsys, f"n={n}: every node saw the other half dead after {split_s} s")
    assert split_s is not None, f"split not seen within {split_bound} s"
    assert split_s >= DETECTOR.suspicion_s + 1.0  # the detector is not trigger-happy either

    sim.network.partition.clear()
    # Dead peers are probed each round with probability dead/(live+1), ~1/2 here, and
    # one exchange across carries the heartbeats of the whole other side. Bound: 2 s.
    heal_bound = 2.0
    rounds = rounds_until(sim, sim.converged, math.ceil(heal_bound / INTERVAL))
    heal_s = None if rounds is None else round(rounds * INTERVAL, 2)
    report(capsys, f"n={n}: healed (all alive everywhere) after {heal_s} s")
    assert heal_s is not None, f"partition not healed within {heal_bound} s"


def test_a_partition_longer_than_forget_after_heals() -> None:
    sim = Simulation(20, seed=31, config=GossipConfig(forget_after_s=10.0))
    assert sim.run_until_true(sim.converged, 10.0, INTERVAL)
    for i in range(10, 20):
        sim.network.partition[sim.addr(i)] = 1
    sim.run_for(15.0)
    assert all(len(g.state.nodes) == 10 for g in sim.nodes.values())  # forgotten
    sim.network.partition.clear()
    assert sim.run_until_true(sim.converged, 30.0, INTERVAL)


def test_a_killed_node_is_declared_dead_by_everyone(capsys: pytest.CaptureFixture[str]) -> None:
    n = 50
    sim = Simulation(n, seed=40)
    assert sim.run_until_true(sim.converged, 10.0, INTERVAL)
    sim.run_for(5.0)  # some interval history
    victim = 17
    victim_id = sim.node_id(victim)
    sim.kill(victim)
    killed_at = sim.now

    def all_see_it_dead() -> bool:
        return all(g.liveness(victim_id) is Liveness.DEAD for g in sim.nodes.values())

    # Last heartbeat relayed within ~2 rounds (0.4 s); phi reaches 8 at mean 0.2 s + pause
    # 0.3 s + ~5.2 deviations of 0.1-0.15 s (~1.0-1.3 s); suspicion_s 1.0 s; one tick 0.2 s.
    bound = 0.4 + (0.2 + DETECTOR.acceptable_pause_s + 5.3 * 0.15) + DETECTOR.suspicion_s + 0.2
    step = 0.05
    elapsed = None
    for k in range(1, math.ceil(bound / step) + 1):
        sim.run_for(step)
        if all_see_it_dead():
            elapsed = round(k * step, 2)
            break
        assert sim.count(Liveness.DEAD) == 0
    report(capsys, f"n={n}: a killed node was dead to all {n - 1} others after {elapsed} s")
    assert elapsed is not None, f"not dead everywhere within {bound:.2f} s"
    assert elapsed >= DETECTOR.suspicion_s + 0.9
    assert sim.count(Liveness.DEAD) == 0  # among the running nodes: nobody else
    assert sim.count(Liveness.ALIVE) == (n - 1) ** 2
    assert sim.now - killed_at == pytest.approx(elapsed)


def hardware(i: int) -> Any:
    gpu = Gpu(name="RTX 4090", vram_total=24 << 30, vram_free=(i % 24) << 30, source="nvml")
    hw = Hardware(
        Cpu(cores=8, model="x86"), Memory(total=64 << 30, available=32 << 30), None, [gpu]
    )
    return msgspec.to_builtins(hw)


def test_wire_codec_round_trips_every_message() -> None:
    n = 20
    sim = Simulation(n, seed=50, wire=True)
    for i, g in enumerate(sim.nodes.values()):
        g.set("name", f"box-{i}")
        g.set("hw", hardware(i))
        model = ModelProfile(name="small", model="qwen2.5:1.5b", endpoint="http://x/v1")
        g.set("models", msgspec.to_builtins([model]))
    assert sim.run_until_true(sim.converged, 10.0, INTERVAL)
    sim.run_for(2.0)  # values written before the first exchange
    for g in sim.nodes.values():
        assert g.counters["invalid_state"] == 0
        for i in range(n):
            node = g.state.nodes[sim.node_id(i)]
            assert node.get("name") == f"box-{i}"
            assert node.get("hw") == hardware(i)
            assert node.get("models")[0]["model"] == "qwen2.5:1.5b"
    assert sim.network.sent > 100 * n


def trace(seed: int) -> tuple[list[tuple[float, str, Any]], dict[str, dict[str, Liveness]], int]:
    """Everything observable of a lossy run with a crash, a leave and a restart."""
    sim = Simulation(30, seed=seed, network=Network(loss=0.1))
    events: list[tuple[float, str, Any]] = []
    for step in range(60):
        sim.run_for(INTERVAL)
        if step == 20:
            sim.kill(3)
        if step == 25:
            sim.leave(4)
        if step == 35:
            sim.start(3, seeds=(sim.addr(0),), generation=2)
        for addr, g in sorted(sim.nodes.items()):
            events.extend((sim.now, addr, e) for e in g.drain_events())
    views = {addr: sim.view(addr) for addr in sorted(sim.nodes)}
    return events, views, sim.network.sent


def test_same_seed_same_run() -> None:
    first, second, other = trace(7), trace(7), trace(8)
    assert len(first[0]) > 100  # plenty happened: joins, suspicion, death, leave, restart
    assert first == second
    assert first[0] != other[0]  # and the seed matters


def test_fast_observations_agree_with_members() -> None:
    """converged() and count() skip building Member objects; they must say the same."""

    def converged_by_members(sim: Simulation) -> bool:
        expected = {g.node_id for g in sim.nodes.values()}
        return all(
            {m.node_id for m in g.members(sim.now) if m.liveness is Liveness.ALIVE} == expected
            for g in sim.nodes.values()
        )

    def count_by_members(sim: Simulation, liveness: Liveness) -> int:
        running = {g.node_id for g in sim.nodes.values()}
        return sum(
            m.node_id in running and m.liveness is liveness
            for g in sim.nodes.values()
            for m in g.members(sim.now)
        )

    sim = Simulation(24, seed=60, network=Network(loss=0.05))
    seen: set[tuple[bool, ...]] = set()
    for step in range(80):
        sim.run_for(INTERVAL)
        if step == 20:
            sim.kill(5)
        if step == 30:
            sim.leave(6)
        if step == 45:
            sim.network.partition.update({sim.addr(i): 1 for i in range(12)})
        if step == 60:
            sim.network.partition.clear()
        assert sim.converged() == converged_by_members(sim)
        counts = []
        for liveness in Liveness:
            counts.append(sim.count(liveness))
            assert counts[-1] == count_by_members(sim, liveness), (step, liveness)
        seen.add((sim.converged(), *(c > 0 for c in counts)))
    # The run went through converged and unconverged states, with every liveness.
    assert {s[0] for s in seen} == {True, False}
    assert all(any(s[i] for s in seen) for i in range(1, 5))


def idle_traffic(n: int, rounds: int = 3) -> tuple[float, int]:
    """Bytes per node per round and the largest message of an idle, converged cluster."""
    sim = Simulation(n, seed=70 + n)
    assert sim.run_until_true(sim.converged, 10.0, INTERVAL)
    sim.run_for(6.0)  # the news of N joins has cooled down
    sim.network.count_bytes = True
    sim.run_for(rounds * INTERVAL)
    return sim.network.bytes_sent / n / rounds, sim.network.bytes_max


def test_per_node_traffic_does_not_grow_with_the_cluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Version 1 sent a digest of all N nodes in every message: 8 kB per node per round
    at N = 100, 79 kB at 1,000. Now a digest is bounded (self, watched, hot, sample)."""
    small, small_max = idle_traffic(60)
    large, large_max = idle_traffic(240)
    report(
        capsys,
        f"idle bytes/node/round: {small:.0f} at n=60, {large:.0f} at n=240; "
        f"largest message {small_max} / {large_max} bytes",
    )
    assert large < 1.15 * small, (small, large)
    assert large < 4000
    assert large_max < 1500  # a 240-entry digest alone would be ~4 kB


def test_convergence_and_detection_under_loss(capsys: pytest.CaptureFixture[str]) -> None:
    """From a cold start under 10% loss: everyone meets, then a killed node is found."""
    n = 100
    sim = Simulation(n, seed=80, network=Network(loss=0.1))
    rounds = rounds_until(sim, sim.converged, 30)
    report(capsys, f"n={n}, 10% loss: converged in {rounds} rounds")
    assert rounds is not None and rounds <= 10
    sim.run_for(3.0)
    victim_id = sim.node_id(42)
    sim.kill(42)
    elapsed = None
    for k in range(1, 81):
        sim.run_for(0.05)
        if all(g.liveness(victim_id) is Liveness.DEAD for g in sim.nodes.values()):
            elapsed = round(k * 0.05, 2)
            break
    report(capsys, f"n={n}, 10% loss: killed node dead to all after {elapsed} s")
    assert elapsed is not None and elapsed <= 3.0
    assert sim.count(Liveness.DEAD) == 0  # among the running nodes
    writer = sim.nodes[sim.addr(7)]
    writer.set("queue", 5)
    assert rounds_until(
        sim,
        lambda: all(g.state.nodes[writer.node_id].get("queue") == 5 for g in sim.nodes.values()),
        12,
    )


def test_a_false_suspicion_is_refuted_before_anyone_declares_death() -> None:
    n = 120
    sim = Simulation(n, seed=90)
    assert sim.run_until_true(sim.converged, 10.0, INTERVAL)
    sim.run_for(6.0)
    accuser, accused = sim.nodes[sim.addr(3)], sim.nodes[sim.addr(50)]
    targets = [sim.nodes[sim.addr(i)] for i in (10, 20, 30)]
    # A lying (or confused) member tells a few nodes the accused stopped beating, at the
    # newest heartbeat they know of it (its watchers know a newer one).
    hb = max(t.state.nodes[accused.node_id].heartbeat for t in targets)
    assert hb < accused.own.heartbeat
    claim = Claim(accused.node_id, accused.me.gen, hb, "suspect", 0)
    for target in targets:
        syn = Syn(sender=accuser.me, seq=1, digest=[], complete=False, news=[claim])
        target.receive(syn, sim.now, sim.rng)
    suspects = sim.count(Liveness.SUSPECT, [accused.node_id])
    assert 1 <= suspects <= 3
    for _ in range(20):  # 4 s: several suspicion_s
        sim.run_for(INTERVAL)
        assert sim.count(Liveness.DEAD) == 0
    assert sim.converged()
    assert accused.counters["suspected"] >= 1 or any(
        g.counters["claims_refuted"] for g in sim.nodes.values()
    )
