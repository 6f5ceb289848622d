"""Pricing: feasibility, estimated-finish scores, the candidate table."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from protocol.messages import Battery, Cpu, Gpu, Hardware, Memory, ModelProfile
from swarmd.core.pricing import (
    Candidate,
    Demand,
    GiB,
    ModelOffer,
    PeerCapacity,
    Placement,
    PricingConfig,
    ThroughputTracker,
    estimate_llm_tokens,
    explain_table,
    peer_from_gossip,
    price,
    reprice,
)
from tests.capacity import peer

CONFIG = PricingConfig()


def offer(name: str = "fast", **kw: Any) -> ModelOffer:
    fields: dict[str, Any] = {
        "model": f"model-{name}",
        "capabilities": frozenset({"lint"}),
        "max_concurrency": 2,
        "cost_per_mtok": 0.0,
        "latency_ms": None,
        "tokens_per_s": None,
    }
    fields.update(kw)
    return ModelOffer(name=name, **fields)


def by_name(placement: Placement) -> dict[str, Candidate]:
    return {c.name: c for c in placement.candidates}


# ---------------------------------------------------------------- examples


def test_min_vram_goes_only_to_the_24_gib_gpu() -> None:
    peers = [
        peer("small", gpus_vram_total=(8 * GiB,), gpus_vram_free=(8 * GiB,)),
        peer("big", gpus_vram_total=(8 * GiB, 24 * GiB), gpus_vram_free=(8 * GiB, 22 * GiB)),
        peer("cpu"),
        peer("busy", gpus_vram_total=(24 * GiB,), gpus_vram_free=(10 * GiB,)),
    ]
    placement = price(Demand("shell", min_vram=16 * GiB), peers, CONFIG)
    assert placement.winner is not None
    assert placement.winner.name == "big"
    rows = by_name(placement)
    assert rows["small"].why_not == "needs 16.0 GiB VRAM, largest free 8.0 GiB"
    assert rows["busy"].why_not == "needs 16.0 GiB VRAM, largest free 10.0 GiB"
    assert rows["cpu"].why_not == "needs 16.0 GiB VRAM, no GPU"
    assert [c.feasible for c in placement.candidates] == [True, False, False, False]


def test_min_vram_is_per_gpu_not_summed() -> None:
    two_small = peer("two", gpus_vram_total=(12 * GiB,) * 2, gpus_vram_free=(12 * GiB,) * 2)
    placement = price(Demand("llm", min_vram=16 * GiB), [two_small], CONFIG)
    assert placement.winner is None


def test_min_ram() -> None:
    peers = [peer("a", ram_available=2 * GiB), peer("b", ram_available=8 * GiB)]
    placement = price(Demand("python", min_ram=4 * GiB), peers, CONFIG)
    assert placement.winner is not None and placement.winner.name == "b"
    assert by_name(placement)["a"].why_not == "needs 4.0 GiB RAM, 2.0 GiB available"


def test_llm_goes_to_the_faster_peer_by_measured_throughput() -> None:
    peers = [
        peer("a", models=(offer("fast", capabilities=frozenset({"lint", "x"})),)),
        peer("b", models=(offer("quick", capabilities=frozenset({"x"})),)),
    ]
    demand = Demand("llm", capability="x", est_tokens=1000)
    tracker = ThroughputTracker()
    tracker.observe("a", "fast", 1000, 50.0)  # 20 tok/s
    tracker.observe("b", "quick", 1000, 10.0)  # 100 tok/s
    placement = price(demand, peers, CONFIG, throughput=tracker)
    assert placement.winner is not None
    assert (placement.winner.name, placement.winner.model) == ("b", "quick")
    assert placement.winner.run_s == pytest.approx(10.0)
    assert placement.winner.basis is not None and "measured 100.0 tok/s" in placement.winner.basis
    assert by_name(placement)["a"].run_s == pytest.approx(50.0)

    # Later measurements move the EWMA: b turns slow, a turns fast -> a wins.
    for _ in range(20):
        tracker.observe("a", "fast", 1000, 5.0)
        tracker.observe("b", "quick", 1000, 100.0)
    placement = price(demand, peers, CONFIG, throughput=tracker)
    assert placement.winner is not None and placement.winner.name == "a"


def test_llm_goes_to_the_peer_with_lower_measured_latency() -> None:
    caps = frozenset({"x"})
    peers = [
        peer("a", models=(offer("m", capabilities=caps, latency_ms=900.0),)),
        peer("b", models=(offer("m", capabilities=caps, latency_ms=50.0),)),
    ]
    placement = price(Demand("llm", capability="x", est_tokens=200), peers, CONFIG)
    assert placement.winner is not None and placement.winner.name == "b"
    rows = by_name(placement)
    assert rows["a"].run_s is not None and rows["b"].run_s is not None
    assert rows["a"].run_s - rows["b"].run_s == pytest.approx(0.85)


def test_llm_hardware_estimate_until_measured() -> None:
    caps = frozenset({"x"})
    gpu_peer = peer(
        "gpu",
        gpus_vram_total=(24 * GiB,),
        gpus_vram_free=(4 * GiB,),
        models=(offer("m", capabilities=caps),),
    )
    cpu_peer = peer("cpu", cores=8, load=0.0, models=(offer("m", capabilities=caps),))
    placement = price(Demand("llm", capability="x", est_tokens=600), [cpu_peer, gpu_peer], CONFIG)
    rows = by_name(placement)
    assert placement.winner is not None and placement.winner.name == "gpu"
    assert rows["gpu"].run_s == pytest.approx(600 / 60.0)  # 2.5 tok/s per GiB x 24 GiB
    assert rows["cpu"].run_s == pytest.approx(600 / 8.0)  # 1 tok/s per core x 8 cores
    assert rows["gpu"].basis == "estimated 60.0 tok/s from 24.0 GiB GPU"
    # A gossiped measurement beats the hardware guess.
    slow_gpu = replace(gpu_peer, models=(offer("m", capabilities=caps, tokens_per_s=4.0),))
    placement = price(Demand("llm", capability="x", est_tokens=600), [cpu_peer, slow_gpu], CONFIG)
    assert placement.winner is not None and placement.winner.name == "cpu"


def test_llm_best_offer_on_a_peer_and_model_profile_by_name() -> None:
    both = peer(
        "p",
        models=(
            offer("fast", capabilities=frozenset({"lint"}), tokens_per_s=100.0),
            offer("deep", capabilities=frozenset({"lint", "architecture"}), tokens_per_s=10.0),
        ),
    )
    placement = price(Demand("llm", capability="lint", est_tokens=100), [both], CONFIG)
    assert placement.winner is not None and placement.winner.model == "fast"
    placement = price(Demand("llm", model="deep", est_tokens=100), [both], CONFIG)
    assert placement.winner is not None and placement.winner.model == "deep"
    # The served model's name works too.
    placement = price(Demand("llm", model="model-deep", est_tokens=100), [both], CONFIG)
    assert placement.winner is not None and placement.winner.model == "deep"


def test_llm_why_not_lists_what_the_peer_has() -> None:
    p = peer("p", models=(offer("fast", capabilities=frozenset({"lint", "format"})),))
    none = peer("none")
    placement = price(Demand("llm", capability="security"), [p, none], CONFIG)
    rows = by_name(placement)
    assert rows["p"].why_not == 'no model with capability "security" (has: format, lint)'
    assert rows["none"].why_not == "serves no models"
    placement = price(Demand("llm", model="deep"), [p], CONFIG)
    assert by_name(placement)["p"].why_not == 'no model profile "deep" (has: fast)'
    placement = price(Demand("llm", model="fast", capability="security"), [p], CONFIG)
    assert by_name(placement)["p"].why_not == (
        'model "fast" lacks capability "security" (has: format, lint)'
    )


def test_cost_weight_changes_the_winner() -> None:
    caps = frozenset({"x"})
    peers = [
        peer("cheap", models=(offer("m", capabilities=caps, tokens_per_s=50.0),)),
        peer(
            "paid",
            models=(offer("m", capabilities=caps, tokens_per_s=100.0, cost_per_mtok=10.0),),
        ),
    ]
    demand = Demand("llm", capability="x", est_tokens=1000)  # 20 s vs 10 s; paid costs 0.01
    free = price(demand, peers, PricingConfig(cost_weight=0.0))
    assert free.winner is not None and free.winner.name == "paid"
    assert free.winner.cost == pytest.approx(0.01)
    # 0.01 cost x 2000 s per unit = 20 s penalty > 10 s saved.
    weighted = price(demand, peers, PricingConfig(cost_weight=2000.0))
    assert weighted.winner is not None and weighted.winner.name == "cheap"
    assert by_name(weighted)["paid"].score == pytest.approx(10.0 + 0.001 + 20.0)


def test_cost_per_hour_for_shell() -> None:
    peers = [peer("free"), peer("cloud", cost_per_hour=36.0, rtt_s=0.0)]
    demand = Demand("shell", est_seconds=100.0)
    placement = price(demand, peers, PricingConfig())
    assert placement.winner is not None and placement.winner.name == "cloud"  # lower rtt
    assert placement.winner.cost == pytest.approx(1.0)  # 36/h x 100 s
    placement = price(demand, peers, PricingConfig(cost_weight=1.0))
    assert placement.winner is not None and placement.winner.name == "free"


def test_shell_run_scales_with_load_and_queue_wait() -> None:
    config = PricingConfig(queue_slot_wait_s=4.0)
    idle = peer("idle", load=0.5, rtt_s=None)
    loaded = peer("loaded", load=3.0, rtt_s=None)
    full = peer("full", slots_total=2, slots_busy=2, queue=3, rtt_s=None)
    placement = price(Demand("shell", est_seconds=2.0), [loaded, full, idle], config)
    rows = by_name(placement)
    assert rows["idle"].run_s == pytest.approx(2.0) and rows["idle"].wait_s == 0.0
    assert rows["loaded"].run_s == pytest.approx(6.0)
    assert rows["full"].wait_s == pytest.approx(4.0 * 4 / 2)  # 3 queued + this one, 2 slots
    assert rows["full"].feasible
    assert [c.name for c in placement.candidates] == ["idle", "loaded", "full"]
    assert rows["idle"].rtt_s == 0.0  # self

    # Default run estimate when no hint is given.
    for hint in (None, math.nan, math.inf):
        placement = price(Demand("python", est_seconds=hint), [idle], config)
        assert placement.winner is not None and placement.winner.run_s == pytest.approx(1.0)
        assert placement.winner.basis == "default 1 s"


def test_queue_full_and_no_slots_are_infeasible() -> None:
    config = PricingConfig(max_queue=3)
    peers = [
        peer("full", slots_total=2, slots_busy=2, queue=3),
        peer("noshell", slots_total=0),
        peer("llmfull", models=(offer("m", max_concurrency=1, in_flight=4),)),
    ]
    placement = price(Demand("shell"), peers, config)
    rows = by_name(placement)
    assert rows["full"].why_not == "queue full: 3 waiting (limit 3)"
    assert rows["noshell"].why_not == "runs no shell subtasks (0 slots)"
    placement = price(Demand("llm", capability="lint"), peers, config)
    assert by_name(placement)["llmfull"].why_not == "model queue full (limit 3 waiting)"


def test_llm_in_flight_adds_wait() -> None:
    caps = frozenset({"x"})
    busy = peer("busy", models=(offer("m", capabilities=caps, tokens_per_s=10.0, in_flight=3),))
    placement = price(Demand("llm", capability="x", est_tokens=100), [busy], CONFIG)
    assert placement.winner is not None
    # max_concurrency 2, 3 in flight: 2 requests ahead of this one, 10 s each, 2 at once.
    assert placement.winner.wait_s == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("kw", "demand_kw", "exclude", "why"),
    [
        ({"draining": True}, {}, frozenset(), "draining"),
        ({"on_battery": True}, {}, frozenset(), "on battery (policy pause)"),
        ({"alive": False}, {}, frozenset(), "not alive"),
        ({}, {"node": "elsewhere"}, frozenset(), 'pinned to node "elsewhere"'),
        ({}, {}, frozenset({"p"}), "excluded: refused earlier"),
    ],
)
def test_infeasible_peers_say_why(
    kw: dict[str, Any], demand_kw: dict[str, Any], exclude: frozenset[str], why: str
) -> None:
    placement = price(Demand("shell", **demand_kw), [peer("p", **kw)], CONFIG, exclude)
    assert placement.winner is None
    (row,) = placement.candidates
    assert not row.feasible and row.why_not == why and row.score is None
    assert placement.reason == f"no feasible peer among 1: p: {why}"


def test_several_reasons_are_all_listed() -> None:
    p = peer("p", draining=True, alive=False, ram_available=GiB)
    placement = price(Demand("shell", min_ram=2 * GiB), [p], CONFIG)
    assert placement.candidates[0].why_not == (
        "not alive; draining; needs 2.0 GiB RAM, 1.0 GiB available"
    )


def test_battery_policy_run_and_plugged_are_fine() -> None:
    peers = [peer("run", on_battery=True, battery_policy="run"), peer("plugged")]
    placement = price(Demand("shell"), peers, CONFIG)
    assert all(c.feasible for c in placement.candidates)


def test_pin_by_name_or_id() -> None:
    peers = [peer("id-a", name="desk"), peer("id-b", name="lap", rtt_s=0.0)]
    for pin in ("desk", "id-a"):
        placement = price(Demand("shell", node=pin), peers, CONFIG)
        assert placement.winner is not None and placement.winner.node_id == "id-a"


def test_exclude_moves_to_the_next_candidate() -> None:
    peers = [peer("a", rtt_s=0.0), peer("b", rtt_s=0.01)]
    first = price(Demand("shell"), peers, CONFIG)
    assert first.winner is not None and first.winner.name == "a"
    second = price(Demand("shell"), peers, CONFIG, frozenset({"a"}))
    assert second.winner is not None and second.winner.name == "b"


def test_no_feasible_peer_and_no_peers() -> None:
    peers = [peer(f"n{i}", draining=True) for i in range(10)]
    placement = price(Demand("shell"), peers, CONFIG)
    assert placement.winner is None
    assert placement.reason is not None
    assert placement.reason.startswith("no feasible peer among 10: n0: draining | n1: draining")
    assert placement.reason.endswith("| and 2 more")
    empty = price(Demand("shell"), [], CONFIG)
    assert empty == Placement(winner=None, candidates=(), reason="no peers known")


def test_ties_go_to_the_lower_node_id() -> None:
    peers = [peer("b", name="x"), peer("a", name="y"), peer("c", name="z")]
    placement = price(Demand("shell"), peers, CONFIG)
    assert [c.node_id for c in placement.candidates] == ["a", "b", "c"]


def test_explain_table_rows() -> None:
    peers = [peer("a", rtt_s=0.0123456), peer("b", draining=True)]
    rows = explain_table(price(Demand("shell", est_seconds=1.5), peers, CONFIG))
    assert rows == [
        {
            "peer": "a",
            "node_id": "a",
            "chosen": True,
            "feasible": True,
            "why_not": None,
            "model": None,
            "wait_s": 0.0,
            "rtt_s": 0.012,
            "run_s": 1.5,
            "cost": 0.0,
            "score": 1.512,
            "basis": "hint 1.5 s",
            "input_s": 0.0,
            "later_s": None,
        },
        {
            "peer": "b",
            "node_id": "b",
            "chosen": False,
            "feasible": False,
            "why_not": "draining",
            "model": None,
            "wait_s": None,
            "rtt_s": 0.001,
            "run_s": None,
            "cost": None,
            "score": None,
            "basis": None,
            "input_s": 0.0,
            "later_s": None,
        },
    ]
    assert explain_table(price(Demand("shell"), [], CONFIG)) == []


# ---------------------------------------------------------------- throughput tracker


def test_throughput_tracker_ewma_and_latency() -> None:
    tracker = ThroughputTracker(alpha=0.5)
    assert tracker.tokens_per_s("a", "m") is None and tracker.latency_s("a", "m") is None
    tracker.observe("a", "m", 100, 10.0)
    assert tracker.tokens_per_s("a", "m") == pytest.approx(10.0)
    tracker.observe("a", "m", 100, 3.0, latency_s=1.0)  # 50 tok/s once latency is out
    assert tracker.tokens_per_s("a", "m") == pytest.approx(30.0)
    assert tracker.latency_s("a", "m") == pytest.approx(1.0)
    assert tracker.samples("a", "m") == 2
    tracker.observe("a", "m", 0, 0.0)  # nothing to learn
    tracker.observe("a", "m", 10, -1.0)
    assert tracker.tokens_per_s("a", "m") == pytest.approx(30.0)
    tracker.observe("b", "m", 10, 1.0)
    tracker.forget("a")
    assert tracker.tokens_per_s("a", "m") is None
    assert tracker.tokens_per_s("b", "m") == pytest.approx(10.0)
    with pytest.raises(ValueError):
        ThroughputTracker(alpha=0.0)


def test_tracker_latency_is_added_to_run() -> None:
    tracker = ThroughputTracker()
    tracker.observe("a", "m", 100, 3.0, latency_s=1.0)  # 50 tok/s, 1 s to first token
    p = peer("a", models=(offer("m", capabilities=frozenset({"x"}), latency_ms=5000.0),))
    placement = price(
        Demand("llm", capability="x", est_tokens=100), [p], CONFIG, throughput=tracker
    )
    assert placement.winner is not None
    assert placement.winner.run_s == pytest.approx(3.0)  # own latency beats the gossiped one
    assert placement.winner.basis == "measured 50.0 tok/s, ttft 1000 ms"


def test_llm_speed_is_own_measurement_then_the_peers_then_hardware() -> None:
    """The coordinator's own EWMA wins, else what the peer measured and gossips, else
    advertised hardware; the basis says which."""
    caps = frozenset({"x"})
    demand = Demand("llm", capability="x", est_tokens=100)
    gpu = peer("gpu", gpus_vram_total=(80 * GiB,), gpus_vram_free=(80 * GiB,))
    big = replace(gpu, models=(offer("m", capabilities=caps),))
    measured = replace(
        gpu, models=(offer("m", capabilities=caps, tokens_per_s=10.0, ttft_ms=500.0),)
    )
    row = price(demand, [big], CONFIG).winner
    assert row is not None and row.basis == "estimated 200.0 tok/s from 80.0 GiB GPU"
    row = price(demand, [measured], CONFIG).winner
    assert row is not None and row.basis == "peer-measured 10.0 tok/s, peer ttft 500 ms"
    assert row.run_s == pytest.approx(100 / 10.0 + 0.5)
    tracker = ThroughputTracker()
    tracker.observe("gpu", "m", 100, 1.2, latency_s=0.2)  # 100 tok/s here
    row = price(demand, [measured], CONFIG, throughput=tracker).winner
    assert row is not None and row.basis == "measured 100.0 tok/s, ttft 200 ms"
    assert row.run_s == pytest.approx(1.2)


def test_measurement_beats_advertised_hardware() -> None:
    """The GPU node is advertised as fast but measured slow: the measured-faster CPU
    node wins; unmeasured, the GPU node would."""
    caps = frozenset({"x"})
    gpu = peer("gpu", gpus_vram_total=(80 * GiB,), gpus_vram_free=(80 * GiB,))
    cpu = peer("cpu", cores=2)
    demand = Demand("llm", capability="x", est_tokens=64)
    unmeasured = [replace(p, models=(offer("m", capabilities=caps),)) for p in (gpu, cpu)]
    winner = price(demand, unmeasured, CONFIG).winner
    assert winner is not None and winner.name == "gpu"
    measured = [
        replace(gpu, models=(offer("m", capabilities=caps, tokens_per_s=300.0, ttft_ms=900.0),)),
        replace(cpu, models=(offer("m", capabilities=caps, tokens_per_s=300.0, ttft_ms=20.0),)),
    ]
    winner = price(demand, measured, CONFIG).winner
    assert winner is not None and winner.name == "cpu"


def test_gossiped_in_flight_counts_other_coordinators_only() -> None:
    """A profile's gossiped in-flight requests per coordinator: the reading coordinator
    counts its own exactly (not from gossip) and adds the others'."""
    values = {
        "hw": {"cpu": {"cores": 4}},
        "models": [
            {
                "name": "m",
                "model": "tiny",
                "capabilities": ["x"],
                "max_concurrency": 2,
                "in_flight": {"me": 2, "other": 1, "third": 1},
                "ttft_ms": 12.5,
                "tokens_per_s": 80.0,
            }
        ],
    }
    p = peer_from_gossip(
        "n", values, alive=True, rtt_s=0.0, model_in_flight={"m": 1}, coordinator_id="me"
    )
    (m,) = p.models
    assert (m.in_flight, m.ttft_ms, m.tokens_per_s) == (1 + 2, 12.5, 80.0)
    full = price(Demand("llm", capability="x"), [p], replace(CONFIG, max_queue=0))
    assert full.winner is None and "model queue full" in (full.candidates[0].why_not or "")
    free = peer_from_gossip(
        "n", values | {"models": [values["models"][0] | {"in_flight": {"me": 5}}]},  # type: ignore[list-item]
        alive=True, rtt_s=0.0, coordinator_id="me",
    )  # fmt: skip
    assert free.models[0].in_flight == 0  # our own count comes from our records
    bad = values | {"models": [values["models"][0] | {"in_flight": "lots"}]}  # type: ignore[list-item]
    assert peer_from_gossip("n", bad, alive=True, rtt_s=0.0).models[0].in_flight == 0


