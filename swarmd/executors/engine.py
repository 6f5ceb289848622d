"""Shell subtasks as engine jobs (a Slurm or Ray cluster this node fronts).

The attempt's directory is made under the engine's shared working directory with the
shipped inputs (:mod:`.workdir`), the command is submitted as a job running there, and
the job is followed (its status polled, first often, then every ``POLL_MAX_S``) until
it ends; its ``stdout``/``stderr`` files, exit code and declared outputs make the result
as for a local attempt. Each change of what the engine says ("queued on hpc (job 1234,
reason Resources)", "running on hpc (job 1234)") goes to ``progress``; while it runs,
what its output files grew by goes to ``live`` (``swarmctl logs -f``).

- a non-zero exit is the subtask's failure (``app_failed``), as locally;
- ``timeout``: the job is cancelled at the deadline (an application failure);
- cancelled here (the coordinator cancels, lease lost, shutdown): the job is cancelled
  (``scancel``) before the cancellation goes on;
- the engine failed, lost or preempted the job, someone cancelled it outside swarmd,
  or the engine cannot be reached for ``UNREACHABLE_S``: the attempt is lost, not the
  subtask's failure (retried as usual).

The job's id and the dispatch are kept in the attempt's directory (``.swarmd-job``,
``.swarmd-dispatch``) while it is followed: a worker that crashed and restarts finds
them (:func:`adoptable`) and follows the job again, and a dispatch of an attempt
already submitted follows its job: nothing is submitted twice. (A worker that stops
on purpose cancels its jobs first: it hands its attempts back.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

from swarmd.engines import Engine, EngineError, JobSpec, JobStatus
from swarmd.executors import ExecRequest, ExecResult, Limits, Progress, report, workdir
from swarmd.executors.output import LiveOutput, TailBuffer
from swarmd.executors.shell import check_env

POLL_FIRST_S: Final = 0.1
POLL_MAX_S: Final = 1.0
UNREACHABLE_S: Final = 60.0  # the engine not answering this long: the attempt is lost
UNKNOWN_POLLS: Final = 3  # the engine not knowing the job this many times: lost
CANCEL_TIMEOUT_S: Final = 15.0
FINAL_WAIT_S: Final = 10.0  # after a cancel at the deadline: how long to wait for its end
JOB_RECORD: Final = ".swarmd-job"  # in the attempt's directory: {"engine", "job"}
PUMP_BYTES: Final = 256 * 1024  # of each output file per poll, for logs -f
DISPATCH_RECORD: Final = ".swarmd-dispatch"  # and the dispatch (the worker's, to re-adopt)


def _write_records(cwd: Path, engine: str, job_id: str, keepsake: bytes | None) -> None:
    """The job's id (and the dispatch) in the attempt's directory, each written whole."""
    files = [(JOB_RECORD, json.dumps({"engine": engine, "job": job_id}).encode())]
    if keepsake is not None:
        files.insert(0, (DISPATCH_RECORD, keepsake))
    for name, data in files:
        tmp = cwd / f"{name}.tmp"
        with contextlib.suppress(OSError):
            tmp.write_bytes(data)
            os.replace(tmp, cwd / name)


def _read_job(path: Path, engine: str) -> str | None:
    try:
        record = json.loads((path / JOB_RECORD).read_text())
    except (OSError, ValueError):
        return None
    job = record.get("job") if isinstance(record, dict) else None
    if record.get("engine") != engine or not isinstance(job, str) or not job:
        return None
    return job


def _recorded(req: ExecRequest, engine: str, root: Path) -> tuple[Path, str] | None:
    """The attempt's directory and job id if it was submitted to ``engine`` already."""
    try:
        path = workdir.attempt_dir(root, req.task_id, req.subtask_id, req.attempt)
    except workdir.WorkdirError:
        return None
    job = _read_job(path, engine)
    return None if job is None else (path, job)


def adoptable(root: Path, engine: str) -> Iterator[bytes]:
    """The dispatches (as kept) of the jobs submitted to ``engine`` from under ``root``
    that were still followed when the worker stopped."""
    for record in sorted(root.glob(f"*/*/*/{JOB_RECORD}")):
        path = record.parent
        if _read_job(path, engine) is None:
            continue
        with contextlib.suppress(OSError):
            yield (path / DISPATCH_RECORD).read_bytes()


