"""Push, not poll: clients waiting on a coordinator's task are answered when it changes.

A task's *version* counts its changes (journaled effects, a worker's start or output).
``watch`` answers once the version passed what the client saw (progress at most every
WATCH_MIN_S, the end at once); ``logs`` answers once a running shell subtask said more
(its live output, :mod:`swarmd.livelog`) or ended (its result's output).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from protocol.messages import LogsReply, LogsRequest

from .core import tasks as core
from .livelog import LiveLogs

WATCH_MIN_S = 0.2  # a watcher hears of progress at most this often (the end at once)


class TaskWatchers:
    def __init__(self, coordinator: core.Coordinator) -> None:
        self.coordinator = coordinator
        self.live = LiveLogs()  # running shell subtasks' output, for logs -f
        self._versions: dict[str, int] = {}  # task id -> changes seen
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        self._any: list[asyncio.Future[None]] = []  # waiting on any task (the dashboard)
        self.listeners: list[Callable[[str], None]] = []  # told of every change (the gateway)

    def changed(self, task_id: str | None) -> None:
        """The task changed (or was forgotten): wake whoever waits on it."""
        if task_id is None:
            return
        try:
            self.coordinator.record(task_id)
        except core.UnknownTask:  # forgotten: its watchers hear "unknown task"
            self._versions.pop(task_id, None)
            self.live.forget(task_id)
        else:
            self._versions[task_id] = self._versions.get(task_id, 0) + 1
        for listener in self.listeners:
            listener(task_id)
        waiting, self._any = [*self._waiting.pop(task_id, ()), *self._any], []
        for future in waiting:
            if not future.done():
                future.set_result(None)

    async def any_change(self, timeout_s: float) -> None:
        """Until some task changes, or ``timeout_s`` passes."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._any.append(future)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(future, max(0.0, timeout_s))

    async def _next_change(self, task_id: str, timeout_s: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(task_id, []).append(future)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(future, max(0.0, timeout_s))

    async def watch(
        self, task_id: str, seen: int, timeout_s: float, final_only: bool = False
    ) -> dict[str, Any]:
        """The task's summary once it changed after version ``seen`` (progress at most
        every WATCH_MIN_S per watcher, or never with ``final_only``), at once when it
        is final; UnknownTask if unknown."""
        c = self.coordinator
        deadline = time.monotonic() + timeout_s
        not_before = deadline if final_only else time.monotonic() + WATCH_MIN_S if seen else 0.0
        while True:
            version = self._versions.get(task_id, 0)
            final = c.record(task_id).final  # O(1); the summary is O(subtasks): at the end
            left = deadline - time.monotonic()
            if final or left <= 0 or (version > seen and time.monotonic() >= not_before):
                return {**c.summary(task_id), "version": version}
            if version > seen:  # changed, but the last answer was just now: the end only
                left = min(left, not_before - time.monotonic())
            await self._next_change(task_id, left)

    async def logs(self, request: LogsRequest) -> LogsReply:
        """A subtask's output from the request's offsets on: the live output while it
        runs, its result's once it ended. UnknownTask / KeyError for unknown ids."""
        task = self.coordinator.record(request.task)
        subtask = request.subtask or _only_subtask(task)
        if subtask not in task.subtasks:
            names = ", ".join(sorted(task.subtasks))
            raise KeyError(f"task {task.id} has no subtask {subtask!r} (it has: {names})")
        deadline = time.monotonic() + request.timeout_s
        while True:
            rec = self.coordinator.record(request.task).subtasks[subtask]
            if rec.final:
                out = (rec.result.stdout if rec.result else "").encode()
                err = (rec.result.stderr if rec.result else "").encode()
                out_at, err_at = min(request.out_at, len(out)), min(request.err_at, len(err))
                out, err = out[out_at:], err[err_at:]
            else:
                out_at, out, err_at, err = self.live.read(
                    request.task, subtask, request.out_at, request.err_at
                )
            left = deadline - time.monotonic()
            if rec.final or out or err or not request.follow or left <= 0:
                return LogsReply(
                    subtask=subtask,
                    state=rec.state,
                    out=out,
                    out_at=out_at,
                    err=err,
                    err_at=err_at,
                    final=rec.final,
                )
            await self._next_change(request.task, left)


def _only_subtask(task: core.TaskRecord) -> str:
    if len(task.subtasks) != 1:
        names = ", ".join(sorted(task.subtasks))
        raise KeyError(f"task {task.id} has {len(task.subtasks)} subtasks: name one of {names}")
    return next(iter(task.subtasks))
