"""The rows of ``swarmctl peers`` (and the dashboard's): each member's gossiped state
as a :class:`~protocol.messages.PeerView`, what is not valid left out."""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.messages import Hardware, ModelProfile, PeerView
from protocol.state import Engines

from .core.gossip import Member

__all__ = ["peer_view", "peers"]


def _hardware(value: Any) -> Hardware | None:
    if value is None:
        return None
    try:
        return msgspec.convert(value, Hardware)
    except msgspec.ValidationError:
        return None  # validated on receipt; this only guards our own bugs


def peer_view(member: Member) -> PeerView:
    node = member.state
    hw = _hardware(node.get("hw"))
    models: list[dict[str, Any]] = []
    for raw in node.get("models") or []:
        try:
            m = msgspec.convert(raw, ModelProfile)
        except msgspec.ValidationError:
            continue
        models.append(
            {
                "name": m.name,
                "model": m.model,
                "endpoint": m.endpoint,
                "capabilities": list(m.capabilities),
                "latency_ms": m.latency_ms,
                "max_concurrency": m.max_concurrency,
                "cost_per_mtok": m.cost_per_mtok,
                "ttft_ms": m.ttft_ms,  # measured on that node (EWMA), null until then
                "tokens_per_s": m.tokens_per_s,
                "in_flight": sum((m.in_flight or {}).values()),  # all coordinators'
            }
        )
    return PeerView(
        id=node.node_id,
        name=node.get("name") or node.node_id,
        address=node.get("addr") or "",
        state=member.liveness.value,
        is_self=member.is_self,
        generation=node.generation,
        draining=bool(node.get("draining", False)),
        rtt_ms=None if member.rtt_s is None else round(member.rtt_s * 1000, 3),
        last_seen_s=None if member.last_seen_s is None else round(member.last_seen_s, 3),
        cpu={"cores": hw.cpu.cores, "load": hw.cpu.load, "model": hw.cpu.model}
        if hw
        else {"cores": None, "load": None, "model": None},
        memory={"total": hw.memory.total, "available": hw.memory.available}
        if hw
        else {"total": None, "available": None},
        gpus=[
            {
                "name": g.name,
                "vram_total": g.vram_total,
                "vram_free": g.vram_free,
                "source": g.source,
                "utilization": g.utilization,
                "temperature": g.temperature,
            }
            for g in (hw.gpus if hw else [])
        ],
        models=models,
        battery=msgspec.to_builtins(hw.battery) if hw and hw.battery else None,
        refusing=node.get("refusing") if isinstance(node.get("refusing"), str) else None,
        engines=_engines(node.get("engines")),
        **_presence(node.get("power"), node.get("paused"), node.get("pause_detail")),
    )


def _engines(value: Any) -> list[dict[str, Any]]:
    """The engines a peers row shows (validated on receipt; [] when not gossiped)."""
    try:
        engines = msgspec.convert(value or [], Engines)
    except msgspec.ValidationError:
        return []
    return [msgspec.to_builtins(e) for e in engines]


def _presence(power: Any, paused: Any, detail: Any) -> dict[str, Any]:
    """``power``, ``paused`` and ``pause_detail`` of a peers row (validated on receipt;
    absent for a node that does not gossip them)."""
    return {
        "power": power if isinstance(power, dict) else None,
        "paused": paused if isinstance(paused, str) else None,
        "pause_detail": detail if isinstance(detail, str) else None,
    }


def peers(members: list[Member]) -> list[PeerView]:
    views = [peer_view(m) for m in members]
    views.sort(key=lambda p: (not p.is_self, p.name, p.id))
    return views