def job_note(engine: str, job_id: str, status: JobStatus) -> str:
    """What ``status`` shows while the engine holds the job."""
    if status.phase == "queued":
        why = f", reason {status.reason}" if status.reason else ""
        return f"queued on {engine} (job {job_id}{why})"
    if status.phase == "running":
        return f"running on {engine} (job {job_id})"
    return f"{status.phase} on {engine} (job {job_id})"


def _job(req: ExecRequest, cwd: Path, resources: Mapping[str, int]) -> JobSpec:
    env = {
        "SWARMD_TASK_ID": req.task_id,
        "SWARMD_SUBTASK_ID": req.subtask_id,
        "SWARMD_ATTEMPT": str(req.attempt),
        **req.env,
    }
    return JobSpec(
        name=f"swarmd-{req.task_id[:12]}-{req.subtask_id}-{req.attempt}",
        workdir=cwd,
        argv=tuple(req.run),
        env=env,
        cpus=max(1, resources.get("cpus", 1)),
        gpus=max(0, resources.get("gpus", 0)),
        mem_mb=max(0, resources.get("mem_mb", 0)),
        timeout_s=req.timeout_s,
    )


async def run(
    req: ExecRequest,
    engine: Engine,
    *,
    workdir_root: Path,
    limits: Limits,
    progress: Progress | None = None,
    resources: Mapping[str, int] | None = None,
    keep: bool = False,
    keepsake: bytes | None = None,
    live: LiveOutput | None = None,
) -> ExecResult:
    """Run the attempt as a job; ``keepsake`` (the encoded dispatch) is kept beside the
    job's id in the attempt's directory until it ends: a worker that restarts finds
    both there (:func:`adoptable`) and follows the job instead of submitting again."""
    started = time.monotonic()
    adopted = _recorded(req, engine.name, workdir_root)
    if adopted is not None:  # submitted before this worker restarted: follow it
        cwd, job_id = adopted
        try:
            return await _follow(req, engine, job_id, cwd, limits, progress, started, live)
        finally:
            if not keep:
                workdir.remove(cwd)
    if req.kind != "shell":
        return ExecResult.failure(
            f"engine {engine.name} runs shell subtasks only, not {req.kind}", app_failed=True
        )
    if not req.run or any(not isinstance(a, str) or "\x00" in a for a in req.run):
        return ExecResult.failure("run: a command of strings without NUL", app_failed=True)
    if problem := check_env(req.env):
        return ExecResult.failure(problem, app_failed=True)
    prepared = await workdir.prepare(req, workdir_root, limits)
    if isinstance(prepared, ExecResult):
        return prepared
    cwd = prepared
    try:
        job = _job(req, cwd, resources or {})
        try:
            job_id = await engine.submit(job)
        except EngineError as exc:
            return ExecResult.failure(f"engine {engine.name}: {exc}", app_failed=False)
        await workdir.off_loop(_write_records, cwd, engine.name, job_id, keepsake)
        return await _follow(req, engine, job_id, cwd, limits, progress, started, live)
    finally:
        if not keep:
            workdir.remove(cwd)


async def _follow(
    req: ExecRequest,
    engine: Engine,
    job_id: str,
    cwd: Path,
    limits: Limits,
    progress: Progress | None,
    started: float,
    live: LiveOutput | None = None,
) -> ExecResult:
    try:
        pump = None if live is None else _Pump(cwd, live, limits.max_output_bytes)
        status, timed_out = await _watch(req, engine, job_id, progress, started, pump)
    except BaseException:  # cancelled (or an adapter's bug): the job goes too
        await _cancel(engine, job_id)
        raise
    seconds = time.monotonic() - started
    usage = {"engine": engine.name, "engine_job": job_id}
    if timed_out:
        result = await _result(
            req, cwd, limits, status, seconds, f"timed out after {req.timeout_s:g}s"
        )
    elif status.phase in ("succeeded", "failed"):
        result = await _result(req, cwd, limits, status, seconds, None)
    else:
        said = f": {status.reason}" if status.reason else ""
        what = "was cancelled outside swarmd" if status.phase == "cancelled" else status.phase
        error = f"engine {engine.name}: job {job_id} {what}{said}"
        result = ExecResult.failure(error, app_failed=False, seconds=seconds)
    return _with_usage(result, usage)


