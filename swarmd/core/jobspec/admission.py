"""Admission against the live cluster at submit time: :class:`PeerFacts` about each
live peer, :func:`check_feasible` refusing subtasks that no live peer could run, and
:func:`resolve_pins` turning a ``node`` pin given as an id prefix into the full id."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final

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
    engines: frozenset[str] = frozenset()  # the [engines.NAME] it fronts


@dataclass(frozen=True)
class _Cluster:
    """The live peers, and what any of them offers."""

    peers: Sequence[PeerFacts]
    capabilities: frozenset[str]
    models: frozenset[str]

    @classmethod
    def of(cls, peers: Sequence[PeerFacts]) -> _Cluster:
        capabilities = frozenset[str]().union(*(p.capabilities for p in peers))
        models = frozenset[str]().union(*(p.models for p in peers))
        return cls(peers, capabilities, models)


@dataclass(frozen=True)
class _Constraint:
    """One constraint of a subtask, and the live peers that meet it."""

    what: str  # as named in messages, e.g. 'capability "code"'
    having: list[PeerFacts]
    key: str | None  # the subtask key a problem is reported under
    problem: str | None  # why the constraint cannot be met; None when it can


def _pin_matches(pin: str, peers: Sequence[PeerFacts]) -> list[PeerFacts]:
    """The peers a ``node`` pin names: the one with that name, else those whose id
    starts with it."""
    by_name = [p for p in peers if p.name == pin]
    return by_name or [p for p in peers if p.node_id.startswith(pin)]


def _names(peers: Iterable[PeerFacts]) -> str:
    return listing(p.name for p in peers)


# ---------------------------------------------------------------------------- constraints
# One function per constraint: None when the subtask does not have it.


def _capability(s: SubtaskSpec, cluster: _Cluster) -> _Constraint | None:
    if s.capability is None:
        return None
    having = [p for p in cluster.peers if s.capability in p.capabilities]
    problem = None
    if not having:
        problem = (
            f"no live peer offers {quote(s.capability)}"
            f"{suggest(s.capability, cluster.capabilities)} "
            f"(the cluster has: {listing(cluster.capabilities)})"
        )
    return _Constraint(f"capability {quote(s.capability)}", having, "capability", problem)


def _model(s: SubtaskSpec, cluster: _Cluster) -> _Constraint | None:
    if s.model is None:
        return None
    having = [p for p in cluster.peers if s.model in p.models]
    problem = None
    if not having:
        problem = (
            f"no live peer has a model profile {quote(s.model)}"
            f"{suggest(s.model, cluster.models)} "
            f"(profiles in the cluster: {listing(cluster.models)})"
        )
    return _Constraint(f"model {quote(s.model)}", having, "model", problem)


def _engine(s: SubtaskSpec, cluster: _Cluster) -> _Constraint | None:
    if s.engine is None:
        return None
    having = [p for p in cluster.peers if s.engine in p.engines]
    problem = None
    if not having:
        known = frozenset[str]().union(*(p.engines for p in cluster.peers))
        problem = (
            f"no live peer fronts an engine {quote(s.engine)}{suggest(s.engine, known)} "
            f"(engines in the cluster: {listing(known)})"
        )
    return _Constraint(f"engine {quote(s.engine)}", having, "engine", problem)


def _min_vram(s: SubtaskSpec, cluster: _Cluster) -> _Constraint | None:
    if s.min_vram <= 0 or s.engine is not None:  # an engine job: the engine's GPUs
        return None
    having = [p for p in cluster.peers if p.max_vram_total >= s.min_vram]
    problem = None
    if not having:
        best = max(cluster.peers, key=lambda p: p.max_vram_total)
        if best.max_vram_total <= 0:
            problem = f"{format_size(s.min_vram)} needed, but no live peer has a GPU"
        else:
            problem = (
                f"{format_size(s.min_vram)} needed, but the largest GPU on a live peer "
                f"has {format_size(best.max_vram_total)} ({best.name})"
            )
    return _Constraint(f"min_vram {format_size(s.min_vram)}", having, "min_vram", problem)


def _min_ram(s: SubtaskSpec, cluster: _Cluster) -> _Constraint | None:
    if s.min_ram <= 0 or s.engine is not None:  # an engine job: the engine's memory
        return None
    having = [p for p in cluster.peers if p.ram_total >= s.min_ram]
    problem = None
    if not having:
        best = max(cluster.peers, key=lambda p: p.ram_total)
        problem = (
            f"{format_size(s.min_ram)} needed, but the most memory on a live peer is "
            f"{format_size(best.ram_total)} ({best.name})"
        )
    return _Constraint(f"min_ram {format_size(s.min_ram)}", having, "min_ram", problem)


def _node(s: SubtaskSpec, cluster: _Cluster) -> _Constraint | None:
    if s.node is None:
        return None
    having = _pin_matches(s.node, cluster.peers)
    problem = None
    if not having:
        problem = (
            f"no live peer is named {quote(s.node)} or has an id starting with it "
            f"(live peers: {_names(cluster.peers)})"
        )
    elif len(having) > 1:
        problem = (
            f"{quote(s.node)} matches several peers "
            f"({', '.join(f'{p.name} ({p.node_id})' for p in having)}); "
            "give more of the id"
        )
    return _Constraint(f"node {quote(s.node)}", having, "node", problem)


def _shell_allowed(s: SubtaskSpec, cluster: _Cluster) -> _Constraint | None:
    """Python calls run arbitrary code too: they need ``allow_shell`` like shell."""
    if s.kind not in ("shell", "python"):
        return None
    having = [p for p in cluster.peers if p.allow_shell]
    problem = None
    if not having:
        problem = (
            f"no live peer allows {s.kind} subtasks (allow_shell = false on "
            f"{_names(cluster.peers)})"
        )
    return _Constraint(f"{s.kind} subtasks allowed", having, None, problem)


_CONSTRAINTS: Final[tuple[Callable[[SubtaskSpec, _Cluster], _Constraint | None], ...]] = (
    _capability,
    _model,
    _engine,
    _min_vram,
    _min_ram,
    _node,
    _shell_allowed,
)


# ---------------------------------------------------------------------------- the check


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
    cluster = _Cluster.of(peers)
    for pos, s in enumerate(job.subtasks):
        constraints = [c for check in _CONSTRAINTS if (c := check(s, cluster)) is not None]
        ok = True
        for c in constraints:
            if c.problem is not None:
                problems.add(c.problem, s.id, c.key, pos)
                ok = False
        if ok and (apart := _met_only_apart(constraints)) is not None:
            problems.add(apart, s.id, None, pos)
    problems.raise_if_any()


def _met_only_apart(constraints: Sequence[_Constraint]) -> str | None:
    """When each constraint is met somewhere but no single peer meets them all: where
    each is met."""
    if len(constraints) <= 1:
        return None
    sets = [{p.node_id for p in c.having} for c in constraints]
    if set.intersection(*sets):
        return None
    facts = "; ".join(f"{c.what} on {_names(c.having)}" for c in constraints)
    return f"no single live peer meets all its constraints: {facts}"


def resolve_pins(job: JobSpec, peers: Sequence[PeerFacts]) -> JobSpec:
    """The job with each ``node`` pin that names a peer by an id prefix replaced by
    that peer's full id; ``job`` itself when there is none.

    Placement matches a pin against a peer's name or its full id only, so a prefix
    left as it is would pass :func:`check_feasible` and then never be placed. Call it
    after :func:`check_feasible` (which refuses an unknown or ambiguous pin) with the
    same ``peers``. A pin by name stays a name.
    """
    subtasks = list(job.subtasks)
    for i, s in enumerate(subtasks):
        if s.node is None:
            continue
        matches = _pin_matches(s.node, peers)
        if len(matches) == 1 and matches[0].name != s.node and matches[0].node_id != s.node:
            subtasks[i] = replace(s, node=matches[0].node_id)
    if subtasks == list(job.subtasks):
        return job
    return replace(job, subtasks=tuple(subtasks))
