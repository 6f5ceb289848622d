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
from .core.pricing import ModelOffer, PeerCapacity, peer_from_gossip
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
            if known is not None and known[0] == version:
                base = known[1]  # what it gossiped is unchanged
            else:
                values = {k: v.value for k, v in m.state.kvs.items()} | {"queue": 0}
                # the queue is counted in held
                base = peer_from_gossip(m.node_id, values, coordinator_id=me, **live)
                cache[m.node_id] = (version, base)
            # llm requests in flight counted in: ours on that peer, and for this node
            # the other coordinators' as its own worker holds them now.
            requests = {} if load is None else load.models
            if m.is_self and base.models:
                held = self.own_models()
                counts = {
                    o.name: requests.get(o.name, 0) + _others(held.get(o.name), me)
                    for o in base.models
                }
                out.append(replace(base, models=_with_in_flight(base.models, counts), **live))
            elif requests:
                counts = {o.name: o.in_flight + requests.get(o.name, 0) for o in base.models}
                out.append(replace(base, models=_with_in_flight(base.models, counts), **live))
            else:
                out.append(replace(base, **live))
        self._built.update(cache)
        return out


def _others(held: Mapping[str, int] | None, me: str | None) -> int:
    """Requests a worker holds for coordinators other than ``me``."""
    return sum(n for by, n in (held or {}).items() if by != me and n > 0)


def _with_in_flight(
    offers: tuple[ModelOffer, ...], counts: Mapping[str, int]
) -> tuple[ModelOffer, ...]:
    return tuple(
        o if o.in_flight == counts[o.name] else replace(o, in_flight=counts[o.name]) for o in offers
    )


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
                engines=frozenset(
                    e["name"]
                    for e in (state.get("engines") or [])
                    if isinstance(e, dict) and isinstance(e.get("name"), str)
                ),
            )
        )
    return facts
