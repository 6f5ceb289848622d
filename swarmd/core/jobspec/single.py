"""One-subtask jobs built from command-line options (``swarmctl submit -- CMD`` and
``--prompt``): read by the job reader, with errors naming the flags."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any, Final

from .errors import JobError
from .job import parse_job
from .spec import SINGLE_SUBTASK_ID, JobSpec

_FLAGS: Final[Mapping[str, str]] = {
    "name": "--name",
    "priority": "--priority",
    "deadline": "--deadline",
    "capability": "--capability",
    "model": "--model",
    "min_vram": "--min-vram",
    "engine": "--engine",
    "timeout": "--timeout",
    "prompt": "--prompt",
    "max_tokens": "--max-tokens",
    "system": "--system",
    "run": "command",
}


def _single_job(data: dict[str, Any], source: str) -> JobSpec:
    """Parse a one-subtask job built from command-line options; errors name the flags."""
    try:
        return parse_job(data, source=source)
    except JobError as exc:
        errors = [
            JobError(e.message, None, _FLAGS.get(e.key or "", e.key), source=source)
            for e in exc.errors
        ]
        raise JobError.combine(errors) from None


def _options(
    name: str | None,
    priority: str,
    deadline: str | float | None,
    capability: str | None,
    min_vram: str | int | None,
    timeout: str | float | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    job: dict[str, Any] = {"priority": priority}
    if name is not None:
        job["name"] = name
    if deadline is not None:
        job["deadline"] = deadline
    subtask: dict[str, Any] = {"id": SINGLE_SUBTASK_ID}
    if capability is not None:
        subtask["capability"] = capability
    if min_vram is not None:
        subtask["min_vram"] = min_vram
    if timeout is not None:
        subtask["timeout"] = timeout
    return job, subtask


def single_command_job(
    argv: Sequence[str],
    *,
    name: str | None = None,
    priority: str = "normal",
    deadline: str | float | None = None,
    capability: str | None = None,
    min_vram: str | int | None = None,
    timeout: str | float | None = None,
    engine: str | None = None,
    source: str = "swarmctl submit",
) -> JobSpec:
    """The job of ``swarmctl submit [options] -- CMD ARG...``: one shell subtask "main"
    (``engine``: as a job of that engine). The job name defaults to the command's base
    name."""
    job, subtask = _options(name, priority, deadline, capability, min_vram, timeout)
    if engine is not None:
        subtask["engine"] = engine
    if not argv:
        raise JobError("give a command to run after --", source=source)
    if name is None:
        base = PurePosixPath(argv[0].replace("\\", "/")).name
        job["name"] = base if base.isprintable() and base else "command"
    subtask.update(kind="shell", run=list(argv))
    job["subtasks"] = [subtask]
    return _single_job(job, source)


def single_prompt_job(
    prompt: str,
    capability: str | None = None,
    *,
    model: str | None = None,
    name: str | None = None,
    priority: str = "normal",
    deadline: str | float | None = None,
    min_vram: str | int | None = None,
    timeout: str | float | None = None,
    max_tokens: int | None = None,
    system: str | None = None,
    source: str = "swarmctl submit",
) -> JobSpec:
    """The job of ``swarmctl submit --prompt TEXT --capability CAP``: one llm subtask
    "main" (``model`` names a profile instead of a capability). Name defaults to "prompt"."""
    if capability is None and model is None:
        raise JobError(
            "give --capability CAP to say which kind of model should answer", source=source
        )
    job, subtask = _options(name, priority, deadline, capability, min_vram, timeout)
    job.setdefault("name", "prompt")
    subtask.update(kind="llm", prompt=prompt)
    if model is not None:
        subtask["model"] = model
    if max_tokens is not None:
        subtask["max_tokens"] = max_tokens
    if system is not None:
        subtask["system"] = system
    job["subtasks"] = [subtask]
    return _single_job(job, source)
