"""How a node stops: the stop request (a signal, ``stop()``, or an internal task that
crashed), the drain before exit, and the cancellation of the node's own tasks.

SIGTERM drains: no new work, running attempts may finish within ``drain_grace_s``
(a second signal cuts it short), the rest are handed back, and their results get a
bounded moment to reach their coordinators before the node announces that it left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from .store import Store
from .worker import Worker

HAND_BACK_WAIT_S = 5.0  # for cancelled attempts to report how they ended
OUTBOX_WAIT_S = 3.0  # for handed-back results to reach (live) coordinators


class Lifecycle:
    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.stop_requested = asyncio.Event()
        self.hurry = asyncio.Event()  # a second signal: stop draining, exit now
        self.crashed = False
        self.exit_code = 1  # when crashed
        self._tasks: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        self.stop_requested.set()

    def fail(self, exit_code: int) -> None:
        """Stop with this exit code (something the node cannot run on with)."""
        self.crashed = True
        self.exit_code = exit_code
        self.stop_requested.set()

    def on_signal(self) -> None:
        if self.stop_requested.is_set():
            self.hurry.set()
        self.stop_requested.set()

    @property
    def stopping(self) -> bool:
        return self.stop_requested.is_set()

    # ------------------------------------------------------------ the node's tasks

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run one of the node's own tasks; if it fails, the node stops (exit 1)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("internal task failed", exc_info=task.exception())
            self.crashed = True  # exit non-zero: systemd's Restart=on-failure restarts it
            self.stop_requested.set()

    async def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 1.0)

    # ------------------------------------------------------------ drain

    async def drain_before_exit(
        self,
        worker: Worker,
        store: Store,
        grace_s: float,
        alive_addresses: Callable[[], set[str]],
    ) -> None:
        """Let running attempts finish within ``grace_s`` (a second signal cuts it
        short), hand back the rest, and let their results reach the coordinators before
        we announce left (else they rerun them). The caller has set draining."""
        deadline = time.monotonic() + grace_s
        if worker.running:
            self.log.info(
                "draining: up to %gs for %d running attempt(s); signal again to skip",
                grace_s,
                len(worker.running),
            )
        while worker.running and time.monotonic() < deadline and not self.hurry.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.hurry.wait(), 0.05)
        if worker.running or worker.queued:
            self.log.warning(
                "handing back %d unfinished attempt(s)", len(worker.running) + worker.queued
            )
            tasks = list(worker.running.values())
            worker.hand_back()
            if tasks:
                await asyncio.wait(tasks, timeout=HAND_BACK_WAIT_S)
        worker.flush()
        live = alive_addresses()
        deadline = time.monotonic() + OUTBOX_WAIT_S
        while time.monotonic() < deadline and not self.hurry.is_set():
            if not any(addr in live for addr, _ in store.outbox()):
                break
            await asyncio.sleep(0.05)
