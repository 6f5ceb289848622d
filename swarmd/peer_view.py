"""The peers as pricing and admission see them, built from the gossiped member states.

:meth:`PricingView.capacities` feeds the coordinator's placement (with the freshest
count of attempts each peer holds); :func:`peer_facts` feeds submit-time admission
(can any live peer run this subtask at all?).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .core.failure import Liveness
from .core.gossip import Member
from .core.jobspec import PeerFacts
from .core.pricing import PeerCapacity, peer_from_gossip
from .core.tasks import NodeLoad

REPORT_FRESH_S = 1.0  # a worker's own load report beats its gossip for this long


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


@dataclass(frozen=True, slots=True)
class LoadReport:
    """A worker's load (attempts held) as it said in a message, how many of those were
    this coordinator's when it arrived, and when (monotonic)."""

    load: int
    ours: int
    at: float

    def others(self) -> int:
        """Attempts of other coordinators on that worker."""
        return max(0, self.load - self.ours)


class PricingView:
    def __init__(
        self,
        members: Callable[[], list[Member]],
        reports: Mapping[str, LoadReport],
        own_load: Callable[[], int],
        revoked: Container[str] = (),
        own_models: Callable[[], Mapping[str, Mapping[str, int]]] = dict,
    ) -> None:
        self.members = members
        # llm requests this node's worker holds, per profile and coordinating node id
        self.own_models = own_models
        self.revoked = revoked  # node ids shut out of the cluster: never placed on
        self.reports = reports  # node id -> the latest load it reported (live dict)
        self.own_load = own_load  # attempts this node's worker holds
        # Each member's capacity as last built from its gossip, by (generation, versions).
        self._built: dict[str, tuple[tuple[int, int], PeerCapacity]] = {}

    def capacities(self, loads: dict[str, NodeLoad]) -> list[PeerCapacity]:
        """The peers as pricing sees them, with the freshest count of each one's
        shell/python attempts held: our own exactly, for a peer that spoke in the last
        REPORT_FRESH_S ours now plus what it held of others' then, else the larger of
        ours and what it gossiped (up to a gossip round old). llm requests per model
        profile: ours exactly, plus the other coordinators' as the peer gossips them
        (this node's own worker: as it holds them now)."""
        out = []
        now = time.monotonic()
        cache: dict[str, tuple[tuple[int, int], PeerCapacity]] = {}
        members = self.members()
        me = next((m.node_id for m in members if m.is_self), None)
        for m in members:
            load = loads.get(m.node_id)
            ours = 0 if load is None else load.slots
            report = self.reports.get(m.node_id)
            if m.is_self:
                held = max(ours, self.own_load())
            elif report is not None and now - report.at < REPORT_FRESH_S:
                held = ours + report.others()
            else:
                gossiped = _count(m.state.get("busy")) + _count(m.state.get("queue"))
                held = max(ours, gossiped)
            live = {
                "alive": m.liveness is Liveness.ALIVE and m.node_id not in self.revoked,
                "rtt_s": 0.0 if m.is_self else m.rtt_s,
                "slots_busy": held,
            }
            # Any change to a key raises its version: the sum tells "unchanged" for sure.
            version = (m.state.generation, sum(v.version for v in m.state.kvs.values()))
            known = self._built.get(m.node_id)
            # Built anew when llm requests in flight must be counted in (ours on that
            # peer, or this node's own worker's); else from the cache while its gossip
            # is unchanged.
            if (load is not None and load.models) or (m.is_self and m.state.get("models")):
                values = {k: v.value for k, v in m.state.kvs.items()} | {"queue": 0}
                if m.is_self:
                    values["models"] = _in_flight_now(values.get("models"), self.own_models())
                requests = {} if load is None else load.models
                peer = peer_from_gossip(
                    m.node_id, values, model_in_flight=requests, coordinator_id=me, **live
                )
            elif known is not None and known[0] == version:
                peer = replace(known[1], **live)  # what it gossiped is unchanged
            else:
                values = {k: v.value for k, v in m.state.kvs.items()} | {"queue": 0}
                # the queue is counted in held
                peer = peer_from_gossip(m.node_id, values, coordinator_id=me, **live)
                cache[m.node_id] = (version, peer)
            out.append(peer)
        self._built.update(cache)
        return out


def _in_flight_now(models: Any, held: Mapping[str, Mapping[str, int]]) -> Any:
    """This node's gossiped profiles with the requests its worker holds now."""
    if not isinstance(models, list):
        return models
    return [
        {**p, "in_flight": dict(held.get(str(p.get("name")), {}))} if isinstance(p, dict) else p
        for p in models
    ]


def peer_facts(members: list[Member]) -> list[PeerFacts]:
    """What admission checks a job against: each live peer's capabilities and limits."""
    facts = []
    for m in members:
        if m.liveness is not Liveness.ALIVE:
            continue
        state = m.state
        hw = state.get("hw") or {}
        gpus = hw.get("gpus") or []
        models = state.get("models") or []
        facts.append(
            PeerFacts(
                name=state.get("name") or m.node_id,
                node_id=m.node_id,
                capabilities=frozenset(c for p in models for c in p.get("capabilities", [])),
                models=frozenset(p.get("name", "") for p in models),
                max_vram_total=max((g.get("vram_total", 0) for g in gpus), default=0),
                ram_total=(hw.get("memory") or {}).get("total", 0),
                allow_shell=bool(state.get("allow_shell", True)),
            )
        )
    return facts
