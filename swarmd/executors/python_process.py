"""Inside a python pool worker process: the calls it is sent and the replies it gives.

:func:`worker_main` runs in each ``spawn``-started worker (:mod:`swarmd.executors.python`
starts them): it reads one :class:`Call` at a time from its pipe, runs it with its
stdout and stderr captured (the last ``limit`` characters of each), the call's
environment and working directory set and put back afterwards, and answers with one
:class:`Reply`. Nothing of the daemon is imported here but what these need.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import io
import json
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Final

_ERROR_TAIL_LINES: Final = 6


@dataclass(frozen=True)
class Call:
    call: str
    args_json: str
    kwargs_json: str
    env: dict[str, str]
    cwd: str | None
    limit: int


@dataclass(frozen=True)
class Reply:
    output: str | None = None
    error: str | None = None
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False


def worker_main(conn: Connection, sys_path: Sequence[str], batch: bool = False) -> None:
    with contextlib.suppress(OSError):
        os.setsid()  # its own process group: stopping the worker stops its children
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when workers stop
    if batch:
        _batch_scheduling()
    with contextlib.suppress(AssertionError, ValueError):
        # started as a daemon process (so that it dies with the daemon), but the functions
        # it runs may start processes of their own with multiprocessing
        multiprocessing.current_process().daemon = False
    sys.path[:0] = [p for p in sys_path if p not in sys.path]
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        reply = _invoke(message)
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return


def _batch_scheduling() -> None:
    """Run this worker under SCHED_BATCH (Linux): the kernel then never preempts the
    daemon to run it at once when a call arrives on its pipe, so the daemon's loop (its
    heartbeats, and the next calls it hands out) is not held up by the calls it starts,
    and fewer context switches are paid per call (``python bench/python_pool.py``
    compares both). A no-op where unsupported."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is not None:
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, policy, os.sched_param(0))


class _TailText(io.TextIOBase):
    """A text stream keeping only its last ``limit`` characters (roughly bytes)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._parts: list[str] = []
        self._size = 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.total += len(s)
        self._parts.append(s)
        self._size += len(s)
        if self._size > 2 * self.limit + 4096:
            self._compact()
        return len(s)

    def _compact(self) -> None:
        text = "".join(self._parts)[-self.limit :] if self.limit else ""
        self._parts = [text]
        self._size = len(text)

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        self._compact()
        body = self._parts[0] if self._parts else ""
        if not self.truncated:
            return body
        return (
            f"[swarmd: output truncated, {self.total - len(body)} of {self.total} characters "
            f"dropped; the last {len(body)} follow]\n{body}"
        )


def _resolve(call: str) -> Any:
    module_name, _, qualname = call.partition(":")
    target: Any = importlib.import_module(module_name)
    for attr in qualname.split("."):
        target = getattr(target, attr)
    if not callable(target):
        raise TypeError(f"{call} is not callable")
    return target


def _environ_now() -> dict[Any, Any]:
    """A copy of the environment, cheap: CPython keeps it encoded in ``os.environ._data``
    (copied and compared in C, about 1 µs, where decoding them all cost ~30 µs a call
    with 35 variables); the decoded mapping elsewhere."""
    data = getattr(os.environ, "_data", None)
    return dict(data) if isinstance(data, dict) else dict(os.environ)


@dataclass(frozen=True)
class _Saved:
    """The process state a call may change and the next call must not see."""

    env: dict[Any, Any]  # as _environ_now() gave it
    cwd: str
    path: list[str]
    umask: int

    @classmethod
    def now(cls) -> _Saved:
        umask = os.umask(0o077)
        os.umask(umask)
        return cls(_environ_now(), os.getcwd(), list(sys.path), umask)

    def restore(self) -> None:
        if _environ_now() != self.env:  # the call (or its spec's env) changed it
            self._restore_env()
        with contextlib.suppress(OSError):
            os.chdir(self.cwd)
        sys.path[:] = self.path
        os.umask(self.umask)

    def _restore_env(self) -> None:
        env = os.environ
        if isinstance(getattr(env, "_data", None), dict):
            want = {env.decodekey(k): env.decodevalue(v) for k, v in self.env.items()}
        else:
            want = self.env
        for key in [k for k in env if k not in want]:
            del env[key]
        for key, value in want.items():
            if env.get(key) != value:
                env[key] = value


def _invoke(message: Call) -> Reply:
    out, err = _TailText(message.limit), _TailText(message.limit)
    saved = _Saved.now()
    extra = [p for p in message.env.get("PYTHONPATH", "").split(os.pathsep) if p]
    try:
        os.environ.update(message.env)
        sys.path[:0] = extra
        if message.cwd:
            os.chdir(message.cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                value = _resolve(message.call)(
                    *json.loads(message.args_json), **json.loads(message.kwargs_json)
                )
                if inspect.isawaitable(value):
                    value = asyncio.run(_awaited(value))
            except BaseException as exc:  # SystemExit and KeyboardInterrupt are failures too
                traceback.print_exc(file=err)
                return _failed(f"{message.call} raised {_describe(exc)}", out, err)
        try:
            text = json.dumps(value)
        except (TypeError, ValueError) as exc:
            return _failed(f"the return value of {message.call} is not JSON-able: {exc}", out, err)
        if len(text.encode()) > message.limit:
            return _failed(
                f"the return value of {message.call} is {len(text.encode())} bytes as JSON, "
                f"over this node's limit of {message.limit}",
                out,
                err,
            )
        return Reply(
            output=text,
            stdout=out.text(),
            stderr=err.text(),
            truncated=out.truncated or err.truncated,
        )
    finally:
        saved.restore()


async def _awaited(value: Any) -> Any:
    return await value


def _describe(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        text += f" (at {os.path.basename(last.filename)}:{last.lineno} in {last.name})"
    lines = text.splitlines()
    return "\n".join(lines[-_ERROR_TAIL_LINES:])


def _failed(error: str, out: _TailText, err: _TailText) -> Reply:
    return Reply(
        error=error,
        stdout=out.text(),
        stderr=err.text(),
        truncated=out.truncated or err.truncated,
    )
