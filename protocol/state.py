"""The values a node gossips about itself, and the schema of each key."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from protocol.base import Address, Bytes, Count, Name, NodeId, Text


class Cpu(Struct):
    cores: Count
    model: Name = ""
    load: float = 0.0  # 1-minute load average divided by cores


class Memory(Struct):
    total: Bytes
    available: Bytes


class Battery(Struct):
    percent: float
    plugged: bool


class Power(Struct):
    """What a node runs on (gossip key ``power``): both null means no battery (mains)."""

    on_ac: bool | None = None
    battery_percent: Annotated[float, Meta(ge=0, le=100)] | None = None


# Why a node takes no new work now (gossip key ``paused``; null: it takes work).
PausedReason = Literal["battery", "user-active", "draining", "disk-full"]


class Gpu(Struct):
    name: Name
    vram_total: Bytes
    vram_free: Bytes
    source: Literal["nvml", "declared"]
    utilization: float | None = None  # percent
    temperature: float | None = None  # degrees C


class Hardware(Struct):
    cpu: Cpu
    memory: Memory
    battery: Battery | None = None
    gpus: Annotated[list[Gpu], Meta(max_length=64)] = []
    nvml: bool = False  # whether NVML was available on the node


class ModelProfile(Struct):
    name: Name
    model: Name
    endpoint: Annotated[str, Meta(max_length=1024)]
    capabilities: Annotated[list[Name], Meta(max_length=64)] = []
    max_concurrency: Annotated[int, Meta(ge=1)] = 1
    cost_per_mtok: Annotated[float, Meta(ge=0)] = 0.0
    latency_ms: float | None = None  # a 1-token probe of the endpoint (configured profiles)
    # Measured on this node from the requests its endpoint served (EWMAs; None until
    # one was): time to the first token, and completion tokens per second after it.
    ttft_ms: Annotated[float, Meta(ge=0)] | None = None
    tokens_per_s: Annotated[float, Meta(ge=0)] | None = None
    # Requests running on this profile now, per coordinating node id (<= 64 entries).
    in_flight: Annotated[dict[NodeId, Count], Meta(max_length=64)] | None = None


Models = Annotated[list[ModelProfile], Meta(max_length=64)]
# The revocation list: [node id, unix time, signature hex] per revoked node (PROTOCOL.md).
RevokedEntry = tuple[
    Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")],
    int,
    Annotated[str, Meta(max_length=128)],
]
Revoked = Annotated[list[RevokedEntry], Meta(max_length=1024)]


class EngineState(Struct):
    """A Slurm or Ray cluster a node fronts (gossip key ``engines``), as last read."""

    name: Name
    kind: Literal["slurm", "ray"]
    ok: bool = False  # its capacity could be read at the last poll
    overflow_only: bool = False
    cpus_idle: Count = 0
    gpus_idle: Count = 0
    mem_idle_mb: Count = 0
    running: Count = 0  # jobs running (all of the engine's)
    queue: Count = 0  # jobs pending
    est_wait_s: Annotated[float, Meta(ge=0, le=1e9)] = 0.0  # a new small job's queue wait
    error: Text | None = None  # why its capacity cannot be read


Engines = Annotated[list[EngineState], Meta(max_length=16)]


# Today's spend per client key, as this node's book counted it (cluster-wide budgets):
# {"day": UTC day number, "keys": {key id: [tokens, cost]}}.
class Spend(Struct):
    day: Annotated[int, Meta(ge=0)]
    keys: Annotated[
        dict[
            Annotated[str, Meta(max_length=64)],
            tuple[Annotated[int, Meta(ge=0)], Annotated[float, Meta(ge=0, le=1e15)]],
        ],
        Meta(max_length=256),
    ] = {}


# The keys a node gossips about itself and the schema of each value.
STATE_SCHEMAS: dict[str, Any] = {
    "name": Name,
    "addr": Address,
    "status": Literal["alive", "left"],
    "hw": Hardware,
    "models": Models,
    "draining": bool,
    "sleeping": bool,  # the machine suspends (logind's PrepareForSleep); false once awake
    "refusing": Text | None,  # why it takes no new work besides draining (disk full)
    "queue": Count,  # shell/python attempts held here, queued for a slot
    "slots": Count,  # shell/python attempts this node runs at once
    "queue_max": Count,  # shell/python attempts it holds beyond its slots, at most
    "busy": Count,  # of which in use
    "allow_shell": bool,
    "cost_per_hour": Annotated[float, Meta(ge=0)],
    "on_battery": Literal["pause", "run"],  # older nodes; newer ones gossip paused
    "power": Power,  # its battery, refreshed every few seconds
    "paused": PausedReason | None,  # why it takes no new work, null when it takes some
    "pause_detail": Text | None,  # the reason said in full: "battery 22 % < 30 %"
    "speed": Annotated[float, Meta(gt=0, le=1000)],  # [hardware] speed, for shell/python
    "spend": Spend,  # today's llm spend per client key it coordinated (budgets)
    "revoked": Revoked,  # the node ids shut out of the cluster, as this node knows them
    "engines": Engines,  # [engines.NAME] it fronts, with their capacity
}


def validate_state_value(key: str, value: Any) -> Any:
    """Check one gossiped value against its key's schema; unknown keys pass as-is.

    Raises msgspec.ValidationError when a known key carries a malformed value.
    """
    schema = STATE_SCHEMAS.get(key)
    if schema is None:
        return value
    return msgspec.convert(value, schema)
