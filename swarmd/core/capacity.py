"""What a peer offers, as a coordinator sees it: its capacity (slots, VRAM, RAM, models,
load) built from the key-values it gossips, for :mod:`swarmd.core.pricing` to price.

Sans-I/O: plain values in, plain values out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "BatteryPolicy",
    "EngineOffer",
    "GiB",
    "Kind",
    "ModelOffer",
    "PeerCapacity",
    "peer_from_gossip",
]

GiB = 1 << 30

Kind = Literal["shell", "llm", "python"]
BatteryPolicy = Literal["pause", "run"]


@dataclass(frozen=True, slots=True)
class ModelOffer:
    """One model profile a peer serves (``[models.NAME]`` in its config)."""

    name: str  # profile name, e.g. "fast"
    model: str
    capabilities: frozenset[str]
    max_concurrency: int
    cost_per_mtok: float
    latency_ms: float | None  # a 1-token probe of the endpoint, None until probed
    tokens_per_s: float | None  # measured by the peer (EWMA), None until measured
    # requests running on this profile: this coordinator's, plus the others' as gossiped
    in_flight: int = 0
    ttft_ms: float | None = None  # time to first token measured by the peer (EWMA)


@dataclass(frozen=True, slots=True)
class EngineOffer:
    """A Slurm or Ray cluster a peer fronts (``[engines.NAME]``), as it gossips it."""

    name: str
    kind: str
    ok: bool  # its capacity could be read lately
    cpus_idle: int = 0
    gpus_idle: int = 0
    queue: int = 0  # jobs waiting in it (all of its users')
    est_wait_s: float = 0.0  # the queue wait of a new small job, as the peer estimates it
    overflow_only: bool = False  # only when the LAN has no free slot


@dataclass(frozen=True, slots=True)
class PeerCapacity:
    """What one node offers right now, as the coordinator sees it."""

    node_id: str
    name: str
    alive: bool  # liveness == alive (suspect/dead/left are not candidates)
    draining: bool
    on_battery: bool  # battery present and not plugged
    battery_policy: BatteryPolicy
    cores: int
    load: float  # 1-minute load average per core
    ram_available: int
    gpus_vram_free: tuple[int, ...]
    gpus_vram_total: tuple[int, ...]
    slots_total: int  # shell/python slots (max_concurrency)
    slots_busy: int
    queue: int  # shell/python subtasks waiting on that peer
    rtt_s: float | None  # None for self -> 0
    cost_per_hour: float
    models: tuple[ModelOffer, ...]
    speed: float = 1.0  # declared relative speed for shell/python work (> 0)
    queue_max: int | None = None  # shell/python it holds beyond slots; None: max_queue
    sleeping: bool = False  # it said its machine suspends (then it is not alive either)
    # Why its own power/presence policy holds new work (e.g. "battery 22 % < 30 %"):
    # gossiped ``pause_detail`` while ``paused`` is battery or user-active; else None.
    paused: str | None = None
    engines: tuple[EngineOffer, ...] = ()  # clusters it fronts (gossip ``engines``)
    # Seconds until each shell/python slot can start new work, ascending, as the
    # coordinator estimates from the attempts it sent there (swarmd.core.pricing_eft);
    # () when not estimated: the wait then follows slots_busy and queue.
    free_in_s: tuple[float, ...] = ()


# ---------------------------------------------------------------- from gossip


def _opt_count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    if not math.isfinite(value):
        return default
    return int(value)


def _float(value: Any, default: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return float(value) if math.isfinite(value) else default


def _opt_float(value: Any) -> float | None:
    """A measurement: a finite number >= 0, else None (not measured)."""
    number = _float(value, -1.0)
    return number if number >= 0.0 else None


def _list(value: Any) -> list[Any] | tuple[Any, ...]:
    return value if isinstance(value, (list, tuple)) else ()


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def unavailable(peer: PeerCapacity, exclude: frozenset[str], pinned: str | None) -> list[str]:
    """Why ``peer`` takes no work at all now: liveness, an earlier refusal, a pin to
    another node, draining, a pause (pricing adds battery policy and memory for work
    on the LAN; an engine's pricing does not)."""
    why: list[str] = []
    if not peer.alive:
        why.append("sleeping" if peer.sleeping else "not alive")
    if peer.node_id in exclude:
        why.append("excluded: refused earlier")
    if pinned is not None and pinned not in (peer.name, peer.node_id):
        why.append(f'pinned to node "{pinned}"')
    if peer.draining:
        why.append("draining")
    if peer.paused is not None:
        why.append(f"paused: {peer.paused}")
    return why


def peer_from_gossip(
    node_id: str,
    values: Mapping[str, Any],
    *,
    alive: bool,
    rtt_s: float | None,
    slots_busy: int | None = None,
    model_in_flight: Mapping[str, int] | None = None,
    coordinator_id: str | None = None,
) -> PeerCapacity:
    """Build a :class:`PeerCapacity` from a node's gossiped key-values (as builtins).

    Reads ``name``, ``hw`` ({cpu {cores, load}, memory {available}, battery {plugged} |
    None, gpus [{vram_total, vram_free}]}), ``models`` ([{name, model, capabilities,
    max_concurrency, cost_per_mtok, latency_ms, ttft_ms?, tokens_per_s?, in_flight?}]),
    ``draining`` and
    ``queue``. Optional keys, with these defaults when a node does not gossip them:
    ``slots`` (shell/python slots, default ``cores``), ``busy`` (slots in use, default 0;
    ``slots_busy`` overrides it with what the coordinator knows), ``cost_per_hour``
    (0.0), ``queue_max`` (shell/python subtasks it holds beyond its slots: the
    worker's own limit; absent: ``PricingConfig.max_queue``), ``on_battery`` (the
    battery policy, "pause") and ``speed`` (the declared relative speed, 1.0; anything
    not a finite number > 0 reads as 1.0). Malformed parts read as absent.
    ``paused`` with ``pause_detail`` (a node that decides its own power policy: on
    battery or with its user active it says so; ``on_battery`` is then not consulted,
    only a node that gossips no ``paused`` is held by the ``on_battery`` rule).
    ``model_in_flight`` maps a profile name to this coordinator's requests running
    there; the gossiped ``in_flight`` (per coordinating node) adds the other
    coordinators' (all but ``coordinator_id``).
    """
    hw = _dict(values.get("hw"))
    cpu = _dict(hw.get("cpu"))
    memory = _dict(hw.get("memory"))
    battery = hw.get("battery")
    on_battery = isinstance(battery, Mapping) and battery.get("plugged") is False
    gpus = [g for g in _list(hw.get("gpus")) if isinstance(g, Mapping)]
    cores = max(0, _int(cpu.get("cores")))
    offers = _offers(values.get("models"), model_in_flight or {}, coordinator_id)
    policy = values.get("on_battery")
    decides = "paused" in values  # it applies its own policy and says why it holds
    name = values.get("name")
    speed = _float(values.get("speed"), 1.0)
    return PeerCapacity(
        node_id=node_id,
        name=name if isinstance(name, str) and name else node_id,
        alive=alive,
        draining=values.get("draining") is True,
        on_battery=on_battery,
        battery_policy="run" if decides or policy == "run" else "pause",
        cores=cores,
        load=max(0.0, _float(cpu.get("load"))),
        ram_available=max(0, _int(memory.get("available"))),
        gpus_vram_free=tuple(max(0, _int(g.get("vram_free"))) for g in gpus),
        gpus_vram_total=tuple(max(0, _int(g.get("vram_total"))) for g in gpus),
        slots_total=max(0, _int(values.get("slots"), cores)),
        slots_busy=max(0, slots_busy if slots_busy is not None else _int(values.get("busy"))),
        queue=max(0, _int(values.get("queue"))),
        queue_max=_opt_count(values.get("queue_max")),
        rtt_s=rtt_s,
        cost_per_hour=max(0.0, _float(values.get("cost_per_hour"))),
        models=offers,
        speed=speed if speed > 0.0 else 1.0,
        sleeping=values.get("sleeping") is True,
        paused=_policy_pause(values) if decides else None,
        engines=_engines(values.get("engines")),
    )


def _engines(value: Any) -> tuple[EngineOffer, ...]:
    """The gossiped ``engines`` as offers; malformed entries are skipped."""
    offers = []
    for e in _list(value)[:16]:
        if not isinstance(e, Mapping) or not isinstance(e.get("name"), str):
            continue
        offers.append(
            EngineOffer(
                name=e["name"],
                kind=str(e.get("kind", "")),
                ok=e.get("ok") is True,
                cpus_idle=max(0, _int(e.get("cpus_idle"))),
                gpus_idle=max(0, _int(e.get("gpus_idle"))),
                queue=max(0, _int(e.get("queue"))),
                est_wait_s=max(0.0, _float(e.get("est_wait_s"))),
                overflow_only=e.get("overflow_only") is True,
            )
        )
    return tuple(offers)


def _policy_pause(values: Mapping[str, Any]) -> str | None:
    """The gossiped detail while the node's own policy pauses it (battery, user-active);
    draining and a full disk are read from ``draining``."""
    reason = values.get("paused")
    if reason not in ("battery", "user-active"):
        return None
    detail = values.get("pause_detail")
    return detail if isinstance(detail, str) and detail else str(reason)


def _offers(
    models: Any, in_flight: Mapping[str, int], coordinator_id: str | None
) -> tuple[ModelOffer, ...]:
    """The gossiped ``models`` as offers; malformed entries are skipped."""
    offers: list[ModelOffer] = []
    for m in _list(models):
        if not isinstance(m, Mapping) or not isinstance(m.get("name"), str):
            continue
        caps = _list(m.get("capabilities"))
        others = sum(
            max(0, _int(n)) for by, n in _dict(m.get("in_flight")).items() if by != coordinator_id
        )
        offers.append(
            ModelOffer(
                name=m["name"],
                model=str(m.get("model", "")),
                capabilities=frozenset(c for c in caps if isinstance(c, str)),
                max_concurrency=max(1, _int(m.get("max_concurrency"), 1)),
                cost_per_mtok=max(0.0, _float(m.get("cost_per_mtok"))),
                latency_ms=_opt_float(m.get("latency_ms")),
                tokens_per_s=_opt_float(m.get("tokens_per_s")),
                in_flight=in_flight.get(m["name"], 0) + others,
                ttft_ms=_opt_float(m.get("ttft_ms")),
            )
        )
    return tuple(offers)
