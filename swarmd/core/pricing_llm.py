"""llm pricing: a peer's best model profile for a demand, its speed and latency, and
why none fits (see :mod:`swarmd.core.pricing` for the rules)."""

from __future__ import annotations

from .capacity import GiB, ModelOffer, PeerCapacity
from .pricing_types import Demand, Estimate, PricingConfig, gib, names
from .throughput import ThroughputTracker

__all__ = ["best_llm"]


def _hardware_tokens_per_s(peer: PeerCapacity, config: PricingConfig) -> tuple[float, str]:
    if peer.gpus_vram_total:
        largest = max(peer.gpus_vram_total)
        raw = config.gpu_tokens_per_s_per_gib * largest / GiB
        source = f"{gib(largest)} GPU"
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
) -> Estimate:
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
    return Estimate(wait_s, run_s, cost, score, offer.name, basis)


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
            return f'no model profile "{demand.model}" (has: {names(o.name for o in peer.models)})'
        caps = names(c for o in named for c in o.capabilities)
        return f'model "{demand.model}" lacks capability "{demand.capability}" (has: {caps})'
    caps = names(c for o in peer.models for c in o.capabilities)
    return f'no model with capability "{demand.capability}" (has: {caps})'


def best_llm(
    demand: Demand,
    peer: PeerCapacity,
    config: PricingConfig,
    rtt_s: float,
    throughput: ThroughputTracker | None,
) -> tuple[Estimate | None, str | None]:
    """The best of the peer's model offers for ``demand``, or why there is none."""
    best: Estimate | None = None
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
