"""Python subtasks: call ``module:function`` in a persistent pool of worker processes.

Each worker is a ``spawn``-started process (nothing of the daemon's threads, sockets or
event loop is inherited) in its own session, talking to the daemon over a pipe; it
imports the module once and keeps it (a changed module is seen by new workers only).
Arguments and the return value are JSON: the return value comes back as ``output``, the
JSON text. A call runs in the attempt's private working directory (inputs written,
outputs collected as for shell subtasks) with the spec's env set for its duration; a
call with neither inputs nor outputs gets no directory (it runs where the pool process
is: making and removing one cost more than a small call itself).

A call that overruns its timeout, or is cancelled, takes its worker with it: the
worker's process group gets SIGTERM, then SIGKILL, and the next call starts a fresh
worker. Other calls in flight on other workers are not disturbed. A function that kills
its own worker (``os._exit``, a segfault) fails only its own call.

Isolation between calls on one worker: after every call, however it ended, the worker
puts back ``os.environ`` (every variable, not just the spec's ``env``), the working
directory, ``sys.path`` and the umask as they were before it. That is all: a worker
is a reused interpreter, not a sandbox. Module globals, ``sys.modules`` (a module stays
imported, monkeypatches included), threads and child processes a call left running,
open files, signal handlers, resource limits and environment changes made behind
``os.environ``'s back (``os.putenv``, C code) carry over to later calls on the same
worker. Work that must not share a process with other tasks belongs in a shell subtask.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Final, Literal

from swarmd.executors import ExecRequest, ExecResult, Limits, Progress, report, workdir
from swarmd.executors.python_process import Call, Reply, worker_main

KILL_GRACE_S: Final = 1.0
PROGRESS_INTERVAL_S: Final = 1.0


class PythonPool:
    """Up to ``max_workers`` worker processes, started on demand and kept for reuse."""

    def __init__(
        self,
        max_workers: int = 2,
        *,
        start_method: Literal["spawn", "forkserver"] = "spawn",
        sys_path: Sequence[str] = (),
        kill_grace_s: float = KILL_GRACE_S,
        batch_scheduling: bool = True,
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self.sys_path = tuple(str(p) for p in sys_path)
        self.kill_grace_s = kill_grace_s
        self.batch_scheduling = batch_scheduling  # workers under SCHED_BATCH (Linux)
        self._ctx: SpawnContext | ForkServerContext = (
            multiprocessing.get_context("forkserver")
            if start_method == "forkserver"
            else multiprocessing.get_context("spawn")
        )
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._slots: asyncio.Semaphore | None = None
        self._slots_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.started = 0  # workers started so far (tests and metrics)

    @property
    def size(self) -> int:
        return len(self._idle) + len(self._busy)

    async def run(
        self,
        req: ExecRequest,
        *,
        workdir_root: Path,
        limits: Limits | None = None,
        progress: Progress | None = None,
        keep: bool = False,
    ) -> ExecResult:
        limits = limits or Limits()
        started = time.monotonic()
        if self._closed:
            return ExecResult.failure("the python pool is closed", app_failed=False)
        checked = _check_request(req)
        if isinstance(checked, str):
            return ExecResult.failure(checked, app_failed=True)
        args_json, kwargs_json = checked
        cwd: Path | None = None
        if req.inputs or req.outputs:  # else no files: no directory to make and remove
            prepared = await workdir.prepare(req, workdir_root, limits)
            if isinstance(prepared, ExecResult):
                return prepared
            cwd = prepared
        try:
            message = Call(
                call=req.call or "",
                args_json=args_json,
                kwargs_json=kwargs_json,
                env=dict(req.env),
                cwd=None if cwd is None else str(cwd),
                limit=limits.max_output_bytes,
            )
            ticker = asyncio.create_task(_tick(progress, started)) if progress else None
            try:
                reply = await asyncio.wait_for(self._call(message), req.timeout_s)
            except TimeoutError:
                seconds = time.monotonic() - started
                return ExecResult.failure(
                    f"timed out after {req.timeout_s:g}s", app_failed=True, seconds=seconds
                )
            finally:
                if ticker is not None:
                    ticker.cancel()
            return await self._result(reply, req, cwd, limits, started)
        finally:
            if not keep and cwd is not None:
                workdir.remove(cwd)

    async def _result(
        self, reply: Reply, req: ExecRequest, cwd: Path | None, limits: Limits, started: float
    ) -> ExecResult:
        problems = [reply.error] if reply.error else []
        collected = workdir.Collected()
        if cwd is not None:
            collected, wrong = await workdir.collect(req, cwd, limits)
            problems += wrong
        return ExecResult(
            exit_code=None,
            stdout=reply.stdout,
            stderr=reply.stderr,
            output=reply.output,
            usage=None,
            artifacts=collected.artifacts,
            blob=collected.blob,
            error="; ".join(problems) or None,
            app_failed=bool(problems),
            truncated=reply.truncated or bool(collected.over_limit),
            seconds=time.monotonic() - started,
        )

    async def _call(self, message: Call) -> Reply:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots_loop is not loop:
            self._slots = asyncio.Semaphore(self.max_workers)  # bound to one event loop
            self._slots_loop = loop
        async with self._slots:
            while self._idle and not self._idle[-1].process.is_alive():
                await self._stop(self._idle.pop())  # died while idle (OOM killer, ...)
            worker = self._idle.pop() if self._idle else self._start()
            self._busy.add(worker)
            healthy = False
            try:
                worker.conn.send(message)
                reply = await _receive(worker.conn)
                healthy = isinstance(reply, Reply)
            except Exception:  # EOF, a broken pipe, garbage on the pipe: the worker is gone
                reply = None
            finally:
                self._busy.discard(worker)
                if healthy and not self._closed:
                    self._idle.append(worker)
                else:
                    await self._stop(worker)
            if not isinstance(reply, Reply):
                code = worker.process.exitcode
                return Reply(error=f"the python worker process died (exit code {code})")
            return reply

    def prestart(self, count: int | None = None) -> None:
        """Start idle workers now (up to ``max_workers``) so that the first calls do not
        pay for the interpreter start-up."""
        want = self.max_workers if count is None else min(count, self.max_workers)
        while not self._closed and self.size < want:
            self._idle.append(self._start())

    def _start(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main,
            args=(child_conn, self.sys_path, self.batch_scheduling),
            name="swarmd-python-worker",
            daemon=True,
        )
        process.start()
        child_conn.close()
        self.started += 1
        return _Worker(process, parent_conn)

    async def _stop(self, worker: _Worker) -> None:
        """Stop a worker and whatever it started; SIGKILL after the grace period."""
        worker.conn.close()
        pid = worker.process.pid
        if pid is None:
            return
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace_s
        try:
            while worker.process.exitcode is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            _signal_group(pid, signal.SIGKILL)
            worker.process.join(timeout=0.5)

    def close(self) -> None:
        """Stop all workers (idle ones are asked, busy ones killed); bounded to ~2 s."""
        self._closed = True
        workers = [*self._idle, *self._busy]
        self._idle.clear()
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
            worker.conn.close()
        deadline = time.monotonic() + self.kill_grace_s
        for worker in workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
        for worker in workers:
            if worker.process.exitcode is None and worker.process.pid is not None:
                _signal_group(worker.process.pid, signal.SIGKILL)
                worker.process.join(timeout=0.5)


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection


def _check_request(req: ExecRequest) -> str | tuple[str, str]:
    """What is wrong with the request, or its args and kwargs as JSON."""
    call = req.call or ""
    module, sep, func = call.partition(":")
    if not sep or not module or not func:
        return f"call {call!r}: expected 'module:function'"
    try:
        encoded = json.dumps(list(req.args)), json.dumps(dict(req.kwargs))
    except (TypeError, ValueError) as exc:
        return f"args/kwargs are not JSON-able: {exc}"
    for key, value in req.env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return f"env: {key!r}: names and values must be strings"
    return encoded


async def _receive(conn: Connection) -> object:
    """Wait until the worker answers (or its end of the pipe closes), then read."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = conn.fileno()
    loop.add_reader(fd, on_readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    return conn.recv()


def _signal_group(pid: int, sig: int) -> None:
    # Workers call setsid(), so their pid is their process group; before that runs
    # (a fresh worker) the group does not exist yet: signal the process itself.
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


async def _tick(progress: Progress | None, started: float) -> None:
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL_S)
        report(progress, f"running {time.monotonic() - started:.0f}s")
