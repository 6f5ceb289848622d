"""Where a ready subtask should run: feasibility first, then an estimated-finish score.

:func:`price` looks at one :class:`Demand` (what the subtask needs) against every known
:class:`PeerCapacity` (what each node offers right now, from gossip) and returns a
:class:`Placement`: the winner and the whole candidate table, so that every decision can
be shown by ``swarmctl explain``.

Feasibility — a peer is a candidate only if all of these hold; every failed check is
written into the candidate's ``why_not`` (several joined with ``"; "``):

* it is alive (suspect, dead, left and sleeping peers are not candidates; the reason
  says ``sleeping`` for a node whose machine suspended) and not draining;
* it is not paused by its own power/presence policy (``paused``: on battery under its
  ``on_battery`` threshold, or its user active with ``when_user_active = "pause"``;
  ``why_not`` says ``paused: DETAIL``, e.g. ``paused: battery 22 % < 30 %``), nor, for
  a node that gossips no ``paused``, on battery with ``battery_policy == "pause"``;
* it is the pinned node, when the demand pins one (by name or by id);
* it is not in ``exclude`` (peers that refused or failed this subtask already);
* some single GPU has ``min_vram`` free, and ``ram_available >= min_ram``;
* llm: it offers a model profile with the requested capability (and/or the named
  profile); among several, the one with the lowest score is chosen;
* shell/python: it has slots (``slots_total > 0``). A full peer stays feasible with a
  queue wait unless ``max_queue`` subtasks or more already wait there
  (``slots_busy + queue - slots_total``; for an llm profile ``in_flight -
  max_concurrency``): "queue full".

Score (seconds; lower is better) = ``wait_s + rtt_s + input_s + run_s + cost_weight *
cost``:

* ``rtt_s``: the measured round trip to the peer, 0 for this node itself.
* ``input_s``: the demand's ``input_s`` entry for the peer (how long until the subtask's
  inputs would be there), 0 when the demand lists none for it; the basis then says
  ``inputs N s``.
* shell/python: ``run_s = (est_seconds or default_shell_s) / speed * max(1, load)``,
  where ``speed`` is the node's declared relative speed (``[hardware] speed``, 1.0 by
  default: ``est_seconds`` are seconds on a speed-1 node) and ``load`` is the 1-minute
  load average per core: an overloaded machine runs slower.
  ``ahead = slots_busy + queue - slots_total + 1``; when ``ahead > 0``
  ``wait_s = queue_slot_wait_s * ahead / slots_total`` (each subtask ahead holds a slot
  for about ``queue_slot_wait_s``), else 0. ``cost = cost_per_hour * run_s / 3600``.
* llm: ``run_s = est_tokens / tokens_per_s + latency_s``. Throughput (completion
  tokens/s) and latency (time to first token) are taken, in this order, from the
  coordinator's own :class:`ThroughputTracker` (EWMAs over the requests it sent, per
  peer and model profile), from the peer's own measurement as it gossips it (EWMAs over
  every request its endpoint served: ``ModelOffer.tokens_per_s`` / ``ttft_ms``; for
  latency then the endpoint probe's ``latency_ms``), or estimated from advertised
  hardware (latency 0):
  with GPUs ``gpu_tokens_per_s_per_gib * (largest GPU's total VRAM in GiB)``, else with
  CPU cores ``cpu_tokens_per_s_per_core * cores / max(1, load)``, else
  ``default_tokens_per_s``; hardware estimates are clamped to
  ``[min_tokens_per_s, max_tokens_per_s]``. With the defaults a 24 GiB GPU is taken as
  60 tokens/s, an 8 GiB GPU as 20, an idle 8-core CPU as 8. The candidate's ``basis``
  says which source was used ("measured", "peer-measured", "estimated ... from"),
  and the requests in flight. ``ahead = in_flight - max_concurrency + 1``; when
  ``ahead > 0`` ``wait_s = run_s * ahead / max_concurrency`` (requests ahead take about
  as long as this one). ``cost = cost_per_mtok * est_tokens / 1e6``.

Ties are broken by node id, so the result is deterministic. An infeasible candidate
never wins; with no feasible peer the winner is ``None`` and ``reason`` says why.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from . import engine_pricing
from .capacity import GiB, Kind, ModelOffer, PeerCapacity, peer_from_gossip
from .throughput import ThroughputTracker

__all__ = [
    "Candidate",
    "Demand",
    "GiB",
    "ModelOffer",
    "PeerCapacity",
    "Placement",
    "PricingConfig",
    "ThroughputTracker",
    "estimate_llm_tokens",
    "explain_table",
    "peer_from_gossip",
    "price",
    "reprice",
]

# ---------------------------------------------------------------- the question


@dataclass(frozen=True, slots=True)
class Demand:
    """What one ready subtask needs, reduced to what pricing looks at."""

    kind: Kind
    capability: str | None = None
    model: str | None = None  # a model profile name (or the served model's name)
    min_vram: int = 0  # bytes, on one GPU
    min_ram: int = 0  # bytes
    node: str | None = None  # pin: node name or id
    engine: str | None = None  # shell: run as a job of this engine (a node fronting it)
    est_tokens: int = 0  # llm: prompt + max_tokens estimate (see estimate_llm_tokens)
    est_seconds: float | None = None  # shell/python: a hint; None = unknown
    # (node id, seconds until this subtask's inputs would be on that node); a node not
    # listed has them at once. Added to the score: data locality.
    input_s: tuple[tuple[str, float], ...] = ()


def estimate_llm_tokens(prompt: str, max_tokens: int, system: str | None = None) -> int:
    """Tokens an llm subtask will use: about 4 characters per prompt token + max_tokens."""
    chars = len(prompt) + (len(system) if system else 0)
    return math.ceil(chars / 4) + max(0, max_tokens)


@dataclass(frozen=True, slots=True)
class PricingConfig:
    cost_weight: float = 0.0  # seconds of estimated finish per unit of cost
    default_shell_s: float = 1.0  # run estimate for shell/python without est_seconds
    queue_slot_wait_s: float = 5.0  # how long each shell/python subtask ahead holds a slot
    max_queue: int = 64  # more subtasks ahead than this: "queue full", not a candidate
    default_tokens_per_s: float = 20.0  # llm, when the peer advertises no hardware at all
    gpu_tokens_per_s_per_gib: float = 2.5  # x the largest GPU's total VRAM in GiB
    cpu_tokens_per_s_per_core: float = 1.0  # x cores / max(1, load), when no GPU
    min_tokens_per_s: float = 1.0  # clamp for hardware estimates
    max_tokens_per_s: float = 200.0


# ---------------------------------------------------------------- the answer


@dataclass(frozen=True, slots=True)
class Candidate:
    """One row of the placement table. Estimates are None when the peer is infeasible."""

    node_id: str
    name: str
    feasible: bool
    why_not: str | None
    wait_s: float | None
    rtt_s: float
    run_s: float | None
    cost: float | None
    score: float | None  # None if infeasible
    model: str | None = None  # the model profile chosen on that peer (llm)
    basis: str | None = None  # where the run estimate came from, e.g. "measured 41.2 tok/s"
    engine: str | None = None  # run as a job of this engine the peer fronts (engine_pricing)
    overflow: bool = False  # that engine is overflow_only


@dataclass(frozen=True, slots=True)
class Placement:
    winner: Candidate | None
    candidates: tuple[Candidate, ...]  # feasible by score, then infeasible by name
    reason: str | None = None  # why there is no winner


# ---------------------------------------------------------------- pricing


def _gib(size: int) -> str:
    return f"{size / GiB:.1f} GiB"


def _names(items: Iterable[str]) -> str:
    found = sorted(set(items))
    return ", ".join(found) if found else "none"


@dataclass(frozen=True, slots=True)
class _Estimate:
    wait_s: float
    run_s: float
    cost: float
    score: float
    model: str | None
    basis: str


def _hardware_tokens_per_s(peer: PeerCapacity, config: PricingConfig) -> tuple[float, str]:
    if peer.gpus_vram_total:
        largest = max(peer.gpus_vram_total)
        raw = config.gpu_tokens_per_s_per_gib * largest / GiB
        source = f"{_gib(largest)} GPU"
    elif peer.cores > 0:
        raw = config.cpu_tokens_per_s_per_core * peer.cores / max(1.0, peer.load)
        source = f"{peer.cores} CPU cores"
    else:
        return config.default_tokens_per_s, "default"
    return min(config.max_tokens_per_s, max(config.min_tokens_per_s, raw)), source


def _llm_speed(
    peer: PeerCapacity,
    offer: ModelOffer,
    config: PricingConfig,
    throughput: ThroughputTracker | None,
) -> tuple[float, str]:
    """Tokens/s and where it came from: measured here, measured by the peer, hardware."""
    own = throughput.tokens_per_s(peer.node_id, offer.name) if throughput else None
    if own is not None and own > 0.0:
        return own, f"measured {own:.1f} tok/s"
    if offer.tokens_per_s is not None and offer.tokens_per_s > 0.0:
        return offer.tokens_per_s, f"peer-measured {offer.tokens_per_s:.1f} tok/s"
    tps, source = _hardware_tokens_per_s(peer, config)
    return tps, f"estimated {tps:.1f} tok/s from {source}"


def _llm_latency(
    peer: PeerCapacity, offer: ModelOffer, throughput: ThroughputTracker | None
) -> tuple[float | None, str]:
    """Seconds to the first token and where it came from (None: not known, taken as 0)."""
    own = throughput.latency_s(peer.node_id, offer.name) if throughput else None
    if own is not None:
        return own, "ttft"
    if offer.ttft_ms is not None:
        return offer.ttft_ms / 1000.0, "peer ttft"
    if offer.latency_ms is not None:
        return offer.latency_ms / 1000.0, "probe latency"
    return None, ""


def _llm_estimate(
    demand: Demand,
    peer: PeerCapacity,
    offer: ModelOffer,
    rtt_s: float,
    config: PricingConfig,
    throughput: ThroughputTracker | None,
) -> _Estimate:
    tps, basis = _llm_speed(peer, offer, config, throughput)
    latency, source = _llm_latency(peer, offer, throughput)
    if latency is not None:
        basis += f", {source} {latency * 1000.0:.0f} ms"
    run_s = max(0, demand.est_tokens) / tps + (latency or 0.0)
    concurrency = max(1, offer.max_concurrency)
    if offer.in_flight > 0:
        basis += f", {offer.in_flight}/{concurrency} in flight"
    ahead = offer.in_flight - concurrency + 1
    wait_s = run_s * ahead / concurrency if ahead > 0 else 0.0
    cost = offer.cost_per_mtok * max(0, demand.est_tokens) / 1e6
    score = wait_s + rtt_s + run_s + config.cost_weight * cost
    return _Estimate(wait_s, run_s, cost, score, offer.name, basis)


def _offer_matches(demand: Demand, offer: ModelOffer) -> bool:
    if demand.model is not None and demand.model not in (offer.name, offer.model):
        return False
    return demand.capability is None or demand.capability in offer.capabilities


def _llm_why_not(demand: Demand, peer: PeerCapacity) -> str:
    if not peer.models:
        return "serves no models"
    if demand.model is not None:
        named = [o for o in peer.models if demand.model in (o.name, o.model)]
        if not named:
            return f'no model profile "{demand.model}" (has: {_names(o.name for o in peer.models)})'
        caps = _names(c for o in named for c in o.capabilities)
        return f'model "{demand.model}" lacks capability "{demand.capability}" (has: {caps})'
    caps = _names(c for o in peer.models for c in o.capabilities)
    return f'no model with capability "{demand.capability}" (has: {caps})'


def _shell_estimate(
    demand: Demand, peer: PeerCapacity, rtt_s: float, config: PricingConfig
) -> _Estimate:
    hint = demand.est_seconds
    hinted = hint is not None and math.isfinite(hint)
    base = max(0.0, hint) if hint is not None and hinted else config.default_shell_s
    speed = peer.speed if math.isfinite(peer.speed) and peer.speed > 0.0 else 1.0
    run_s = base / speed * max(1.0, peer.load)
    ahead = peer.slots_busy + peer.queue - peer.slots_total + 1
    wait_s = config.queue_slot_wait_s * ahead / peer.slots_total if ahead > 0 else 0.0
    cost = peer.cost_per_hour * run_s / 3600.0
    score = wait_s + rtt_s + run_s + config.cost_weight * cost
    basis = f"{'hint' if hinted else 'default'} {base:g} s"
    if speed != 1.0:
        basis += f" / speed {speed:g}"
    if peer.load > 1.0:
        basis += f" x load {peer.load:.2f}"
    return _Estimate(wait_s, run_s, cost, score, None, basis)


def _input_s(demand: Demand, node_id: str) -> float:
    for node, seconds in demand.input_s:
        if node == node_id:
            return seconds if math.isfinite(seconds) and seconds > 0.0 else 0.0
    return 0.0


def _candidate(
    demand: Demand,
    peer: PeerCapacity,
    config: PricingConfig,
    exclude: frozenset[str],
    throughput: ThroughputTracker | None,
) -> Candidate:
    rtt_s = peer.rtt_s if peer.rtt_s is not None and peer.rtt_s > 0.0 else 0.0
    why = _barred(demand, peer, exclude)
    if demand.kind == "llm":
        best, full = _best_llm(demand, peer, config, rtt_s, throughput)
        if full is not None:
            why.append(full)
    elif peer.slots_total <= 0:
        best = None
        why.append(f"runs no {demand.kind} subtasks (0 slots)")
    else:
        best = None
        waiting = peer.slots_busy + peer.queue - peer.slots_total
        limit = config.max_queue if peer.queue_max is None else peer.queue_max
        if waiting >= limit:
            why.append(f"queue full: {waiting} waiting (limit {limit})")
        else:
            best = _shell_estimate(demand, peer, rtt_s, config)
    if best is not None and demand.input_s:
        input_s = _input_s(demand, peer.node_id)
        if input_s > 0.0:
            best = replace(
                best, score=best.score + input_s, basis=f"{best.basis}, inputs {input_s:.3g} s"
            )
    if why or best is None:
        return _infeasible(peer, rtt_s, "; ".join(why) or "not feasible")
    return Candidate(
        node_id=peer.node_id,
        name=peer.name,
        feasible=True,
        why_not=None,
        wait_s=best.wait_s,
        rtt_s=rtt_s,
        run_s=best.run_s,
        cost=best.cost,
        score=best.score,
        model=best.model,
        basis=best.basis,
    )


def _infeasible(peer: PeerCapacity, rtt_s: float, why_not: str) -> Candidate:
    return Candidate(
        node_id=peer.node_id,
        name=peer.name,
        feasible=False,
        why_not=why_not,
        wait_s=None,
        rtt_s=rtt_s,
        run_s=None,
        cost=None,
        score=None,
        model=None,
        basis=None,
    )


def _barred(demand: Demand, peer: PeerCapacity, exclude: frozenset[str]) -> list[str]:
    """Why ``peer`` cannot take ``demand`` whatever its load: liveness, pins, policy,
    memory."""
    why: list[str] = []
    if not peer.alive:
        why.append("sleeping" if peer.sleeping else "not alive")
    if peer.node_id in exclude:
        why.append("excluded: refused earlier")
    if demand.node is not None and demand.node not in (peer.name, peer.node_id):
        why.append(f'pinned to node "{demand.node}"')
    if peer.draining:
        why.append("draining")
    if peer.paused is not None:
        why.append(f"paused: {peer.paused}")
    if peer.on_battery and peer.battery_policy == "pause":
        why.append("on battery (policy pause)")
    if demand.min_vram > 0:
        largest = max(peer.gpus_vram_free, default=None)
        if largest is None:
            why.append(f"needs {_gib(demand.min_vram)} VRAM, no GPU")
        elif largest < demand.min_vram:
            why.append(f"needs {_gib(demand.min_vram)} VRAM, largest free {_gib(largest)}")
    if demand.min_ram > 0 and peer.ram_available < demand.min_ram:
        why.append(f"needs {_gib(demand.min_ram)} RAM, {_gib(peer.ram_available)} available")
    return why


def _best_llm(
    demand: Demand,
    peer: PeerCapacity,
    config: PricingConfig,
    rtt_s: float,
    throughput: ThroughputTracker | None,
) -> tuple[_Estimate | None, str | None]:
    """The best of the peer's model offers for ``demand``, or why there is none."""
    best: _Estimate | None = None
    for offer in peer.models:
        if not _offer_matches(demand, offer):
            continue
        if offer.in_flight - max(1, offer.max_concurrency) >= config.max_queue:
            continue
        est = _llm_estimate(demand, peer, offer, rtt_s, config, throughput)
        if best is None or (est.score, est.model or "") < (best.score, best.model or ""):
            best = est
    if best is not None:
        return best, None
    if any(_offer_matches(demand, o) for o in peer.models):
        return None, f"model queue full (limit {config.max_queue} waiting)"
    return None, _llm_why_not(demand, peer)


