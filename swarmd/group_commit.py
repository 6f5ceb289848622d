"""The coordinator's group commit: journal first, then everything that depends on it.

Each turn of the event loop hands over its effects. The journal records (and the
artifacts of results committed that turn) go to SQLite together; the turn's other
effects — dispatches, cancels, result acks, "task finished", and telling watchers —
are *held* until that commit succeeded, so nothing is visible to a worker or to
swarmctl before it is durable.

When a commit fails (disk full, I/O error) nothing is lost: the records stay here
(the last one per key, so a long outage does not grow them without bound), the held
effects wait, and the commit is tried again every ``RETRY_S``
(:class:`swarmd.journal_health.JournalHealth` tells the node to refuse work meanwhile).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Mapping

from .core import tasks as core
from .core.usage import UsageBook
from .journal_health import RETRY_S, JournalHealth, JournalUnavailable, describe
from .store import Store

HELD_MAX = 100_000  # messages held during an outage; beyond, the oldest go (resent anyway)
# Usage rows alone (a gateway request's tokens: its task is never journaled) wait this
# long for a commit that writes records anyway, so that they leave the request's path
# and many requests share one transaction. A crash loses at most this much accounting.
USAGE_DELAY_S = 0.25

_Key = tuple[str, str, str]
# Told of each commit's journal records and artifacts once written (replication).
Written = Callable[[list["core.Journal"], dict[tuple[str, str], Mapping[str, bytes]]], None]


def task_of(effect: core.Effect) -> str | None:
    if isinstance(effect, core.Journal):
        task_id = effect.data.get("task")
        return task_id if isinstance(task_id, str) else None
    return effect.task_id


class GroupCommit:
    def __init__(self, store: Store, health: JournalHealth) -> None:
        self.store = store
        self.health = health
        self.records_written = 0  # journal rows written (swarmctl stats: journal_writes)
        self.held_dropped = 0
        self._records: dict[_Key, core.Journal] = {}  # not committed yet
        self._artifacts: dict[tuple[str, str], Mapping[str, bytes]] = {}
        self._held: list[core.Effect] = []
        self._dirty: set[str] = set()  # tasks with changes not committed yet
        self._retry_at = 0.0
        self._committed: list[asyncio.Future[None]] = []
        # The llm usage book (swarmd.core.usage): its changed rows go in the same commit.
        self.usage: UsageBook | None = None
        self.usage_due_at: float | None = None  # when usage rows alone must be written
        # Told the journal records of each commit once they are written (replication).
        self.on_written: Written | None = None

    @property
    def failing(self) -> bool:
        return self._retry_at > 0.0

    def durable(self, task_id: str | None = None) -> bool:
        """Is everything of this task (of every task, without one) committed?"""
        return not self._dirty if task_id is None else task_id not in self._dirty

    def add(self, effects: list[core.Effect]) -> None:
        for e in effects:
            if not isinstance(e, core.Journal):
                self._held.append(e)
                continue
            task_id = str(e.data.get("task"))
            if e.kind == "forget":  # its rows go: what was still to write of it too
                for key in [k for k in self._records if k[1] == task_id]:
                    del self._records[key]
                for akey in [k for k in self._artifacts if k[0] == task_id]:
                    del self._artifacts[akey]
            self._records.pop(e.key, None)
            self._records[e.key] = e  # the last snapshot per key, in the order of the last
            self._dirty.add(task_id)
        if len(self._held) > HELD_MAX:
            self.held_dropped += len(self._held) - HELD_MAX
            del self._held[: len(self._held) - HELD_MAX]

    def put_inputs(self, task_id: str, files: Mapping[str, bytes]) -> None:
        """A new task's input files, written now (JournalUnavailable if they cannot be)."""
        try:
            self.store.put_inputs(task_id, files)
        except (sqlite3.Error, OSError) as exc:
            why = describe(exc, self.store.path.parent)
            raise JournalUnavailable(f"not taking new work: {why}") from None

    def add_artifacts(self, task_id: str, subtask_id: str, files: Mapping[str, bytes]) -> None:
        self._artifacts[(task_id, subtask_id)] = files
        self._dirty.add(task_id)

    def commit(self, *, all_usage: bool = False) -> tuple[list[core.Effect], list[str]] | None:
        """Write what is pending: the held effects to carry out now and the tasks that
        changed, or None if the commit failed (or a retry is not due yet). Usage rows
        alone wait until :attr:`usage_due_at` unless ``all_usage``."""
        now = time.monotonic()
        if self.failing and now < self._retry_at:
            return None
        usage = self.usage if self.usage is not None and self.usage.has_pending() else None
        if usage is not None and not (self._records or self._artifacts or all_usage):
            if self.usage_due_at is None:
                self.usage_due_at = now + USAGE_DELAY_S
            if now < self.usage_due_at:
                usage = None
        if self._records or self._artifacts or usage is not None:
            try:
                for (task_id, subtask_id), files in self._artifacts.items():
                    self.store.put_artifacts(task_id, subtask_id, files)
                artifacts, self._artifacts = self._artifacts, {}
                records = list(self._records.values())
                written = self.store.write_journal(
                    ((r.kind, *r.key[1:], r.data) for r in records),
                    None if usage is None else usage.pending(),
                )
            except (sqlite3.Error, OSError) as exc:
                self._retry_at = time.monotonic() + RETRY_S
                self.health.failed("journal", exc)
                return None
            self.records_written += written
            self._records.clear()
            if self.on_written is not None and (records or artifacts):
                self.on_written(records, artifacts)
            if usage is not None:
                usage.written()
                self.usage_due_at = None
        self._retry_at = 0.0
        released, self._held = self._held, []
        changed = [*self._dirty, *(t for t in map(task_of, released) if t not in self._dirty)]
        self._dirty.clear()
        for future in self._committed:
            if not future.done():
                future.set_result(None)
        self._committed.clear()
        self.health.ok("journal")
        return released, [t for t in dict.fromkeys(changed) if t is not None]

    def drop_task(self, task_id: str) -> None:
        """Forget what a task left here (a submission that could not be journaled)."""
        for key in [k for k in self._records if k[1] == task_id]:
            del self._records[key]
        for akey in [k for k in self._artifacts if k[0] == task_id]:
            del self._artifacts[akey]
        self._held = [e for e in self._held if task_of(e) != task_id]
        self._dirty.discard(task_id)
        if not self._records and not self._artifacts:
            self._dirty.clear()

    async def wait_durable(self, task_id: str | None, timeout_s: float) -> bool:
        """Until this task's changes (every task's, without one) are committed: False
        if the journal is failing or the time is up first."""
        deadline = time.monotonic() + timeout_s
        while not self.durable(task_id):
            left = deadline - time.monotonic()
            if self.failing or left <= 0:
                return False
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._committed.append(future)
            try:
                await asyncio.wait_for(future, left)
            except TimeoutError:
                return False
        return True
