"""Admission against the live cluster at submit time: :class:`PeerFacts` about each
live peer, and :func:`check_feasible` refusing subtasks that no live peer could run."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import JobError, Problems
from .spec import JobSpec, SubtaskSpec
from .wording import format_size, listing, quote, suggest


@dataclass(frozen=True)
class PeerFacts:
    """What submit-time validation needs to know about one live peer."""

    name: str
    node_id: str
    capabilities: frozenset[str]  # union of its model profiles' capabilities
    models: frozenset[str]  # its model profile names
    max_vram_total: int  # bytes, its largest GPU's total VRAM (0 without a GPU)
    ram_total: int  # bytes
    allow_shell: bool


def _pin_matches(pin: str, peers: Sequence[PeerFacts]) -> list[PeerFacts]:
    by_name = [p for p in peers if p.name == pin]
    return by_name or [p for p in peers if p.node_id.startswith(pin)]


def _names(peers: Iterable[PeerFacts]) -> str:
    return listing(p.name for p in peers)


def check_feasible(job: JobSpec, peers: Sequence[PeerFacts]) -> None:
    """Refuse subtasks that no live peer could run, listing every problem.

    ``peers`` are the live peers (alive, self included), draining or not: a draining
    or busy peer may take work later, a missing capability will not appear by waiting.
    Each constraint is checked alone first (capability, model profile, min_vram,
    min_ram, node pin, shell permission — python calls count as shell); when each is
    met somewhere but no single peer meets them all, the message says where each is met.
    """
    problems = Problems(None)
    if not peers:
        raise JobError("no live peers in the cluster to run this job")
    capabilities = frozenset[str]().union(*(p.capabilities for p in peers))
    models = frozenset[str]().union(*(p.models for p in peers))

    for pos, s in enumerate(job.subtasks):

        def error(key: str | None, message: str, s: SubtaskSpec = s, pos: int = pos) -> None:
            problems.add(message, s.id, key, pos)

        # (description, peers meeting it) for every constraint of the subtask
        constraints: list[tuple[str, list[PeerFacts]]] = []
        ok = True
        if s.capability is not None:
            having = [p for p in peers if s.capability in p.capabilities]
            if not having:
                error(
                    "capability",
                    f"no live peer offers {quote(s.capability)}"
                    f"{suggest(s.capability, capabilities)} "
                    f"(the cluster has: {listing(capabilities)})",
                )
                ok = False
            constraints.append((f"capability {quote(s.capability)}", having))
        if s.model is not None:
            having = [p for p in peers if s.model in p.models]
            if not having:
                error(
                    "model",
                    f"no live peer has a model profile {quote(s.model)}"
                    f"{suggest(s.model, models)} (profiles in the cluster: {listing(models)})",
                )
                ok = False
            constraints.append((f"model {quote(s.model)}", having))
        if s.min_vram > 0:
            having = [p for p in peers if p.max_vram_total >= s.min_vram]
            if not having:
                best = max(peers, key=lambda p: p.max_vram_total)
                if best.max_vram_total <= 0:
                    error(
                        "min_vram", f"{format_size(s.min_vram)} needed, but no live peer has a GPU"
                    )
                else:
                    error(
                        "min_vram",
                        f"{format_size(s.min_vram)} needed, but the largest GPU on a live peer "
                        f"has {format_size(best.max_vram_total)} ({best.name})",
                    )
                ok = False
            constraints.append((f"min_vram {format_size(s.min_vram)}", having))
        if s.min_ram > 0:
            having = [p for p in peers if p.ram_total >= s.min_ram]
            if not having:
                best = max(peers, key=lambda p: p.ram_total)
                error(
                    "min_ram",
                    f"{format_size(s.min_ram)} needed, but the most memory on a live peer is "
                    f"{format_size(best.ram_total)} ({best.name})",
                )
                ok = False
            constraints.append((f"min_ram {format_size(s.min_ram)}", having))
        if s.node is not None:
            having = _pin_matches(s.node, peers)
            if not having:
                error(
                    "node",
                    f"no live peer is named {quote(s.node)} or has an id starting with it "
                    f"(live peers: {_names(peers)})",
                )
                ok = False
            elif len(having) > 1:
                error(
                    "node",
                    f"{quote(s.node)} matches several peers "
                    f"({', '.join(f'{p.name} ({p.node_id})' for p in having)}); "
                    "give more of the id",
                )
                ok = False
            constraints.append((f"node {quote(s.node)}", having))
        if s.kind in ("shell", "python"):
            having = [p for p in peers if p.allow_shell]
            if not having:
                error(
                    None,
                    f"no live peer allows {s.kind} subtasks (allow_shell = false on "
                    f"{_names(peers)})",
                )
                ok = False
            constraints.append((f"{s.kind} subtasks allowed", having))

        if ok and len(constraints) > 1:
            sets = [{p.node_id for p in having} for _, having in constraints]
            if not set.intersection(*sets):
                facts = "; ".join(f"{what} on {_names(having)}" for what, having in constraints)
                error(None, f"no single live peer meets all its constraints: {facts}")

    problems.raise_if_any()
