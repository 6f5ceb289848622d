"""`swarmctl peers --json` rows, built from what gossip learnt (sans-I/O, no sockets)."""

from __future__ import annotations

import json
import random
from typing import Any

import msgspec
import pytest

from protocol import codec
from protocol.messages import (
    Battery,
    Cpu,
    ErrorReply,
    Gpu,
    Hardware,
    JoinTokenReply,
    JoinTokenRequest,
    Memory,
    ModelProfile,
    PeersReply,
    PeersRequest,
    PeerView,
    StatsReply,
    StatsRequest,
)
from swarmd import peer_rows
from swarmd.control import Control
from swarmd.core.failure import Liveness
from swarmd.core.gossip import Gossip, Member, Send
from swarmd.core.membership import NodeState

GiB = 1 << 30

# CONTRACT.md "peers --json"
PEER_FIELDS = {
    "id",
    "name",
    "address",
    "state",
    "self",
    "generation",
    "draining",
    "rtt_ms",
    "last_seen_s",
    "cpu",
    "memory",
    "gpus",
    "models",
    "power",
    "paused",
}
CPU_FIELDS = {"cores", "load"}
MEMORY_FIELDS = {"total", "available"}
GPU_FIELDS = {"name", "vram_total", "vram_free", "source"}
MODEL_FIELDS = {"name", "model", "endpoint", "capabilities", "latency_ms"}
# What the implementation adds on top of the contract ("extend it freely"); listed here
# so that a change to the row shape is a deliberate one.
PEER_EXTRAS = {"battery", "refusing", "pause_detail", "engines"}
CPU_EXTRAS = {"model"}
GPU_EXTRAS = {"utilization", "temperature"}
MODEL_EXTRAS = {"max_concurrency", "cost_per_mtok", "ttft_ms", "tokens_per_s", "in_flight"}

DESK_HW = Hardware(
    cpu=Cpu(cores=16, model="AMD Ryzen 9 7950X", load=0.25),
    memory=Memory(total=64 * GiB, available=40 * GiB),
    gpus=[
        Gpu(
            "NVIDIA GeForce RTX 4090", 24 * GiB, 20 * GiB, "nvml", utilization=37.0, temperature=61
        ),
        Gpu("Radeon RX 7900 XTX", 24 * GiB, 24 * GiB, "declared"),
    ],
    nvml=True,
)
LAPTOP_HW = Hardware(
    cpu=Cpu(cores=8, load=1.5),
    memory=Memory(total=16 * GiB, available=3 * GiB),
    battery=Battery(percent=55.0, plugged=False),
)
DESK_MODELS = [
    ModelProfile(
        name="fast",
        model="Qwen/Qwen3.5-1.5B",
        endpoint="http://localhost:8001/v1",
        capabilities=["syntax", "format", "lint"],
        max_concurrency=8,
    ),
    ModelProfile(
        name="deep",
        model="Qwen/Qwen3.5-32B",
        endpoint="http://localhost:8002/v1",
        capabilities=["architecture", "refactor", "security"],
        max_concurrency=2,
        latency_ms=820.5,
    ),
]


class Net:
    """Two or more Gossip machines; every message goes through the real codec."""

    def __init__(self) -> None:
        self.nodes: dict[str, Gossip] = {}
        self.rng = random.Random(7)

    def add(self, node_id: str, addr: str, gen: int = 1, seeds: tuple[str, ...] = ()) -> Gossip:
        g = Gossip(node_id=node_id, generation=gen, boot=len(self.nodes) + 1, addr=addr, now=0)
        for seed in seeds:
            g.add_contact(seed)
        self.nodes[addr] = g
        return g

    def deliver(self, src: Gossip, sends: list[Send], now: float, reply_to: Gossip | None) -> int:
        count = 0
        for send in sends:
            dst = reply_to if send.addr is None else self.nodes.get(send.addr)
            if dst is None:
                continue
            message = codec.decode(codec.encode(send.message))
            assert type(message) is type(send.message)
            count += 1
            count += self.deliver(dst, dst.receive(message, now, self.rng), now + 0.004, src)
        return count

    def round(self, now: float) -> int:
        return sum(
            self.deliver(g, g.tick(now, self.rng), now + 0.002, None)
            for g in list(self.nodes.values())
        )


