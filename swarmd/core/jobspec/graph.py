"""The dependency graph of a job: unique ids, ``after`` edges and template references
checked across subtasks, cycles found and spelt out, and the order to run subtasks in."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from swarmd.core import template

from .errors import JobError, Problems
from .spec import JobSpec
from .subtask import Draft
from .wording import cycle_text, listing, quote, suggest


@dataclass(frozen=True)
class _Known:
    """The subtasks with a usable id, first of each id in file order."""

    by_id: dict[str, Draft]
    ids: list[str]
    listing: str  # the ids as listed in messages

    @classmethod
    def of(cls, by_id: dict[str, Draft]) -> _Known:
        ids = list(by_id)
        return cls(by_id, ids, listing(ids))

    def unknown(self, name: str) -> str:
        """The message for a reference to a subtask that does not exist."""
        return f"unknown subtask {quote(name)}{suggest(name, self.ids)} (known: {self.listing})"


def check_graph(drafts: list[Draft], problems: Problems) -> None:
    """Ids, ``after`` edges, cycles and template references across subtasks."""
    known = _Known.of(_unique_ids(drafts, problems))
    deps = _after_edges(known, problems)
    position = {i: d.pos for i, d in known.by_id.items()}
    for cycle in find_cycles(known.ids, deps, position):
        problems.add(
            f"dependency cycle {cycle_text(cycle)} (each waits for the next)",
            cycle[0],
            "after",
            position[cycle[0]],
        )
    _check_references(known, deps, problems)
    _check_upstream_inputs(known, deps, problems)


def _check_upstream_inputs(
    known: _Known, deps: Mapping[str, Sequence[str]], problems: Problems
) -> None:
    """``upstream_inputs`` entries name ``SUBTASK/PATH`` of a subtask upstream of this
    one, and no two land at the same PATH."""
    is_upstream = _upstream_test(deps)
    for d in known.by_id.values():
        landed: dict[str, str] = {}
        for item in d.values.get("upstream_inputs", ()):
            why = _upstream_input_problem(item, d, known, is_upstream, landed)
            if why is not None:
                problems.add(f"{quote(item)}: {why}", d.label, "upstream_inputs", d.pos)


def _upstream_input_problem(
    item: str,
    d: Draft,
    known: _Known,
    is_upstream: Callable[[str, str], bool],
    landed: dict[str, str],
) -> str | None:
    source, _, path = item.partition("/")
    if not path:
        return "expected SUBTASK/PATH (an artifact of an upstream subtask)"
    if source not in known.by_id:
        return known.unknown(source)
    if source == d.id:
        return "a subtask cannot use its own artifacts"
    if not is_upstream(source, d.label):
        return f'subtask {quote(source)} is not upstream of {quote(d.label)}; add it to "after"'
    where = path.rstrip("/")
    if where in landed:
        return f"lands at {quote(where)} like {quote(landed[where])}"
    landed[where] = item
    return None


def _unique_ids(drafts: list[Draft], problems: Problems) -> dict[str, Draft]:
    """The first subtask of each id; later ones with the same id are reported."""
    first: dict[str, Draft] = {}
    for d in drafts:
        if d.id is None:
            continue
        if d.id in first:
            problems.add(
                f"duplicate id {quote(d.id)} (also used by subtask #{first[d.id].pos + 1}); "
                "ids must be unique",
                f"#{d.pos + 1}",
                "id",
                d.pos,
            )
        else:
            first[d.id] = d
    return first


def _after_edges(known: _Known, problems: Problems) -> dict[str, list[str]]:
    """Each subtask's usable ``after`` edges; edges to itself or to no subtask reported."""
    deps: dict[str, list[str]] = {}
    for d in known.by_id.values():
        edges: list[str] = []
        for dep in d.after:
            if dep == d.id:
                problems.add("a subtask cannot wait for itself", d.label, "after", d.pos)
            elif dep not in known.by_id:
                problems.add(known.unknown(dep), d.label, "after", d.pos)
            else:
                edges.append(dep)
        deps[d.label] = edges
    return deps


def _check_references(known: _Known, deps: Mapping[str, Sequence[str]], problems: Problems) -> None:
    """Template placeholders must name a known field of an upstream subtask."""
    is_upstream = _upstream_test(deps)
    for d in known.by_id.values():
        if d.kind is None:
            continue
        texts = [("run", a) for a in d.values.get("run", ())]
        texts += [(k, d.values[k]) for k in ("prompt", "system") if d.values.get(k) is not None]
        for key, text in texts:
            for ph in template.placeholders(text):
                why = _reference_problem(ph, d, known, is_upstream)
                if why is not None:
                    problems.add(why, d.label, key, d.pos)


