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

_JOB_KEYS: Final = ("name", "priority", "deadline", "subtask", "subtasks")


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
                f"(allowed: name, priority, deadline, [[subtask]])"
            )

    name = _default_name(source)
    if "name" in data:
        value = data["name"]
        if not isinstance(value, str) or not value.strip():
            problems.add(f"expected a non-empty string, got {type_name(value)}", key="name")
        elif len(value) > MAX_NAME_LENGTH or not value.isprintable():
            problems.add(f"must be printable and at most {MAX_NAME_LENGTH} characters", key="name")
        else:
            name = value

    priority: Priority = "normal"
    if "priority" in data:
        if isinstance(data["priority"], str) and data["priority"] in PRIORITY_RANK:
            priority = cast(Priority, data["priority"])
        else:
            problems.add(bad_priority(data["priority"]), key="priority")

    deadline_s: float | None = None
    if "deadline" in data:
        try:
            deadline_s = parse_duration(data["deadline"])
        except (ValueError, TypeError) as exc:
            problems.add(str(exc), key="deadline")
        else:
            if deadline_s <= 0:
                problems.add("must be longer than zero", key="deadline")
                deadline_s = None

    present = [k for k in ("subtask", "subtasks") if k in data]
    raw_subtasks: object = []
    if len(present) == 2:
        problems.add('give the subtasks under one key, "subtask" or "subtasks", not both')
    elif not present:
        problems.add(
            'the job has no subtasks (add [[subtask]] tables, or a "subtasks" list in JSON)'
        )
    else:
        raw_subtasks = data[present[0]]
    drafts: list[Draft] = []
    if len(present) == 1:
        key = present[0]
        if not isinstance(raw_subtasks, list):
            problems.add(
                f"expected a list of subtask tables, got {type_name(raw_subtasks)}", key=key
            )
        elif not raw_subtasks:
            problems.add("the job has no subtasks", key=key)
        elif len(raw_subtasks) > MAX_SUBTASKS:
            problems.add(
                f"{len(raw_subtasks)} subtasks; at most {MAX_SUBTASKS} are allowed", key=key
            )
        else:
            for pos, raw in enumerate(raw_subtasks):
                if not isinstance(raw, Mapping):
                    problems.add(f"expected a table, got {type_name(raw)}", f"#{pos + 1}", pos=pos)
                    continue
                drafts.append(read_subtask(pos, raw, priority, problems))

    check_graph(drafts, problems)
    problems.raise_if_any()
    return JobSpec(
        name=name,
        priority=priority,
        deadline_s=deadline_s,
        subtasks=tuple(d.spec() for d in drafts),
    )