@pytest.fixture
def net() -> Net:
    n = Net()
    desk = n.add("d35c0ffee0000001", "192.168.1.20:7946")
    laptop = n.add("1a2b3c4d5e6f7081", "192.168.1.21:7946", gen=3, seeds=("192.168.1.20:7946",))
    desk.set("name", "desk")
    desk.set("hw", msgspec.to_builtins(DESK_HW))
    desk.set("models", msgspec.to_builtins(DESK_MODELS))
    desk.set("draining", False)
    desk.set("power", {"on_ac": None, "battery_percent": None})  # no battery: mains
    desk.set("paused", None)
    laptop.set("name", "laptop")
    laptop.set("hw", msgspec.to_builtins(LAPTOP_HW))
    laptop.set("models", [])
    laptop.set("draining", True)
    laptop.set("power", {"on_ac": False, "battery_percent": 55.0})
    laptop.set("paused", "draining")  # draining comes before its battery
    laptop.set("pause_detail", "draining")
    for i in range(4):
        n.round(1.0 + i * 0.2)
    return n


def rows(g: Gossip, now: float = 2.0) -> list[dict[str, Any]]:
    """What `swarmctl peers --json` prints: the reply's rows as JSON objects."""
    reply = PeersReply(peers=peer_rows.peers(g.members(now)))
    wire = codec.decode(codec.encode(reply))
    assert isinstance(wire, PeersReply)
    out: list[dict[str, Any]] = json.loads(msgspec.json.encode(wire.peers))
    return out


def check_shape(row: dict[str, Any]) -> None:
    assert set(row) == PEER_FIELDS | PEER_EXTRAS
    assert set(row["cpu"]) == CPU_FIELDS | CPU_EXTRAS
    assert set(row["memory"]) == MEMORY_FIELDS
    for gpu in row["gpus"]:
        assert set(gpu) == GPU_FIELDS | GPU_EXTRAS
        assert gpu["source"] in ("nvml", "declared")
    for model in row["models"]:
        assert set(model) == MODEL_FIELDS | MODEL_EXTRAS
        assert isinstance(model["capabilities"], list)
    assert row["state"] in ("alive", "suspect", "dead", "left")
    assert isinstance(row["self"], bool)
    assert isinstance(row["draining"], bool)
    assert isinstance(row["generation"], int)


