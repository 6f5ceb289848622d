"""A :class:`JobSpec` written back as JSON-able data that :func:`parse_job` reads into
an equal spec: how a job travels to the coordinator.

Each subtask key is written from a table (key, spec field, when written, conversion):
the kind's own keys first, then the common ones, in the order of the tables."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from .spec import JobSpec, SubtaskSpec


def _always(value: object) -> bool:
    return True


def _is_set(value: object) -> bool:
    return value is not None


def _same(value: Any) -> Any:
    return value


# (key, SubtaskSpec field, written when, written as); bool: when not empty/zero/false
_Rule = tuple[str, str, Callable[[Any], bool], Callable[[Any], Any]]

_PYTHON_KEYS: Final[tuple[_Rule, ...]] = (
    ("call", "call", _always, _same),
    ("args", "args", bool, list),
    ("kwargs", "kwargs", bool, dict),
)
_KIND_KEYS: Final[Mapping[str, tuple[_Rule, ...]]] = {
    "shell": (("run", "run", _always, list), ("engine", "engine", _is_set, _same)),
    "llm": (
        ("prompt", "prompt", _is_set, _same),
        ("model", "model", _is_set, _same),
        ("max_tokens", "max_tokens", _is_set, _same),
        ("system", "system", _is_set, _same),
        ("api", "api", _is_set, _same),
        ("request", "request", _is_set, dict),
        ("client", "client", _is_set, _same),
    ),
    "python": _PYTHON_KEYS,
}
_COMMON_KEYS: Final[tuple[_Rule, ...]] = (
    ("capability", "capability", _is_set, _same),
    ("after", "after", bool, list),
    ("priority", "priority", _always, _same),
    ("timeout", "timeout_s", _is_set, _same),
    ("estimate", "estimate_s", _is_set, _same),
    ("retries", "retries", _always, _same),
    ("retry_on_error", "retry_on_error", bool, bool),
    ("min_vram", "min_vram", bool, _same),
    ("min_ram", "min_ram", bool, _same),
    ("node", "node", _is_set, _same),
    ("env", "env", bool, dict),
    ("inputs", "inputs", bool, list),
    ("upstream_inputs", "upstream_inputs", bool, list),
    ("outputs", "outputs", bool, list),
)


def job_to_data(job: JobSpec) -> dict[str, Any]:
    """The job as a JSON-able mapping that :func:`parse_job` turns back into an equal
    spec (durations in seconds, sizes in bytes, defaults written out)."""
    subtasks = [_subtask_to_data(s) for s in job.subtasks]
    data: dict[str, Any] = {"name": job.name, "priority": job.priority, "subtasks": subtasks}
    if job.deadline_s is not None:
        data["deadline"] = job.deadline_s
    if job.deadline_best_effort:
        data["deadline_best_effort"] = True
    return data


def _subtask_to_data(s: SubtaskSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": s.id, "kind": s.kind}
    for key, name, written, convert in (*_KIND_KEYS.get(s.kind, _PYTHON_KEYS), *_COMMON_KEYS):
        value = getattr(s, name)
        if written(value):
            entry[key] = convert(value)
    return entry
