"""Executors: run one attempt of a subtask on this node and describe what happened.

The worker turns a dispatched subtask into an :class:`ExecRequest` (prompt already
rendered, input files already read, the ``[models.NAME]`` profile already chosen) and
awaits :func:`execute`. Whatever happens — the command fails, the endpoint answers 4xx,
the function raises, the time runs out — the answer is an :class:`ExecResult`, never an
exception; only cancellation of the awaiting coroutine propagates (after the child
processes are gone).

``app_failed`` separates the subtask's own failures (non-zero exit, HTTP 4xx, a Python
exception, a timeout, a bad spec) from the node's (endpoint down or overloaded after the
retries, a refused kind): the coordinator retries the latter elsewhere and the former
only when the subtask asks for ``retry_on_error``.

One file per kind: :mod:`.shell`, :mod:`.python` (a persistent pool of worker
processes), :mod:`.llm` (OpenAI-compatible chat completions), :mod:`.passthrough` (the
gateway's OpenAI requests, passed to the endpoint as they came); :mod:`.workdir` holds the
private working directory (inputs in, artifacts out) and :mod:`.output` the bounded
capture of stdout/stderr.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    import httpx

    from swarmd.blobs import Spooled
    from swarmd.executors.output import LiveOutput
    from swarmd.executors.python import PythonPool
    from swarmd.http_client import HttpPool

ExecKind = Literal["shell", "llm", "python"]

Progress = Callable[[str], None]
"""Called with short status lines while a subtask runs (the worker turns them into
heartbeats). It must not block; exceptions it raises are swallowed."""

MiB: Final = 1024 * 1024
_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


@dataclass(frozen=True)
class Limits:
    """Per-attempt size limits of this node (bytes)."""

    max_output_bytes: int = 1 * MiB  # stdout and stderr each; the tail is kept
    max_artifact_bytes: int = 64 * MiB  # all collected outputs together
    max_input_bytes: int = 64 * MiB  # all input files together
    max_artifact_files: int = 100_000  # collected outputs (files) of one attempt


@dataclass(frozen=True)
class ExecRequest:
    task_id: str
    subtask_id: str
    attempt: int
    kind: ExecKind
    run: tuple[str, ...] = ()  # shell: argv, run without a shell
    env: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    inputs: Mapping[str, bytes] = field(default_factory=dict)  # relative path -> content
    outputs: tuple[str, ...] = ()  # relative files or directories collected as artifacts
    prompt: str | None = None  # llm, already rendered
    system: str | None = None
    max_tokens: int = 256
    endpoint: str | None = None  # llm: from the chosen [models.NAME] profile
    model: str | None = None
    call: str | None = None  # python: "module:function"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    spool: Path | None = None  # where artifacts too big to go inline are written (a blob)
    api: str | None = None  # llm: a gateway request passed through (.passthrough)
    request: Mapping[str, Any] | None = None  # its OpenAI body


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None
    stdout: str
    stderr: str
    output: str | None  # llm: the text; python: the return value as JSON text
    usage: Mapping[str, Any] | None  # llm: tokens, seconds, tokens_per_s, ttft_s, ...
    artifacts: Mapping[str, bytes]  # relative path -> content
    error: str | None
    app_failed: bool  # the subtask's own failure: not retried unless retry_on_error
    truncated: bool = False  # stdout/stderr/output/artifacts were cut at a limit
    seconds: float = 0.0  # wall time of the attempt on this node
    blob: Spooled | None = None  # the artifacts, in a blob on disk (then artifacts is {})

    @property
    def ok(self) -> bool:
        return self.error is None and not self.app_failed

    @classmethod
    def failure(
        cls,
        error: str,
        *,
        app_failed: bool,
        exit_code: int | None = None,
        stdout: str = "",
        stderr: str = "",
        seconds: float = 0.0,
    ) -> ExecResult:
        return cls(
            exit_code=exit_code,
            stdout=stdout,
            stderr=stderr,
            output=None,
            usage=None,
            artifacts=_EMPTY,
            error=error,
            app_failed=app_failed,
            seconds=seconds,
        )


def report(progress: Progress | None, line: str) -> None:
    """Call ``progress`` if there is one; a failing callback never fails the subtask."""
    if progress is None:
        return
    with contextlib.suppress(Exception):
        progress(line)


SHELL_DISABLED: Final = "shell subtasks are disabled on this node (allow_shell = false)"


async def execute(
    req: ExecRequest,
    *,
    workdir_root: Path,
    allow_shell: bool,
    limits: Limits | None = None,
    progress: Progress | None = None,
    pool: PythonPool | None = None,
    http: httpx.AsyncClient | None = None,
    upstream: HttpPool | None = None,
    keep: bool = False,
    live: LiveOutput | None = None,
    relay: Callable[[bytes], None] | None = None,
) -> ExecResult:
    """Run one attempt of a subtask and return its result (never raises, except
    ``asyncio.CancelledError`` after the attempt's processes are gone). ``relay`` takes
    a gateway request's streamed answer as it arrives."""
    limits = limits or Limits()
    if req.kind == "shell":
        from swarmd.executors import shell

        if not allow_shell:
            return ExecResult.failure(SHELL_DISABLED, app_failed=False)
        return await shell.run(
            req, workdir_root=workdir_root, limits=limits, progress=progress, keep=keep, live=live
        )
    if req.kind == "python":
        if pool is None:
            return ExecResult.failure(
                "python subtasks are not available on this node (no python pool)",
                app_failed=False,
            )
        return await pool.run(
            req, workdir_root=workdir_root, limits=limits, progress=progress, keep=keep
        )
    if req.kind == "llm" and req.api is not None:
        from swarmd.executors import passthrough

        return await passthrough.run(req, relay, upstream)
    if req.kind == "llm":
        from swarmd.executors import llm

        return await llm.run(req, limits=limits, progress=progress, client=http)
    return ExecResult.failure(f"unknown subtask kind {req.kind!r}", app_failed=True)


__all__ = [
    "SHELL_DISABLED",
    "ExecKind",
    "ExecRequest",
    "ExecResult",
    "Limits",
    "Progress",
    "execute",
    "report",
]
