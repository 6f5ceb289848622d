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
  inputs would be there: :mod:`swarmd.core.locality`), 0 when the demand lists none for
  it; the basis then says ``inputs N s``. The inputs travel while the subtask waits for
  a slot, so the score takes the later of the two: ``max(wait_s, input_s)``.
* shell/python: ``run_s = (est_seconds or default_shell_s) / speed * max(1, load)``,
  where ``speed`` is the node's declared relative speed (``[hardware] speed``, 1.0 by
  default: ``est_seconds`` are seconds on a speed-1 node) and ``load`` is the 1-minute
  load average per core: an overloaded machine runs slower.
  ``wait_s`` is ``free_in_s[0]`` when the coordinator estimated the peer's slots from
  the attempts it holds there (:mod:`swarmd.core.pricing_eft`); otherwise
  ``ahead = slots_busy + queue - slots_total + 1`` and when ``ahead > 0``
  ``wait_s = queue_slot_wait_s * ahead / slots_total`` (each subtask ahead holds a slot
  for about ``queue_slot_wait_s``), else 0. ``cost = cost_per_hour * run_s / 3600``.
  A subtask with an estimate goes into a busy peer's queue only if ``free_in_s[0] <=
  queue_ahead_s`` (late binding; ``why_not`` says ``busy for N s: kept here until due``).
  A peer whose queue is full (or that binds late) gets ``later_s``, its score should the
  subtask wait for it, when it frees within ``lookahead_max_s``; the lowest ``later_s``
  that beats the winner's score is ``Placement.wait_for`` (look-ahead).
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeAlias

from . import engine_pricing
from .capacity import GiB, ModelOffer, PeerCapacity, peer_from_gossip, unavailable
from .pricing_llm import best_llm
from .pricing_types import Demand, Estimate, PricingConfig, gib
from .throughput import ThroughputTracker

# node id -> seconds until each of its slots is free, as the scheduler estimated them
# this pass (overrides PeerCapacity.free_in_s, without copying every peer)
FreeIn: TypeAlias = Mapping[str, tuple[float, ...]]

__all__ = [
    "Candidate",
    "Demand",
    "FreeIn",
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


def estimate_llm_tokens(prompt: str, max_tokens: int, system: str | None = None) -> int:
    """Tokens an llm subtask will use: about 4 characters per prompt token + max_tokens."""
    chars = len(prompt) + (len(system) if system else 0)
    return math.ceil(chars / 4) + max(0, max_tokens)


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
    input_s: float = 0.0  # until its inputs would be there (data locality)
    # Its queue is full: the score it would have if the subtask waited in the
    # coordinator for a slot there (look-ahead, swarmd.core.pricing_eft); else None.
    later_s: float | None = None


@dataclass(frozen=True, slots=True)
class Placement:
    winner: Candidate | None
    candidates: tuple[Candidate, ...]  # feasible by score, then infeasible by name
    reason: str | None = None  # why there is no winner
    # A busier peer (queue full now) where the subtask would finish sooner than on the
    # winner if it waited for it (look-ahead); None: dispatch to the winner.
    wait_for: Candidate | None = None


# ---------------------------------------------------------------- pricing


def _shell_estimate(
    demand: Demand, peer: PeerCapacity, rtt_s: float, config: PricingConfig, first: float | None
) -> Estimate:
    hint = demand.est_seconds
    hinted = hint is not None and math.isfinite(hint)
    base = max(0.0, hint) if hint is not None and hinted else config.default_shell_s
    speed = peer.speed if math.isfinite(peer.speed) and peer.speed > 0.0 else 1.0
    run_s = base / speed * max(1.0, peer.load)
    if first is not None:
        wait_s = first  # the work it holds, as this coordinator estimates it
    else:
        ahead = peer.slots_busy + peer.queue - peer.slots_total + 1
        wait_s = config.queue_slot_wait_s * ahead / peer.slots_total if ahead > 0 else 0.0
    cost = peer.cost_per_hour * run_s / 3600.0
    score = wait_s + rtt_s + run_s + config.cost_weight * cost
    basis = f"{'hint' if hinted else 'default'} {base:g} s"
    if speed != 1.0:
        basis += f" / speed {speed:g}"
    if peer.load > 1.0:
        basis += f" x load {peer.load:.2f}"
    return Estimate(wait_s, run_s, cost, score, None, basis)


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
    free_in: FreeIn | None = None,
) -> Candidate:
    rtt_s = peer.rtt_s if peer.rtt_s is not None and peer.rtt_s > 0.0 else 0.0
    why = _barred(demand, peer, exclude)
    later: Estimate | None = None
    if demand.kind == "llm":
        best, full = best_llm(demand, peer, config, rtt_s, throughput)
        if full is not None:
            why.append(full)
    elif peer.slots_total <= 0:
        best = None
        why.append(f"runs no {demand.kind} subtasks (0 slots)")
    else:
        best = None
        waiting = peer.slots_busy + peer.queue - peer.slots_total
        limit = config.max_queue if peer.queue_max is None else peer.queue_max
        free = free_in.get(peer.node_id) if free_in else None
        free = peer.free_in_s if free is None else free
        first = free[0] if free else None
        if waiting < limit and not _binds_late(demand, first, waiting, config):
            best = _shell_estimate(demand, peer, rtt_s, config, first)
        else:
            if not why and first is not None and first <= config.lookahead_max_s:
                later = _shell_estimate(demand, peer, rtt_s, config, first)
            if waiting >= limit:
                why.append(f"queue full: {waiting} waiting (limit {limit})")
            else:
                why.append(f"busy for {first:.3g} s: kept here until due")
    input_s = _input_s(demand, peer.node_id) if demand.input_s else 0.0
    if why or best is None:
        if later is None:
            return _infeasible(peer, rtt_s, "; ".join(why) or "not feasible")
        later_s = later.score + max(0.0, input_s - later.wait_s)
        return _infeasible(peer, rtt_s, "; ".join(why), later_s, input_s, later.run_s)
    best = _with_inputs(best, input_s)
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
        input_s=input_s,
    )