def _reference_problem(
    ph: template.Placeholder, d: Draft, known: _Known, is_upstream: Callable[[str, str], bool]
) -> str | None:
    """What is wrong with placeholder ``ph`` in subtask ``d``, or None. An unknown field
    is reported only when the placeholder names a subtask (else it is not a placeholder)."""
    if not ph.known:
        if ph.subtask not in known.by_id:
            return None
        return (
            f"{ph.text}: unknown field {quote(ph.field)}"
            f"{suggest(ph.field, template.FIELDS)} "
            f"(expected one of {', '.join(template.FIELDS)})"
        )
    if ph.subtask == d.id:
        return f"{ph.text}: a subtask cannot use its own result"
    if ph.subtask not in known.by_id:
        return f"{ph.text}: {known.unknown(ph.subtask)}"
    if not is_upstream(ph.subtask, d.label):
        return (
            f"{ph.text}: subtask {quote(ph.subtask)} is not upstream of "
            f'{quote(d.label)}; add it to "after"'
        )
    return None


def _upstream_test(deps: Mapping[str, Sequence[str]]) -> Callable[[str, str], bool]:
    """A function telling whether ``a`` is upstream of ``b`` (``b`` waits for it, directly
    or transitively; ``a != b``). Built on first use: strongly connected components
    (so cycles cost nothing extra), then each component's upstreams as a bitset."""
    comp: dict[str, int] = {}
    upstream_bits: list[int] = []

    def build() -> None:
        comp.update(_components(deps))
        members: list[list[str]] = [[] for _ in range(max(comp.values(), default=-1) + 1)]
        for node, c in comp.items():
            members[c].append(node)
        # Components come out dependencies first, so each one's upstreams are ready.
        for c, nodes in enumerate(members):
            bits = 0
            for node in nodes:
                for dep in deps[node]:
                    d = comp[dep]
                    bits |= 1 << d if d == c else upstream_bits[d] | 1 << d
            upstream_bits.append(bits)

    def test(a: str, b: str) -> bool:
        if a in deps[b]:
            return True
        if not comp:
            build()
        ca, cb = comp[a], comp[b]
        return ca == cb or bool(upstream_bits[cb] >> ca & 1)

    return test


def _components(deps: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Tarjan's strongly connected components (iterative): node -> component number,
    numbered so that a component comes after every component it waits for."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comp: dict[str, int] = {}
    count = 0

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)

    for root in deps:
        if root in index:
            continue
        visit(root)
        work = [(root, 0)]
        while work:
            node, i = work[-1]
            edges = deps[node]
            if i < len(edges):
                work[-1] = (node, i + 1)
                child = edges[i]
                if child not in index:
                    visit(child)
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp[member] = count
                    if member == node:
                        break
                count += 1
    return comp


def find_cycles(
    ids: Sequence[str], deps: Mapping[str, Sequence[str]], position: Mapping[str, int]
) -> list[list[str]]:
    """Dependency cycles, each as a path ``[a, b, ..., a]`` along ``after`` edges, starting
    at its first subtask in file order. Disjoint cycles are all reported; within a
    tangle of overlapping cycles, one."""
    dependants: dict[str, list[str]] = {i: [] for i in ids}
    waiting = {i: len(deps.get(i, ())) for i in ids}
    for i in ids:
        for dep in deps.get(i, ()):
            dependants[dep].append(i)
    remaining = set(ids)
    ready = [i for i in ids if waiting[i] == 0]

    def resolve(nodes: list[str]) -> None:
        while nodes:
            node = nodes.pop()
            if node not in remaining:
                continue
            remaining.discard(node)
            for child in dependants[node]:
                if child in remaining:
                    waiting[child] -= 1
                    if waiting[child] == 0:
                        nodes.append(child)

    resolve(ready)
    cycles: list[list[str]] = []
    while remaining:
        # Every remaining subtask waits for another remaining one: walking those edges
        # from any of them must come back to a subtask already on the path.
        node = min(remaining, key=position.__getitem__)
        path: list[str] = []
        on_path: dict[str, int] = {}
        while node not in on_path:
            on_path[node] = len(path)
            path.append(node)
            node = next(d for d in deps[node] if d in remaining)
        loop = path[on_path[node] :]
        start = min(range(len(loop)), key=lambda k: position[loop[k]])
        loop = loop[start:] + loop[:start]
        cycles.append([*loop, loop[0]])
        resolve(list(loop))
    return cycles


def topological_order(job: JobSpec) -> list[str]:
    """Subtask ids so that each comes after everything it waits for; among subtasks
    that are ready at the same time, file order. JobError on a cycle."""
    position = {s.id: i for i, s in enumerate(job.subtasks)}
    waiting = {s.id: 0 for s in job.subtasks}
    dependants: dict[str, list[str]] = {s.id: [] for s in job.subtasks}
    for s in job.subtasks:
        for dep in set(s.after):
            if dep not in position:
                raise JobError(f"unknown subtask {quote(dep)}", s.id, "after")
            dependants[dep].append(s.id)
            waiting[s.id] += 1
    ready = [position[i] for i, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node = job.subtasks[heapq.heappop(ready)].id
        order.append(node)
        for child in dependants[node]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, position[child])
    if len(order) != len(job.subtasks):
        deps = {s.id: list(s.after) for s in job.subtasks}
        cycle = find_cycles(list(position), deps, position)[0]
        raise JobError(f"dependency cycle {cycle_text(cycle)}", cycle[0], "after")
    return order
