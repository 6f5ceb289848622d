"""Pricing a shell subtask on the engines a peer fronts (Slurm, Ray: ``[engines.NAME]``).

A peer that fronts engines offers each of them besides its own slots, as a peer that
serves several model profiles offers each: its row in the placement table is the best
of its options, and ``engine`` in the row says which engine won (None: its own slots).

* A subtask that names ``engine = "NAME"`` runs only as a job of that engine: the peers
  that do not front it are not candidates ("fronts no engine"), nor one whose engine
  cannot be read ("engine not answering").
* Any other shell subtask may go to an engine when that is its earliest finish.
* The engine's estimate: ``wait_s = est_wait_s`` (its queue wait, as the fronting peer
  estimates it from the engine's own queue) ``+ ENGINE_START_S`` (submit to running);
  ``run_s`` the run hint (or the default), as on a speed-1 node; no load, no queue of
  the peer's own slots. The basis says so, e.g. ``engine hpc (slurm): queue 3, wait
  12 s + start 1 s; hint 30 s``.
* ``overflow_only`` engines: not a candidate for a subtask that does not name them
  while some LAN peer has a free slot (:func:`overflow`): the LAN first, then the
  cluster.

Sans-I/O; candidates are built from the peer's own row (``dataclasses.replace``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from .capacity import EngineOffer, PeerCapacity, unavailable

if TYPE_CHECKING:
    from .pricing import Candidate, Demand, PricingConfig

ENGINE_START_S: Final = 1.0  # submit -> running on an idle engine (Slurm 22.05 here: ~0.9 s)
OVERFLOW_WHY: Final = "overflow only: a LAN peer has a free slot"


def _row(demand: Demand, offer: EngineOffer, local: Candidate, config: PricingConfig) -> Candidate:
    hint = demand.est_seconds
    hinted = hint is not None and math.isfinite(hint)
    run_s = max(0.0, hint) if hint is not None and hinted else config.default_shell_s
    wait_s = offer.est_wait_s + ENGINE_START_S
    basis = (
        f"engine {offer.name} ({offer.kind}): queue {offer.queue}, wait {offer.est_wait_s:.3g} s"
        f" + start {ENGINE_START_S:g} s; {'hint' if hinted else 'default'} {run_s:g} s"
    )
    return replace(
        local,
        feasible=True,
        why_not=None,
        wait_s=wait_s,
        run_s=run_s,
        cost=0.0,
        score=wait_s + local.rtt_s + run_s,
        model=None,
        basis=basis,
        engine=offer.name,
        overflow=offer.overflow_only and demand.engine is None,
    )


def _no(local: Candidate, why: str) -> Candidate:
    return replace(
        local,
        feasible=False,
        why_not=why,
        wait_s=None,
        run_s=None,
        cost=None,
        score=None,
        model=None,
        basis=None,
        engine=None,
        overflow=False,
    )


def with_engines(
    demand: Demand,
    peer: PeerCapacity,
    local: Candidate,
    config: PricingConfig,
    exclude: frozenset[str] = frozenset(),
) -> Candidate:
    """The peer's row: ``local`` (its own slots, priced as usual) or one of its
    engines, whichever finishes first; only the named engine if the demand names one."""
    if demand.engine is None and (demand.kind != "shell" or not peer.engines):
        return local
    why = unavailable(peer, exclude, demand.node)
    if demand.engine is not None:
        named = [o for o in peer.engines if o.name == demand.engine]
        if not named:
            fronts = ", ".join(sorted(o.name for o in peer.engines)) or "none"
            why.append(f'fronts no engine "{demand.engine}" (has: {fronts})')
        elif not named[0].ok:
            why.append(f'engine "{demand.engine}" not answering')
        return _no(local, "; ".join(why)) if why else _row(demand, named[0], local, config)
    if why:
        return local
    best = local
    for offer in peer.engines:
        if not offer.ok:
            continue
        row = _row(demand, offer, local, config)
        if not best.feasible or (row.score or 0.0) < (best.score or 0.0):
            best = row
    return best


def overflow(rows: Sequence[Candidate]) -> list[Candidate]:
    """``overflow_only`` engine rows are not candidates while a LAN peer has a free slot
    (a feasible row of its own slots without a wait)."""
    if not any(c.overflow for c in rows):
        return list(rows)
    lan_free = any(c.feasible and c.engine is None and (c.wait_s or 0.0) <= 0.0 for c in rows)
    if not lan_free:
        return list(rows)
    return [_no(c, OVERFLOW_WHY) if c.overflow else c for c in rows]