def test_estimate_llm_tokens() -> None:
    assert estimate_llm_tokens("x" * 10, 256) == 3 + 256
    assert estimate_llm_tokens("", 0, system="abcd") == 1


# ---------------------------------------------------------------- from gossip


def test_peer_from_gossip() -> None:
    hw = Hardware(
        cpu=Cpu(cores=16, load=0.25),
        memory=Memory(total=64 * GiB, available=40 * GiB),
        battery=Battery(percent=50.0, plugged=False),
        gpus=[
            Gpu("RTX 4090", 24 * GiB, 20 * GiB, "nvml"),
            Gpu("Arc", 8 * GiB, 8 * GiB, "declared"),
        ],
    )
    models = [
        ModelProfile(
            name="fast",
            model="Qwen/Qwen3.5-1.5B",
            endpoint="http://x/v1",
            capabilities=["lint"],
            max_concurrency=8,
            cost_per_mtok=0.5,
            latency_ms=42.0,
        ),
        ModelProfile(
            name="deep",
            model="Qwen/Qwen3.5-32B",
            endpoint="http://y/v1",
            capabilities=["architecture"],
            max_concurrency=2,
        ),
    ]
    values = {
        "name": "desk",
        "addr": "10.0.0.1:7946",
        "hw": msgspec.to_builtins(hw),
        "models": [msgspec.to_builtins(m) for m in models],
        "draining": False,
        "queue": 3,
        "slots": 4,
        "cost_per_hour": 0.5,
    }
    p = peer_from_gossip(
        "id1", values, alive=True, rtt_s=0.002, slots_busy=1, model_in_flight={"deep": 2}
    )
    assert p == PeerCapacity(
        node_id="id1",
        name="desk",
        alive=True,
        draining=False,
        on_battery=True,
        battery_policy="pause",
        cores=16,
        load=0.25,
        ram_available=40 * GiB,
        gpus_vram_free=(20 * GiB, 8 * GiB),
        gpus_vram_total=(24 * GiB, 8 * GiB),
        slots_total=4,
        slots_busy=1,
        queue=3,
        rtt_s=0.002,
        cost_per_hour=0.5,
        models=(
            ModelOffer("fast", "Qwen/Qwen3.5-1.5B", frozenset({"lint"}), 8, 0.5, 42.0, None),
            ModelOffer(
                "deep", "Qwen/Qwen3.5-32B", frozenset({"architecture"}), 2, 0.0, None, None, 2
            ),
        ),
    )