def test_two_nodes_see_each_other_with_the_contract_fields(net: Net) -> None:
    desk = net.nodes["192.168.1.20:7946"]
    laptop = net.nodes["192.168.1.21:7946"]

    seen_by_desk = rows(desk)
    assert [r["name"] for r in seen_by_desk] == ["desk", "laptop"]
    for row in seen_by_desk:
        check_shape(row)
    me, other = seen_by_desk
    assert me == {
        "id": "d35c0ffee0000001",
        "name": "desk",
        "address": "192.168.1.20:7946",
        "state": "alive",
        "self": True,
        "generation": 1,
        "draining": False,
        "rtt_ms": None,
        "last_seen_s": 0.0,
        "cpu": {"cores": 16, "load": 0.25, "model": "AMD Ryzen 9 7950X"},
        "memory": {"total": 64 * GiB, "available": 40 * GiB},
        "gpus": [
            {
                "name": "NVIDIA GeForce RTX 4090",
                "vram_total": 24 * GiB,
                "vram_free": 20 * GiB,
                "source": "nvml",
                "utilization": 37.0,
                "temperature": 61.0,
            },
            {
                "name": "Radeon RX 7900 XTX",
                "vram_total": 24 * GiB,
                "vram_free": 24 * GiB,
                "source": "declared",
                "utilization": None,
                "temperature": None,
            },
        ],
        "models": [
            {
                "name": "fast",
                "model": "Qwen/Qwen3.5-1.5B",
                "endpoint": "http://localhost:8001/v1",
                "capabilities": ["syntax", "format", "lint"],
                "latency_ms": None,
                "max_concurrency": 8,
                "cost_per_mtok": 0.0,
                "ttft_ms": None,
                "tokens_per_s": None,
                "in_flight": 0,
            },
            {
                "name": "deep",
                "model": "Qwen/Qwen3.5-32B",
                "endpoint": "http://localhost:8002/v1",
                "capabilities": ["architecture", "refactor", "security"],
                "latency_ms": 820.5,
                "max_concurrency": 2,
                "cost_per_mtok": 0.0,
                "ttft_ms": None,
                "tokens_per_s": None,
                "in_flight": 0,
            },
        ],
        "battery": None,
        "refusing": None,
        "power": {"on_ac": None, "battery_percent": None},
        "paused": None,
        "pause_detail": None,
        "engines": [],
    }
    assert other["id"] == "1a2b3c4d5e6f7081"
    assert other["address"] == "192.168.1.21:7946"
    assert other["state"] == "alive"
    assert other["self"] is False
    assert other["generation"] == 3
    assert other["draining"] is True
    assert other["cpu"] == {"cores": 8, "load": 1.5, "model": ""}
    assert other["memory"] == {"total": 16 * GiB, "available": 3 * GiB}
    assert other["gpus"] == [] and other["models"] == []
    assert other["battery"] == {"percent": 55.0, "plugged": False}
    assert other["power"] == {"on_ac": False, "battery_percent": 55.0}
    assert other["paused"] == "draining" and other["pause_detail"] == "draining"
    assert other["last_seen_s"] is not None and other["last_seen_s"] >= 0

    seen_by_laptop = rows(laptop)
    assert [(r["name"], r["self"]) for r in seen_by_laptop] == [("laptop", True), ("desk", False)]
    for row in seen_by_laptop:
        check_shape(row)
    # the laptop dialled the desk, so it measured a round trip; the desk's view of itself has none
    assert seen_by_laptop[0]["rtt_ms"] is None
    assert seen_by_laptop[1]["rtt_ms"] is not None and seen_by_laptop[1]["rtt_ms"] > 0
    # both see the same gossiped facts about the desk
    desk_by_laptop = {k: v for k, v in seen_by_laptop[1].items() if k not in ("rtt_ms", "self")}
    desk_by_desk = {k: v for k, v in me.items() if k not in ("rtt_ms", "self", "last_seen_s")}
    desk_by_laptop.pop("last_seen_s")
    assert desk_by_laptop == desk_by_desk


def test_self_comes_first_then_by_name(net: Net) -> None:
    zed = net.add("0000000000000009", "192.168.1.30:7946", seeds=("192.168.1.20:7946",))
    zed.set("name", "aardvark")  # sorts before everything but self
    for i in range(4):
        net.round(3.0 + i * 0.2)
    desk = net.nodes["192.168.1.20:7946"]
    assert [(r["name"], r["self"]) for r in rows(desk, 4.0)] == [
        ("desk", True),
        ("aardvark", False),
        ("laptop", False),
    ]
    assert [r["name"] for r in rows(zed, 4.0)] == ["aardvark", "desk", "laptop"]


def test_a_node_without_hw_name_or_models(net: Net) -> None:
    bare = net.add("beefbeefbeef0001", "192.168.1.40:7946", seeds=("192.168.1.20:7946",))
    for i in range(4):
        net.round(3.0 + i * 0.2)
    desk = net.nodes["192.168.1.20:7946"]
    by_id = {r["id"]: r for r in rows(desk, 4.0)}
    row = by_id["beefbeefbeef0001"]
    assert set(row) == PEER_FIELDS | PEER_EXTRAS
    assert row["name"] == "beefbeefbeef0001"  # falls back to the id
    assert row["address"] == "192.168.1.40:7946"
    assert row["cpu"] == {"cores": None, "load": None, "model": None}
    assert row["memory"] == {"total": None, "available": None}
    assert row["gpus"] == [] and row["models"] == [] and row["battery"] is None
    assert row["draining"] is False
    # its own view of itself works too
    [me, *_] = rows(bare, 4.0)
    assert me["self"] is True and me["cpu"]["cores"] is None


