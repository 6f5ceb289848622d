"""The task graph: a job becomes a :class:`TaskRecord` (dependants, the urgency of each
subtask along its longest chain), and a subtask that becomes ready is rendered from the
committed results upstream of it (``{{ ID.stdout }}`` placeholders) into the spec it is
dispatched with and the demand it is priced by.

Pure functions of the records and the pricing configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

from swarmd.core import template
from swarmd.core.gateway import estimate_request_tokens
from swarmd.core.jobspec import (
    DEFAULT_MAX_TOKENS,
    JobError,
    JobSpec,
    SubtaskSpec,
    topological_order,
)
from swarmd.core.pricing import Demand, PricingConfig, estimate_llm_tokens
from swarmd.core.tasks.records import SubtaskRecord, TaskRecord


def new_task(task_id: str, job: JobSpec, submitted: float, pricing: PricingConfig) -> TaskRecord:
    """A fresh record for ``job``, every subtask waiting. JobError if the ids are not
    unique, an ``after`` names an unknown subtask, or the graph has a cycle."""
    if len(set(job.ids)) != len(job.subtasks):
        raise JobError("subtask ids must be unique")
    order = topological_order(job)  # JobError on unknown deps or a cycle
    dependants: dict[str, list[str]] = {s.id: [] for s in job.subtasks}
    for s in job.subtasks:
        for dep in dict.fromkeys(s.after):
            dependants[dep].append(s.id)
    specs = {s.id: s for s in job.subtasks}
    urgency: dict[str, float] = {}
    tail: dict[str, float] = {}
    for sid in reversed(order):  # every dependant first
        below = max((urgency[d] for d in dependants[sid]), default=0.0)
        urgency[sid] = estimate_s(specs[sid], pricing) + below
        tail[sid] = below
    deadline = None if job.deadline_s is None else submitted + job.deadline_s
    return TaskRecord(
        id=task_id,
        spec=job,
        state="pending",
        submitted=submitted,
        finished=None,
        deadline=deadline,
        subtasks={s.id: SubtaskRecord(task_id, s) for s in job.subtasks},
        dependants={k: tuple(v) for k, v in dependants.items()},
        remaining=len(job.subtasks),
        urgency=urgency,
        tail=tail,
    )


def estimate_s(spec: SubtaskSpec, pricing: PricingConfig) -> float:
    """A subtask's run estimate before anything is known of where it runs: its
    ``estimate`` (or the default) for shell/python, its token budget at the default
    rate for llm. Only the ratios matter: it orders a job's ready subtasks."""
    if spec.kind == "llm":
        max_tokens = spec.max_tokens if spec.max_tokens is not None else DEFAULT_MAX_TOKENS
        return max_tokens / pricing.default_tokens_per_s
    if spec.estimate_s is not None:
        return spec.estimate_s
    return pricing.default_shell_s


def upstream_ids(task: TaskRecord, rec: SubtaskRecord) -> list[str]:
    """Every subtask ``rec`` depends on, directly or not."""
    seen: dict[str, None] = {}
    stack = list(rec.spec.after)
    while stack:
        sid = stack.pop()
        if sid in seen:
            continue
        seen[sid] = None
        stack.extend(task.subtasks[sid].spec.after)
    return list(seen)


def _rendered(spec: SubtaskSpec, results: Mapping[str, Mapping[str, Any]]) -> SubtaskSpec:
    """The spec with its placeholders filled in: all of its texts together at most
    template.RENDER_MAX characters (TooLarge before a longer one is built)."""
    left = template.RENDER_MAX

    def fill(text: str) -> str:
        nonlocal left
        out = template.render(text, results, left)
        left -= len(out)
        return out

    run = tuple(fill(arg) for arg in spec.run)
    prompt = None if spec.prompt is None else fill(spec.prompt)
    system = None if spec.system is None else fill(spec.system)
    return replace(spec, run=run, prompt=prompt, system=system)


def render(task: TaskRecord, rec: SubtaskRecord) -> str | None:
    """Set the rendered spec and the pricing demand; an error message if it fails."""
    results = {
        sid: task.subtasks[sid].result.template_fields()  # type: ignore[union-attr]
        for sid in (upstream_ids(task, rec) if rec.spec.after else ())
        if task.subtasks[sid].result is not None
    }
    spec = rec.spec
    templated = "{{" in (spec.prompt or "") or "{{" in (spec.system or "")
    for arg in spec.run:
        templated = templated or "{{" in arg
    try:
        rendered = _rendered(spec, results) if templated else spec  # most have nothing
    except KeyError as exc:
        return f"template: {exc.args[0]}"
    except template.TooLarge as exc:
        return f"template: {template.TooLarge(template.RENDER_MAX, exc.what)}"
    rec.rendered = rendered
    rec.upstream = results if spec.inputs else {}
    rec.demand = _intern(demand_of(rendered))
    return None


def demand_of(spec: SubtaskSpec) -> Demand:
    """What placement prices for ``spec``: its needs, and its tokens estimated from its
    prompt (rendered, or as written before it can be) or its gateway request."""
    est_tokens = 0
    if spec.kind == "llm" and spec.api is not None and spec.request is not None:
        est_tokens = estimate_request_tokens(spec.api, spec.request)
    elif spec.kind == "llm":
        max_tokens = spec.max_tokens if spec.max_tokens is not None else DEFAULT_MAX_TOKENS
        est_tokens = estimate_llm_tokens(spec.prompt or "", max_tokens, spec.system)
    return Demand(
        kind=spec.kind,
        capability=spec.capability,
        model=spec.model,
        min_vram=spec.min_vram,
        min_ram=spec.min_ram,
        node=spec.node,
        engine=spec.engine,
        est_tokens=est_tokens,
        est_seconds=spec.estimate_s,
    )


_DEMANDS: dict[Demand, Demand] = {}  # one object per distinct demand: cheap to compare
_DEMANDS_KEPT: Final = 4096


def _intern(demand: Demand) -> Demand:
    """The one object for this demand: ready subtasks asking alike share it, so the
    queue's and the scheduler's dictionaries of demands compare by identity."""
    known = _DEMANDS.get(demand)
    if known is not None:
        return known
    if len(_DEMANDS) >= _DEMANDS_KEPT:
        _DEMANDS.clear()  # a pure cache: starting over only costs comparisons
    _DEMANDS[demand] = demand
    return demand