class _Pump:
    """The job's output files as they grow, into the live buffers (``swarmctl logs -f``)."""

    def __init__(self, cwd: Path, live: LiveOutput, limit: int) -> None:
        self.cwd = cwd
        live.out, live.err = TailBuffer(limit), TailBuffer(limit)
        self.buffers = (live.out, live.err)
        self.at = [0, 0]

    def read(self) -> None:
        for i, name in enumerate(("stdout", "stderr")):
            try:
                with open(self.cwd / name, "rb") as f:
                    f.seek(self.at[i])
                    data = f.read(PUMP_BYTES)
            except OSError:
                continue
            self.at[i] += len(data)
            self.buffers[i].write(data)

    async def __call__(self) -> None:
        with contextlib.suppress(OSError):
            await workdir.off_loop(self.read)


async def _watch(
    req: ExecRequest,
    engine: Engine,
    job_id: str,
    progress: Progress | None,
    started: float,
    pump: _Pump | None = None,
) -> tuple[JobStatus, bool]:
    """Poll until the job ends: (its last status, whether it ran out of time)."""
    deadline = None if req.timeout_s is None else started + req.timeout_s
    last_note, unknown, delay = "", 0, POLL_FIRST_S
    answered = time.monotonic()
    status = JobStatus("queued")
    while True:
        try:
            status = await engine.status(job_id)
            answered = time.monotonic()
        except EngineError as exc:
            if time.monotonic() - answered > UNREACHABLE_S:
                return JobStatus(
                    "engine_failed", f"no answer for {UNREACHABLE_S:g} s: {exc}"
                ), False
        else:
            unknown = unknown + 1 if status.phase == "unknown" else 0
            if status.terminal or unknown >= UNKNOWN_POLLS:
                return status, False
            note = job_note(engine.name, job_id, status)
            if note != last_note and status.phase != "unknown":
                report(progress, note)
                last_note = note
        if deadline is not None and time.monotonic() >= deadline:
            await _cancel(engine, job_id)
            return await _final(engine, job_id), True
        if pump is not None and status.phase == "running":
            await pump()
        await asyncio.sleep(delay)
        delay = min(POLL_MAX_S, delay * 1.5)


async def _final(engine: Engine, job_id: str) -> JobStatus:
    """The status of a cancelled job once it ended (or the last one seen)."""
    end = time.monotonic() + FINAL_WAIT_S
    status = JobStatus("cancelled")
    while time.monotonic() < end:
        with contextlib.suppress(EngineError):
            status = await engine.status(job_id)
            if status.terminal or status.phase == "unknown":
                break
        await asyncio.sleep(0.2)
    return status


async def _cancel(engine: Engine, job_id: str) -> None:
    """Cancel the job, even while the caller is being cancelled (bounded)."""
    task = asyncio.ensure_future(engine.cancel(job_id))
    try:
        await asyncio.wait_for(asyncio.shield(task), CANCEL_TIMEOUT_S)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, CANCEL_TIMEOUT_S)
        raise
    except (EngineError, TimeoutError):
        pass


def _tail(path: Path, limit: int) -> tuple[str, bool]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read(limit)
    except OSError:
        return "", False
    return data.decode("utf-8", "replace"), size > limit


async def _result(
    req: ExecRequest,
    cwd: Path,
    limits: Limits,
    status: JobStatus,
    seconds: float,
    timed_out: str | None,
) -> ExecResult:
    out, out_cut = await workdir.off_loop(_tail, cwd / "stdout", limits.max_output_bytes)
    err, err_cut = await workdir.off_loop(_tail, cwd / "stderr", limits.max_output_bytes)
    code = status.exit_code
    problems = []
    if timed_out is not None:
        problems.append(timed_out)
    elif status.phase == "failed":
        problems.append(f"exit code {code}" + (f" ({status.reason})" if status.reason else ""))
    collected, wrong = await workdir.collect(req, cwd, limits)
    problems += wrong
    return ExecResult(
        exit_code=code,
        stdout=out,
        stderr=err,
        output=None,
        usage=None,
        artifacts=collected.artifacts,
        blob=collected.blob,
        error="; ".join(problems) or None,
        app_failed=bool(problems),
        truncated=out_cut or err_cut or bool(collected.over_limit),
        seconds=seconds,
    )


def _with_usage(result: ExecResult, usage: Mapping[str, object]) -> ExecResult:
    from dataclasses import replace

    return replace(result, usage={**(result.usage or {}), **usage})