def _binds_late(demand: Demand, first: float | None, waiting: int, config: PricingConfig) -> bool:
    """A subtask with a run estimate is sent to a busy worker's queue only when a slot
    there frees within ``queue_ahead_s``; further ahead the coordinator keeps it and
    decides again nearer the time (late binding), with what it knows then."""
    return (
        waiting >= 0
        and demand.est_seconds is not None
        and first is not None
        and first > config.queue_ahead_s
    )


def _with_inputs(est: Estimate, input_s: float) -> Estimate:
    """The inputs travel while the subtask waits for a slot: the later of the two."""
    if input_s <= 0.0:
        return est
    extra = max(0.0, input_s - est.wait_s)
    return replace(est, score=est.score + extra, basis=f"{est.basis}, inputs {input_s:.3g} s")


def _infeasible(
    peer: PeerCapacity,
    rtt_s: float,
    why_not: str,
    later_s: float | None = None,
    input_s: float = 0.0,
    run_s: float | None = None,
) -> Candidate:
    """A peer that cannot take the subtask now; ``later_s`` (with ``run_s``, its run
    there): the score it would have once a slot frees, for look-ahead."""
    return Candidate(
        node_id=peer.node_id,
        name=peer.name,
        feasible=False,
        why_not=why_not,
        wait_s=None,
        rtt_s=rtt_s,
        run_s=run_s,
        cost=None,
        score=None,
        model=None,
        basis=None,
        input_s=input_s,
        later_s=later_s,
    )


def _barred(demand: Demand, peer: PeerCapacity, exclude: frozenset[str]) -> list[str]:
    """Why ``peer`` cannot take ``demand`` whatever its load: liveness, pins, policy,
    memory."""
    why = unavailable(peer, exclude, demand.node)
    if peer.on_battery and peer.battery_policy == "pause":
        why.append("on battery (policy pause)")
    if demand.min_vram > 0:
        largest = max(peer.gpus_vram_free, default=None)
        if largest is None:
            why.append(f"needs {gib(demand.min_vram)} VRAM, no GPU")
        elif largest < demand.min_vram:
            why.append(f"needs {gib(demand.min_vram)} VRAM, largest free {gib(largest)}")
    if demand.min_ram > 0 and peer.ram_available < demand.min_ram:
        why.append(f"needs {gib(demand.min_ram)} RAM, {gib(peer.ram_available)} available")
    return why


_REASON_PEERS = 8  # peers listed by name in Placement.reason


def price(
    demand: Demand,
    peers: Sequence[PeerCapacity],
    config: PricingConfig,
    exclude: frozenset[str] = frozenset(),
    *,
    throughput: ThroughputTracker | None = None,
    free_in: FreeIn | None = None,
) -> Placement:
    """Price one demand against every peer; the lowest score among feasible peers wins."""
    rows = [_row(demand, peer, config, exclude, throughput, free_in) for peer in peers]
    return _placement(rows, config)


def _row(
    demand: Demand,
    peer: PeerCapacity,
    config: PricingConfig,
    exclude: frozenset[str],
    throughput: ThroughputTracker | None,
    free_in: FreeIn | None,
) -> Candidate:
    local = _candidate(demand, peer, config, exclude, throughput, free_in)
    return engine_pricing.with_engines(demand, peer, local, config, exclude)


def reprice(
    placement: Placement,
    demand: Demand,
    changed: Sequence[PeerCapacity],
    config: PricingConfig,
    exclude: frozenset[str] = frozenset(),
    *,
    throughput: ThroughputTracker | None = None,
    free_in: FreeIn | None = None,
) -> Placement:
    """``placement`` of ``demand`` again after only the ``changed`` peers changed (a
    dispatch made one busier): those are priced anew, the rest kept."""
    rows = {c.node_id: c for c in placement.candidates}
    for peer in changed:
        rows[peer.node_id] = _row(demand, peer, config, exclude, throughput, free_in)
    return _placement(list(rows.values()), config)


def _placement(rows: list[Candidate], config: PricingConfig | None = None) -> Placement:
    rows = engine_pricing.overflow(rows)
    feasible = sorted((c for c in rows if c.feasible), key=lambda c: (c.score or 0.0, c.node_id))
    infeasible = sorted((c for c in rows if not c.feasible), key=lambda c: (c.name, c.node_id))
    candidates = (*feasible, *infeasible)
    if feasible:
        wait_for = _wait_for(feasible[0], infeasible, config) if config is not None else None
        return Placement(feasible[0], candidates, None, wait_for)
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


def _wait_for(
    winner: Candidate, infeasible: list[Candidate], config: PricingConfig
) -> Candidate | None:
    """The full peer worth waiting for (look-ahead): the lowest ``later_s``, if it beats
    the winner's score by more than ``lookahead_margin`` of it."""
    best: Candidate | None = None
    for c in infeasible:
        if c.later_s is not None and (
            best is None or (c.later_s, c.node_id) < (best.later_s or 0.0, best.node_id)
        ):
            best = c
    if best is None or best.later_s is None or winner.score is None:
        return None
    return best if best.later_s < winner.score * (1.0 - config.lookahead_margin) else None


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
            "input_s": _round(c.input_s, 3),
            "later_s": _round(c.later_s, 3),
        }
        for c in placement.candidates
    ]