def test_peer_from_gossip_tolerates_missing_and_malformed_values() -> None:
    p = peer_from_gossip(
        "id2", {"hw": {"gpus": 7}, "models": [{"x": 1}, "junk"]}, alive=False, rtt_s=None
    )
    assert p.name == "id2" and p.models == () and p.gpus_vram_free == ()
    assert p.cores == 0 and p.slots_total == 0 and not p.on_battery and not p.alive
    placement = price(Demand("shell"), [p], CONFIG)
    assert placement.winner is None


# ---------------------------------------------------------------- property: brute force

NODE_IDS = [f"n{i}" for i in range(6)]
CAPS = ["a", "b", "c"]


def random_offer(rng: random.Random) -> ModelOffer:
    return ModelOffer(
        name=rng.choice(["p", "q", "r"]),
        model=rng.choice(["m1", "m2"]),
        capabilities=frozenset(c for c in CAPS if rng.random() < 0.5),
        max_concurrency=rng.randint(1, 4),
        cost_per_mtok=rng.choice([0.0, 0.5, 3.0]),
        latency_ms=rng.choice([None, rng.uniform(0.0, 2000.0)]),
        tokens_per_s=rng.choice([None, rng.uniform(0.5, 300.0)]),
        in_flight=rng.choice([0, 0, rng.randint(0, 8)]),
        ttft_ms=rng.choice([None, rng.uniform(0.0, 2000.0)]),
    )