_REASON_PEERS = 8  # peers listed by name in Placement.reason


def price(
    demand: Demand,
    peers: Sequence[PeerCapacity],
    config: PricingConfig,
    exclude: frozenset[str] = frozenset(),
    *,
    throughput: ThroughputTracker | None = None,
) -> Placement:
    """Price one demand against every peer; the lowest score among feasible peers wins."""
    rows = [_row(demand, peer, config, exclude, throughput) for peer in peers]
    return _placement(rows)


def _row(
    demand: Demand,
    peer: PeerCapacity,
    config: PricingConfig,
    exclude: frozenset[str],
    throughput: ThroughputTracker | None,
) -> Candidate:
    local = _candidate(demand, peer, config, exclude, throughput)
    return engine_pricing.with_engines(demand, peer, local, config, exclude)


def reprice(
    placement: Placement,
    demand: Demand,
    changed: Sequence[PeerCapacity],
    config: PricingConfig,
    exclude: frozenset[str] = frozenset(),
    *,
    throughput: ThroughputTracker | None = None,
) -> Placement:
    """``placement`` of ``demand`` again after only the ``changed`` peers changed (a
    dispatch made one busier): those are priced anew, the rest kept."""
    rows = {c.node_id: c for c in placement.candidates}
    for peer in changed:
        rows[peer.node_id] = _row(demand, peer, config, exclude, throughput)
    return _placement(list(rows.values()))


