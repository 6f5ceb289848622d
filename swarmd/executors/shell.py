"""Shell subtasks: run an argv (no shell) in a private working directory.

The command runs in a new session (its own process group) so that a timeout or a
cancellation stops it *and everything it started*: SIGTERM to the group, SIGKILL after
a grace period. Whatever the group leaves running after the command exits is stopped
the same way. stdout and stderr are read incrementally into bounded tail buffers.
Limitation: a process that leaves the group itself (``setsid``) escapes; containing
that needs cgroups.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from swarmd.executors import ExecRequest, ExecResult, Limits, Progress, report, workdir
from swarmd.executors.output import LiveOutput, TailBuffer, drain

DEFAULT_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
KILL_GRACE_S: Final = 2.0  # SIGTERM -> SIGKILL
PIPE_GRACE_S: Final = 2.0  # after the command exits, how long to wait for EOF on its pipes
PROGRESS_INTERVAL_S: Final = 1.0


def base_env(req: ExecRequest, cwd: Path) -> dict[str, str]:
    """A minimal environment (nothing of the daemon's own leaks in) plus the spec's env."""
    env = {
        "PATH": os.environ.get("PATH") or DEFAULT_PATH,
        "HOME": str(cwd),
        "TMPDIR": str(cwd),
        "LANG": os.environ.get("LANG") or "C.UTF-8",
        "SWARMD_TASK_ID": req.task_id,
        "SWARMD_SUBTASK_ID": req.subtask_id,
        "SWARMD_ATTEMPT": str(req.attempt),
    }
    env.update(req.env)
    return env


def check_env(env: Mapping[str, str]) -> str | None:
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\x00" in key:
            return f"env: invalid variable name {key!r}"
        if not isinstance(value, str) or "\x00" in value:
            return f"env: {key}: the value must be a string without NUL"
    return None


async def run(
    req: ExecRequest,
    *,
    workdir_root: Path,
    limits: Limits,
    progress: Progress | None = None,
    keep: bool = False,
    kill_grace_s: float = KILL_GRACE_S,
    live: LiveOutput | None = None,
) -> ExecResult:
    started = time.monotonic()
    if not req.run:
        return ExecResult.failure("shell subtask without a command (run is empty)", app_failed=True)
    if any(not isinstance(a, str) or "\x00" in a for a in req.run):
        return ExecResult.failure("run: arguments must be strings without NUL", app_failed=True)
    if problem := check_env(req.env):
        return ExecResult.failure(problem, app_failed=True)
    prepared = await workdir.prepare(req, workdir_root, limits)
    if isinstance(prepared, ExecResult):
        return prepared
    cwd = prepared
    try:
        return await _run_in(req, cwd, limits, progress, kill_grace_s, started, live)
    finally:
        if not keep:
            workdir.remove(cwd)


async def _run_in(
    req: ExecRequest,
    cwd: Path,
    limits: Limits,
    progress: Progress | None,
    kill_grace_s: float,
    started: float,
    live: LiveOutput | None = None,
) -> ExecResult:
    proc = await _spawn(req, cwd)
    if isinstance(proc, ExecResult):
        return proc
    out = TailBuffer(limits.max_output_bytes)
    err = TailBuffer(limits.max_output_bytes)
    if live is not None:  # followed while it runs (swarmctl logs -f)
        live.out, live.err = out, err
    timed_out = await _supervise(proc, req, out, err, progress, kill_grace_s, started)
    seconds = time.monotonic() - started
    rc = proc.returncode
    problems = []
    if timed_out:
        problems.append(f"timed out after {req.timeout_s:g}s")
    elif rc is not None and rc < 0:
        problems.append(f"killed by signal {_signal_name(-rc)}")
    elif rc != 0:
        problems.append(f"exit code {rc}")
    collected, wrong = await workdir.collect(req, cwd, limits)
    problems += wrong
    return ExecResult(
        exit_code=rc,
        stdout=out.text(),
        stderr=err.text(),
        output=None,
        usage=None,
        artifacts=collected.artifacts,
        blob=collected.blob,
        error="; ".join(problems) or None,
        app_failed=bool(problems),
        truncated=out.truncated or err.truncated or bool(collected.over_limit),
        seconds=seconds,
    )


async def _spawn(req: ExecRequest, cwd: Path) -> asyncio.subprocess.Process | ExecResult:
    """The command started in its own session, or the failure to start it."""
    argv = req.run
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=base_env(req, cwd),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        return ExecResult.failure(f"command not found: {argv[0]}", app_failed=True, exit_code=127)
    except PermissionError as exc:
        return ExecResult.failure(f"cannot run {argv[0]}: {exc}", app_failed=True, exit_code=126)
    except OSError as exc:
        return ExecResult.failure(f"cannot run {argv[0]}: {exc}", app_failed=True)


async def _supervise(
    proc: asyncio.subprocess.Process,
    req: ExecRequest,
    out: TailBuffer,
    err: TailBuffer,
    progress: Progress | None,
    kill_grace_s: float,
    started: float,
) -> bool:
    """Read its output until it exits or times out, then stop its group; whether it
    timed out. Cancelled: the group is stopped too."""
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        asyncio.create_task(drain(proc.stdout, out)),
        asyncio.create_task(drain(proc.stderr, err)),
    ]
    ticker = asyncio.create_task(_tick(progress, started, out, err)) if progress else None
    report(progress, f"started {req.run[0]} (pid {proc.pid})")
    timed_out = False
    try:
        try:
            await asyncio.wait_for(wait_exit(proc), req.timeout_s)
        except TimeoutError:
            timed_out = True
        # Stop the group: the command itself on timeout, its leftovers otherwise.
        await stop_group(proc, kill_grace_s)
        _, pending = await asyncio.wait(readers, timeout=PIPE_GRACE_S)
        for task in pending:  # a process outside the group still holds a pipe
            task.cancel()
    except asyncio.CancelledError:
        await stop_group(proc, kill_grace_s)
        raise
    finally:
        if ticker is not None:
            ticker.cancel()
        for task in readers:
            task.cancel()
        _close_transport(proc)
    return timed_out


async def stop_group(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM the process group of ``proc`` (its own session), SIGKILL what is left
    after ``grace_s``. Returns at once when the group is already empty. Safe under
    cancellation: the SIGKILL is sent in ``finally``."""
    pgid = proc.pid
    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            if proc.returncode is not None and not group_alive(pgid):
                return
            await asyncio.sleep(min(left, 0.02))
    finally:
        _signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wait_exit(proc), 1.0)


