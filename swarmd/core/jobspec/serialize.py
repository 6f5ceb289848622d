"""A :class:`JobSpec` written back as JSON-able data that :func:`parse_job` reads into
an equal spec: how a job travels to the coordinator."""

from __future__ import annotations

from typing import Any

from .spec import JobSpec


def job_to_data(job: JobSpec) -> dict[str, Any]:
    """The job as a JSON-able mapping that :func:`parse_job` turns back into an equal
    spec (durations in seconds, sizes in bytes, defaults written out)."""
    subtasks: list[dict[str, Any]] = []
    for s in job.subtasks:
        entry: dict[str, Any] = {"id": s.id, "kind": s.kind}
        if s.kind == "shell":
            entry["run"] = list(s.run)
        elif s.kind == "llm":
            entry["prompt"] = s.prompt
            if s.model is not None:
                entry["model"] = s.model
            if s.max_tokens is not None:
                entry["max_tokens"] = s.max_tokens
            if s.system is not None:
                entry["system"] = s.system
        else:
            entry["call"] = s.call
            if s.args:
                entry["args"] = list(s.args)
            if s.kwargs:
                entry["kwargs"] = dict(s.kwargs)
        if s.capability is not None:
            entry["capability"] = s.capability
        if s.after:
            entry["after"] = list(s.after)
        entry["priority"] = s.priority
        if s.timeout_s is not None:
            entry["timeout"] = s.timeout_s
        if s.estimate_s is not None:
            entry["estimate"] = s.estimate_s
        entry["retries"] = s.retries
        if s.retry_on_error:
            entry["retry_on_error"] = True
        if s.min_vram:
            entry["min_vram"] = s.min_vram
        if s.min_ram:
            entry["min_ram"] = s.min_ram
        if s.node is not None:
            entry["node"] = s.node
        if s.env:
            entry["env"] = dict(s.env)
        if s.inputs:
            entry["inputs"] = list(s.inputs)
        if s.outputs:
            entry["outputs"] = list(s.outputs)
        subtasks.append(entry)
    data: dict[str, Any] = {"name": job.name, "priority": job.priority, "subtasks": subtasks}
    if job.deadline_s is not None:
        data["deadline"] = job.deadline_s
    return data