def _member(**state: Any) -> Member:
    node = NodeState("n1", 2)
    for key, value in state.items():
        node.set(key, value)
    return Member(node, Liveness.SUSPECT, False, 0.0123456, 1.23456)


def test_malformed_values_in_state_are_skipped_not_fatal() -> None:
    good = msgspec.to_builtins(DESK_MODELS[0])
    member = _member(
        hw={"cpu": {"cores": -1}},
        models=[good, {"name": "broken"}, "nonsense"],
        addr="10.0.0.1:7946",
    )
    [row] = [json.loads(msgspec.json.encode(v)) for v in peer_rows.peers([member])]
    check_shape(row)
    assert row["cpu"]["cores"] is None
    assert [m["name"] for m in row["models"]] == ["fast"]
    assert row["state"] == "suspect"
    assert row["rtt_ms"] == 12.346  # seconds -> ms, rounded
    assert row["last_seen_s"] == 1.235


@pytest.mark.parametrize("liveness", list(Liveness))
def test_every_liveness_is_a_contract_state(liveness: Liveness) -> None:
    member = Member(NodeState("n1", 1), liveness, False, None, None)
    [view] = peer_rows.peers([member])
    row = json.loads(msgspec.json.encode(view))
    assert row["state"] == liveness.value
    assert row["rtt_ms"] is None and row["last_seen_s"] is None


def test_peer_view_serialises_self_not_is_self() -> None:
    view = peer_rows.peer_view(Member(NodeState("n1", 1), Liveness.ALIVE, True, None, 0.0))
    assert isinstance(view, PeerView) and view.is_self is True
    row = json.loads(msgspec.json.encode(view))
    assert row["self"] is True and "is_self" not in row


# ---------------------------------------------------------------- Control dispatch


class FakeNode:
    node_id = "d35c0ffee0000001"
    name = "desk"

    def __init__(self, g: Gossip) -> None:
        self.g = g

    def members(self) -> list[Member]:
        return self.g.members(2.0)

    def join_token(self, request: JoinTokenRequest) -> JoinTokenReply:
        return JoinTokenReply(token="swarmd2-token", single_use=request.single_use)

    def stats(self) -> dict[str, int]:
        return {"received": 3, "dropped_malformed": 1}


def test_control_answers_each_request(net: Net) -> None:
    ctl = Control(FakeNode(net.nodes["192.168.1.20:7946"]))
    for request in (PeersRequest(), JoinTokenRequest(), StatsRequest()):
        assert ctl.handles(request)
    peers = ctl.handle(PeersRequest(), local=True)
    assert isinstance(peers, PeersReply)
    assert [p.name for p in peers.peers] == ["desk", "laptop"]
    assert ctl.handle(JoinTokenRequest(single_use=True), local=True) == JoinTokenReply(
        token="swarmd2-token", single_use=True
    )
    assert ctl.handle(StatsRequest(), local=False) == StatsReply(
        node="d35c0ffee0000001", name="desk", counters={"received": 3, "dropped_malformed": 1}
    )


def test_control_refuses_what_it_does_not_handle(net: Net) -> None:
    ctl = Control(FakeNode(net.nodes["192.168.1.20:7946"]))
    not_a_request = JoinTokenReply(token="x")
    assert not ctl.handles(not_a_request)
    reply = ctl.handle(not_a_request, local=True)  # type: ignore[arg-type]
    assert isinstance(reply, ErrorReply) and reply.code == "unsupported"
    codec.decode(codec.encode(reply))  # a valid wire message