def _placement(rows: list[Candidate]) -> Placement:
    rows = engine_pricing.overflow(rows)
    feasible = sorted((c for c in rows if c.feasible), key=lambda c: (c.score or 0.0, c.node_id))
    infeasible = sorted((c for c in rows if not c.feasible), key=lambda c: (c.name, c.node_id))
    candidates = (*feasible, *infeasible)
    if feasible:
        return Placement(winner=feasible[0], candidates=candidates, reason=None)
    if not rows:
        return Placement(winner=None, candidates=(), reason="no peers known")
    shown = [f"{c.name}: {c.why_not}" for c in infeasible[:_REASON_PEERS]]
    more = len(infeasible) - len(shown)
    if more > 0:
        shown.append(f"and {more} more")
    return Placement(
        winner=None,
        candidates=candidates,
        reason=f"no feasible peer among {len(rows)}: " + " | ".join(shown),
    )


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def explain_table(placement: Placement) -> list[dict[str, Any]]:
    """The candidate table as JSON-able rows, winner first (``swarmctl explain``)."""
    winner = placement.winner
    return [
        {
            "peer": c.name,
            "node_id": c.node_id,
            "chosen": winner is not None and c.node_id == winner.node_id,
            "feasible": c.feasible,
            "why_not": c.why_not,
            "model": c.model,
            "wait_s": _round(c.wait_s, 3),
            "rtt_s": _round(c.rtt_s, 3),
            "run_s": _round(c.run_s, 3),
            "cost": _round(c.cost, 6),
            "score": _round(c.score, 3),
            "basis": c.basis,
            **({} if c.engine is None else {"engine": c.engine}),
        }
        for c in placement.candidates
    ]
