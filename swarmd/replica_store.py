"""Replicas of other coordinators' tasks in this node's SQLite file, apart from its own
journal (swarmd/core/succession.py has the design), and the tasks this node lost to a
successor ("moved").

- ``replica``: the journal snapshots of each replicated task, one row per (kind, task,
  subtask), upserted as the coordinator sends them.
- ``replica_tasks``: per task its coordinator, epoch, whether this node adopted it, and
  where its input files are when they were too big to replicate.
- ``replica_inputs``: the input files replicated with a task.
- ``replica_artifacts``: the artifacts of its committed results that travelled inline.
- ``replicated``: this node's own tasks whose replica a successor acknowledged (after
  a restart, only those are held until that successor says it did not adopt them).
- ``moved``: tasks this node coordinated that a successor adopted: who, at which epoch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from .store import Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replica (
    kind TEXT NOT NULL, task TEXT NOT NULL, subtask TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (kind, task, subtask));
CREATE INDEX IF NOT EXISTS replica_task ON replica (task);
CREATE TABLE IF NOT EXISTS replica_tasks (
    task TEXT PRIMARY KEY, coordinator TEXT NOT NULL, epoch INTEGER NOT NULL,
    adopted INTEGER NOT NULL DEFAULT 0, inputs_at TEXT, version REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS replica_inputs (
    task TEXT NOT NULL, path TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (task, path));
CREATE TABLE IF NOT EXISTS replica_artifacts (
    task TEXT NOT NULL, subtask TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (task, subtask, name));
CREATE TABLE IF NOT EXISTS replicated (
    task TEXT PRIMARY KEY, holder TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS moved (
    task TEXT PRIMARY KEY, coordinator TEXT NOT NULL, addr TEXT NOT NULL,
    epoch INTEGER NOT NULL, at REAL NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class StoredReplica:
    task: str
    coordinator: str
    epoch: int
    adopted: bool
    inputs_at: str | None
    records: list[tuple[str, dict[str, Any]]]  # (kind, data)
    version: float = 0.0


@dataclass(frozen=True, slots=True)
class Moved:
    """A task this node coordinated, adopted by ``coordinator`` at ``epoch``."""

    task: str
    coordinator: str
    addr: str
    epoch: int


class ReplicaStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db
        self.db.executescript(_SCHEMA)

    def put(
        self,
        coordinator: str,
        tasks: Iterable[tuple[str, int, bool, Sequence[tuple[str, Mapping[str, Any]]], float]],
        inputs: Mapping[str, Mapping[str, bytes]],
        inputs_at: Mapping[str, str],
        artifacts: Mapping[str, Mapping[str, Mapping[str, bytes]]] | None = None,
    ) -> None:
        """(task, epoch, full, records, version) of one put, in one transaction
        (``full``: what was held of the task goes first)."""
        with self.store._transaction():
            for task, epoch, full, records, version in tasks:
                if full:
                    self._delete(task)
                self.db.execute(
                    "INSERT INTO replica_tasks (task, coordinator, epoch, inputs_at, version) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (task) DO UPDATE SET "
                    "coordinator = excluded.coordinator, epoch = excluded.epoch, "
                    "version = MAX(version, excluded.version)",
                    (task, coordinator, epoch, inputs_at.get(task), version),
                )
                for kind, data in records:
                    if kind == "forget":
                        self._delete(task)
                        break
                    self.db.execute(
                        "INSERT INTO replica (kind, task, subtask, data) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (kind, task, subtask) DO UPDATE SET data = excluded.data",
                        (kind, task, str(data.get("subtask", "")), msgspec.msgpack.encode(data)),
                    )
                files = inputs.get(task)
                if files:
                    self.db.executemany(
                        "INSERT OR REPLACE INTO replica_inputs (task, path, data) VALUES (?, ?, ?)",
                        [(task, path, data) for path, data in files.items()],
                    )
                for subtask, named in (artifacts or {}).get(task, {}).items():
                    self.db.executemany(
                        "INSERT OR REPLACE INTO replica_artifacts (task, subtask, name, data) "
                        "VALUES (?, ?, ?, ?)",
                        [(task, subtask, name, data) for name, data in named.items()],
                    )

    def _delete(self, task: str) -> None:
        for table in ("replica", "replica_tasks", "replica_inputs", "replica_artifacts"):
            self.db.execute(f"DELETE FROM {table} WHERE task = ?", (task,))

    def drop(self, tasks: Iterable[str]) -> None:
        with self.store._transaction():
            for task in tasks:
                self._delete(task)

    def mark_adopted(self, tasks: Iterable[str]) -> None:
        """Adopted: the rows stay (``adopted``), the task is in the journal now."""
        with self.store._transaction():
            self.db.executemany(
                "UPDATE replica_tasks SET adopted = 1 WHERE task = ?", [(t,) for t in tasks]
            )
            for task in tasks:
                for table in ("replica", "replica_inputs", "replica_artifacts"):
                    self.db.execute(f"DELETE FROM {table} WHERE task = ?", (task,))

    def load(self) -> list[StoredReplica]:
        out = []
        rows = self.db.execute(
            "SELECT task, coordinator, epoch, adopted, inputs_at, version FROM replica_tasks"
        ).fetchall()
        for task, coordinator, epoch, adopted, inputs_at, version in rows:
            records = []
            for kind, data in self.db.execute(
                "SELECT kind, data FROM replica WHERE task = ?", (task,)
            ):
                try:
                    decoded = msgspec.msgpack.decode(data)
                except msgspec.DecodeError:
                    continue
                if isinstance(decoded, dict):
                    records.append((str(kind), decoded))
            out.append(
                StoredReplica(
                    task, coordinator, epoch, bool(adopted), inputs_at, records, float(version)
                )
            )
        return out

    def inputs(self, task: str) -> dict[str, bytes]:
        rows = self.db.execute("SELECT path, data FROM replica_inputs WHERE task = ?", (task,))
        return {path: bytes(data) for path, data in rows}

    def artifacts(self, task: str) -> dict[str, dict[str, bytes]]:
        out: dict[str, dict[str, bytes]] = {}
        rows = self.db.execute(
            "SELECT subtask, name, data FROM replica_artifacts WHERE task = ?", (task,)
        )
        for subtask, name, data in rows:
            out.setdefault(subtask, {})[name] = bytes(data)
        return out

    def set_replicated(self, holder: str, tasks: Iterable[str]) -> None:
        with self.store._transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO replicated (task, holder) VALUES (?, ?)",
                [(t, holder) for t in tasks],
            )

    def unreplicated(self, tasks: Iterable[str]) -> None:
        with self.store._transaction():
            self.db.executemany("DELETE FROM replicated WHERE task = ?", [(t,) for t in tasks])

    def replicated(self) -> dict[str, str]:
        """This node's tasks with a replica: task -> the node holding it."""
        return dict(self.db.execute("SELECT task, holder FROM replicated").fetchall())

    def put_moved(self, moved: Moved) -> None:
        with self.store._transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO moved (task, coordinator, addr, epoch, at) "
                "VALUES (?, ?, ?, ?, ?)",
                (moved.task, moved.coordinator, moved.addr, moved.epoch, time.time()),
            )

    def moved(self) -> dict[str, Moved]:
        rows = self.db.execute("SELECT task, coordinator, addr, epoch FROM moved")
        return {r[0]: Moved(r[0], r[1], r[2], int(r[3])) for r in rows}