async def wait_exit(proc: asyncio.subprocess.Process) -> int:
    """Wait until the process has exited. (``Process.wait()`` also waits until its pipes
    are closed, which a leftover background process can delay indefinitely.)"""
    waiter = asyncio.ensure_future(proc.wait())
    try:
        while proc.returncode is None and not waiter.done():
            await asyncio.wait({waiter}, timeout=0.05)
    finally:
        waiter.cancel()
    assert proc.returncode is not None
    return proc.returncode


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it has no members left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed uid (setuid binary): nothing we can do
        return True
    return True


def group_alive(pgid: int) -> bool:
    """Whether the process group has a member that is not a zombie. (Zombies count for
    ``kill(-pgid, 0)``, and an orphan's zombie lingers where PID 1 does not reap.)"""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return _signal_group(pgid, 0)
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after "(comm)": state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _close_transport(proc: asyncio.subprocess.Process) -> None:
    # Closes our ends of the pipes even if a process outside the group still holds
    # theirs (asyncio would otherwise keep the transport open until they close).
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        transport.close()


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


async def _tick(
    progress: Progress | None, started: float, out: TailBuffer, err: TailBuffer
) -> None:
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL_S)
        elapsed = time.monotonic() - started
        report(progress, f"running {elapsed:.0f}s, stdout {out.total} B, stderr {err.total} B")