def random_peer(rng: random.Random, node_id: str) -> PeerCapacity:
    healthy = rng.random() < 0.6  # most peers pass the basic checks
    totals = tuple(rng.choice([8, 12, 24, 80]) * GiB for _ in range(rng.randint(0, 2)))
    frees = tuple(rng.randint(0, t // GiB) * GiB for t in totals)
    slots_total = rng.choice([0, 1, 2, 4, 4])
    return PeerCapacity(
        node_id=node_id,
        name=rng.choice(["desk", "lap", "box", "pi"]),
        alive=healthy or rng.random() < 0.5,
        draining=not healthy and rng.random() < 0.5,
        on_battery=not healthy and rng.random() < 0.5,
        battery_policy=rng.choice(["pause", "run"]),
        cores=rng.choice([0, 2, 8, 32]),
        load=rng.uniform(0.0, 4.0),
        ram_available=rng.randint(0, 64) * GiB,
        gpus_vram_free=frees,
        gpus_vram_total=totals,
        slots_total=slots_total,
        slots_busy=rng.randint(0, slots_total),
        queue=rng.choice([0, 0, rng.randint(0, 6)]),
        rtt_s=rng.choice([None, rng.uniform(0.0, 0.5)]),
        cost_per_hour=rng.choice([0.0, 1.0, 20.0]),
        models=tuple(random_offer(rng) for _ in range(rng.randint(0, 3))),
    )


def random_case(
    rng: random.Random,
) -> tuple[Demand, list[PeerCapacity], PricingConfig, frozenset[str]]:
    demand = Demand(
        kind=rng.choice(["shell", "llm", "python"]),
        capability=rng.choice([None, *CAPS]),
        model=rng.choice([None, None, None, "p", "m2", "zz"]),
        min_vram=rng.choice([0, 0, 0, 4 * GiB, 16 * GiB, 40 * GiB]),
        min_ram=rng.choice([0, 0, 0, 8 * GiB, 32 * GiB]),
        node=rng.choice([None] * 8 + ["n1", "desk"]),
        est_tokens=rng.randint(0, 5000),
        est_seconds=rng.choice([None, rng.uniform(0.0, 600.0)]),
    )
    ids = rng.sample(NODE_IDS, rng.randint(0, len(NODE_IDS)))
    config = PricingConfig(
        cost_weight=rng.choice([0.0, 10.0, 1000.0]),
        max_queue=rng.randint(1, 8),
        queue_slot_wait_s=rng.uniform(0.0, 30.0),
    )
    exclude = frozenset(i for i in NODE_IDS if rng.random() < 0.1)
    return demand, [random_peer(rng, i) for i in ids], config, exclude


def reference_scores(
    d: Demand, p: PeerCapacity, exclude: frozenset[str], c: PricingConfig
) -> list[float]:
    """Every feasible way to run ``d`` on ``p``, as scores (empty: infeasible)."""
    if not p.alive or p.draining or p.node_id in exclude:
        return []
    if p.on_battery and p.battery_policy == "pause":
        return []
    if d.node is not None and d.node != p.name and d.node != p.node_id:
        return []
    if d.min_vram > 0 and not any(f >= d.min_vram for f in p.gpus_vram_free):
        return []
    if d.min_ram > 0 and p.ram_available < d.min_ram:
        return []
    rtt = p.rtt_s or 0.0
    if d.kind != "llm":
        waiting = p.slots_busy + p.queue - p.slots_total
        if p.slots_total == 0 or waiting >= c.max_queue:
            return []
        run = (d.est_seconds if d.est_seconds is not None else c.default_shell_s) * max(1, p.load)
        wait = c.queue_slot_wait_s * (waiting + 1) / p.slots_total if waiting >= 0 else 0.0
        return [wait + rtt + run + c.cost_weight * p.cost_per_hour * run / 3600]
    scores = []
    for o in p.models:
        if d.model is not None and d.model != o.name and d.model != o.model:
            continue
        if d.capability is not None and d.capability not in o.capabilities:
            continue
        if o.in_flight - o.max_concurrency >= c.max_queue:
            continue
        if o.tokens_per_s is not None:
            tps = o.tokens_per_s
        elif p.gpus_vram_total:
            tps = min(200.0, max(1.0, 2.5 * max(p.gpus_vram_total) / GiB))
        elif p.cores:
            tps = min(200.0, max(1.0, p.cores / max(1.0, p.load)))
        else:
            tps = 20.0
        latency_ms = o.ttft_ms if o.ttft_ms is not None else o.latency_ms
        run = d.est_tokens / tps + (latency_ms or 0.0) / 1000
        ahead = o.in_flight - o.max_concurrency + 1
        wait = run * ahead / o.max_concurrency if ahead > 0 else 0.0
        scores.append(wait + rtt + run + c.cost_weight * o.cost_per_mtok * d.est_tokens / 1e6)
    return scores


@settings(max_examples=400, deadline=None)
@given(seed=st.integers(0, 2**64))
def test_price_matches_brute_force(seed: int) -> None:
    """Random clusters and demands: the winner is the brute-force best feasible peer."""
    demand, peers, config, exclude = random_case(random.Random(seed))
    placement = price(demand, peers, config, exclude)
    assert len(placement.candidates) == len(peers)
    best: dict[str, float] = {}
    for p in peers:
        scores = reference_scores(demand, p, exclude, config)
        if scores:
            best[p.node_id] = min(scores)
    rows = {c.node_id: c for c in placement.candidates}
    for node_id, row in rows.items():
        assert row.feasible == (node_id in best), (row, best)
        if row.feasible:
            assert row.why_not is None
            assert row.score == pytest.approx(best[node_id], rel=1e-9, abs=1e-9)
            assert row.wait_s is not None and row.run_s is not None and row.cost is not None
            total = row.wait_s + row.rtt_s + row.run_s + config.cost_weight * row.cost
            assert row.score == pytest.approx(total)
        else:
            assert row.why_not and row.score is None
    event("winner" if best else "no winner")
    if not best:
        assert placement.winner is None and placement.reason
        return
    winner = placement.winner
    assert winner is not None and winner.feasible and winner.score is not None
    lowest = min(best.values())
    assert winner.score == pytest.approx(lowest, rel=1e-9, abs=1e-9)
    # Exact order: feasible by (score, node id), then infeasible by (name, node id).
    feasible = [c for c in placement.candidates if c.feasible]
    assert placement.candidates[: len(feasible)] == tuple(feasible)
    assert [(c.score, c.node_id) for c in feasible] == sorted(
        (c.score or math.inf, c.node_id) for c in feasible
    )
    assert winner is feasible[0]


# ---------------------------------------------------------------- declared speed


def test_declared_speed_divides_shell_run_estimates() -> None:
    slow, fast = peer("slow", rtt_s=None), peer("fast", speed=2.0, rtt_s=None)
    placement = price(Demand("shell", est_seconds=4.0), [slow, fast], CONFIG)
    rows = by_name(placement)
    assert rows["fast"].run_s == pytest.approx(2.0) and rows["slow"].run_s == pytest.approx(4.0)
    assert placement.winner is not None and placement.winner.name == "fast"
    assert rows["fast"].basis == "hint 4 s / speed 2" and rows["slow"].basis == "hint 4 s"
    # Load still multiplies; a nonsensical speed reads as 1.
    loaded = peer("loaded", speed=2.0, load=3.0)
    assert by_name(price(Demand("python", est_seconds=4.0), [loaded], CONFIG))[
        "loaded"
    ].run_s == pytest.approx(6.0)
    for bad in (0.0, -1.0, math.nan, math.inf):
        odd = peer("odd", speed=bad)
        assert by_name(price(Demand("shell", est_seconds=4.0), [odd], CONFIG))[
            "odd"
        ].run_s == pytest.approx(4.0)


def test_declared_speed_does_not_change_llm_estimates() -> None:
    fast = peer("fast", speed=4.0, models=(offer(tokens_per_s=50.0),))
    placement = price(Demand("llm", capability="lint", est_tokens=100), [fast], CONFIG)
    assert placement.winner is not None and placement.winner.run_s == pytest.approx(2.0)


def test_peer_from_gossip_reads_speed() -> None:
    base = {"name": "n", "hw": {"cpu": {"cores": 2}}}
    assert peer_from_gossip("a", base, alive=True, rtt_s=None).speed == 1.0
    assert peer_from_gossip("a", {**base, "speed": 2.5}, alive=True, rtt_s=None).speed == 2.5
    for bad in (0, -2.0, "fast", True, None, math.inf):
        assert peer_from_gossip("a", {**base, "speed": bad}, alive=True, rtt_s=None).speed == 1.0


def test_input_s_adds_transfer_time_per_node() -> None:
    near, far = peer("near", rtt_s=None), peer("far", rtt_s=None, speed=1.5)
    demand = Demand("shell", est_seconds=3.0, input_s=(("far", 2.0), ("near", 0.0)))
    placement = price(demand, [near, far], CONFIG)
    rows = by_name(placement)
    assert rows["far"].score == pytest.approx(2.0 + 2.0) and rows["near"].score == 3.0
    assert placement.winner is not None and placement.winner.name == "near"
    assert rows["far"].basis == "hint 3 s / speed 1.5, inputs 2 s"
    assert rows["near"].basis == "hint 3 s"
    # Without the term the faster node wins; unlisted or nonsensical entries count 0.
    assert price(Demand("shell", est_seconds=3.0), [near, far], CONFIG).winner.name == "far"  # type: ignore[union-attr]
    odd = Demand("shell", est_seconds=3.0, input_s=(("far", math.nan), ("near", -1.0)))
    assert by_name(price(odd, [near, far], CONFIG))["far"].score == pytest.approx(2.0)
    # llm too: the transfer is added to the best profile's score.
    llm = peer("gpu", models=(offer(tokens_per_s=100.0),))
    ask = Demand("llm", capability="lint", est_tokens=100, input_s=(("gpu", 0.5),))
    assert by_name(price(ask, [llm], CONFIG))["gpu"].score == pytest.approx(1.0 + 0.5 + 0.001)


@settings(max_examples=200, deadline=None)
@given(
    busy=st.lists(st.integers(0, 9), min_size=1, max_size=6),
    rtts=st.lists(st.floats(0.0, 0.05), min_size=6, max_size=6),
    changes=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), max_size=8),
    queue_max=st.integers(0, 4),
)
def test_repricing_the_changed_peers_equals_pricing_anew(
    busy: list[int], rtts: list[float], changes: list[tuple[int, int]], queue_max: int
) -> None:
    """The schedule pass reprices only the peers a dispatch changed: the same answer."""
    peers = [
        peer(f"n{i}", slots_busy=b, rtt_s=rtts[i], queue_max=queue_max) for i, b in enumerate(busy)
    ]
    demand = Demand(kind="shell", est_seconds=2.0)
    placement = price(demand, peers, CONFIG)
    for index, more in changes:
        if index >= len(peers):
            continue
        peers[index] = replace(peers[index], slots_busy=peers[index].slots_busy + more)
        placement = reprice(placement, demand, [peers[index]], CONFIG)
        assert placement == price(demand, peers, CONFIG)
