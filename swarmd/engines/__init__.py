"""Engines: a node fronting a batch cluster (Slurm, Ray) runs subtasks as engine jobs.

An engine adapter (:mod:`.slurm`, :mod:`.ray`) turns a :class:`JobSpec` into a job of its
cluster and reports what became of it. The adapter's wrapper writes the command's
output to ``job.workdir/"stdout"`` and ``job.workdir/"stderr"``; after a terminal phase
both files are there. Phases:

- ``queued``: the engine holds the job (``reason`` carries the engine's: Resources,
  Priority, ...); ``running``: the command runs;
- ``succeeded``: exit 0; ``failed``: the command exited non-zero (an application
  failure, ``exit_code`` set);
- ``engine_failed``: the engine lost, preempted or failed the job (node failure, a
  timeout of the engine's own, ...): the attempt is lost and retried by the usual policy;
- ``cancelled``: cancelled (by swarmd or by hand); ``unknown``: the engine does not
  know the job (any more).

:class:`EngineError` means the engine could not be reached or refused the request: the
attempt is lost (retried elsewhere or later), never an application failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

JobPhase = Literal[
    "queued", "running", "succeeded", "failed", "engine_failed", "cancelled", "unknown"
]
TERMINAL_PHASES: frozenset[str] = frozenset({"succeeded", "failed", "engine_failed", "cancelled"})


@dataclass(frozen=True)
class EngineCapacity:
    cpus_idle: int
    gpus_idle: int
    mem_idle_mb: int
    running: int  # jobs running now (all of the engine's, not only swarmd's)
    queued: int  # jobs waiting
    est_wait_s: float  # queue wait estimate for a new small job


@dataclass(frozen=True)
class JobSpec:
    name: str
    workdir: Path  # a per-attempt dir under the engine's shared workdir, inputs in it
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cpus: int = 1
    gpus: int = 0
    mem_mb: int = 0  # 0: the engine's default
    timeout_s: float | None = None


@dataclass(frozen=True)
class JobStatus:
    phase: JobPhase
    reason: str = ""
    exit_code: int | None = None

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES


class EngineError(Exception):
    """The engine could not be reached or refused: the attempt is lost, and retried."""


class Engine(Protocol):
    name: str  # the [engines.NAME] it was configured as
    kind: str  # "slurm" | "ray"

    async def capacity(self) -> EngineCapacity: ...
    async def submit(self, job: JobSpec) -> str: ...  # the engine's job id
    async def status(self, job_id: str) -> JobStatus: ...
    async def cancel(self, job_id: str) -> None: ...
    async def close(self) -> None: ...


__all__ = [
    "TERMINAL_PHASES",
    "Engine",
    "EngineCapacity",
    "EngineError",
    "JobPhase",
    "JobSpec",
    "JobStatus",
]
