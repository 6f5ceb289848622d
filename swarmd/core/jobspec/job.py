"""The job reader: a job table read from TOML or JSON becomes a :class:`JobSpec`, or
one :class:`JobError` listing every problem found in it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any, Final, cast

from swarmd.core.units import parse_duration

from .errors import Problems
from .graph import check_graph
from .spec import MAX_NAME_LENGTH, MAX_SUBTASKS, PRIORITY_RANK, JobSpec, Priority
from .subtask import Draft, read_subtask
from .wording import bad_priority, quote, suggest, type_name

_JOB_KEYS: Final = ("name", "priority", "deadline", "deadline_best_effort", "subtask", "subtasks")


def _default_name(source: str) -> str:
    stem = PurePosixPath(source.replace("\\", "/")).name
    for suffix in (".toml", ".json"):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return "job"


def parse_job(data: Mapping[str, Any], *, source: str = "job") -> JobSpec:
    """Validate a job read from TOML or JSON and return its spec.

    Raises one :class:`JobError` listing every problem found (``source`` prefixes each
    line, e.g. the file name). A missing ``name`` defaults to the file name without
    ``.toml``/``.json`` (else ``"job"``).
    """
    problems = Problems(source)
    if not isinstance(data, Mapping):
        problems.add(f"expected a table at the top level, got {type_name(data)}")
        problems.raise_if_any()

    for key in data:
        if key not in _JOB_KEYS:
            problems.add(
                f"unknown key {quote(str(key))} at the top level{suggest(str(key), _JOB_KEYS)} "
                f"(allowed: name, priority, deadline, deadline_best_effort, [[subtask]])"
            )
    name = _read_name(data, source, problems)
    priority = _read_priority(data, problems)
    deadline_s = _read_deadline(data, problems)
    best_effort = _read_best_effort(data, deadline_s, problems)
    drafts = _read_subtasks(data, priority, problems)
    check_graph(drafts, problems)
    problems.raise_if_any()
    return JobSpec(
        name=name,
        priority=priority,
        deadline_s=deadline_s,
        subtasks=tuple(d.spec() for d in drafts),
        deadline_best_effort=best_effort,
    )


def _read_name(data: Mapping[str, Any], source: str, problems: Problems) -> str:
    if "name" not in data:
        return _default_name(source)
    value = data["name"]
    if not isinstance(value, str) or not value.strip():
        problems.add(f"expected a non-empty string, got {type_name(value)}", key="name")
    elif len(value) > MAX_NAME_LENGTH or not value.isprintable():
        problems.add(f"must be printable and at most {MAX_NAME_LENGTH} characters", key="name")
    else:
        return value
    return _default_name(source)


def _read_priority(data: Mapping[str, Any], problems: Problems) -> Priority:
    if "priority" not in data:
        return "normal"
    value = data["priority"]
    if isinstance(value, str) and value in PRIORITY_RANK:
        return cast(Priority, value)
    problems.add(bad_priority(value), key="priority")
    return "normal"


def _read_deadline(data: Mapping[str, Any], problems: Problems) -> float | None:
    if "deadline" not in data:
        return None
    try:
        deadline_s = parse_duration(data["deadline"])
    except (ValueError, TypeError) as exc:
        problems.add(str(exc), key="deadline")
        return None
    if deadline_s <= 0:
        problems.add("must be longer than zero", key="deadline")
        return None
    return deadline_s


def _read_best_effort(
    data: Mapping[str, Any], deadline_s: float | None, problems: Problems
) -> bool:
    value = data.get("deadline_best_effort", False)
    if not isinstance(value, bool):
        problems.add(f"expected true or false, got {type_name(value)}", key="deadline_best_effort")
        return False
    if value and deadline_s is None and "deadline" not in data:
        problems.add(
            "needs a deadline (it says what to do when one cannot be met)",
            key="deadline_best_effort",
        )
        return False
    return value


def _read_subtasks(data: Mapping[str, Any], priority: Priority, problems: Problems) -> list[Draft]:
    """The subtask tables under ``subtask`` (TOML's ``[[subtask]]``) or ``subtasks``."""
    present = [k for k in ("subtask", "subtasks") if k in data]
    if len(present) == 2:
        problems.add('give the subtasks under one key, "subtask" or "subtasks", not both')
        return []
    if not present:
        problems.add(
            'the job has no subtasks (add [[subtask]] tables, or a "subtasks" list in JSON)'
        )
        return []
    key = present[0]
    raw_subtasks = data[key]
    if not isinstance(raw_subtasks, list):
        problems.add(f"expected a list of subtask tables, got {type_name(raw_subtasks)}", key=key)
    elif not raw_subtasks:
        problems.add("the job has no subtasks", key=key)
    elif len(raw_subtasks) > MAX_SUBTASKS:
        problems.add(f"{len(raw_subtasks)} subtasks; at most {MAX_SUBTASKS} are allowed", key=key)
    else:
        drafts: list[Draft] = []
        for pos, raw in enumerate(raw_subtasks):
            if isinstance(raw, Mapping):
                drafts.append(read_subtask(pos, raw, priority, problems))
            else:
                problems.add(f"expected a table, got {type_name(raw)}", f"#{pos + 1}", pos=pos)
        return drafts
    return []
