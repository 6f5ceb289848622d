"""The node's SQLite file (WAL) in its state dir: what must survive a SIGKILL.

- ``journal``: the coordinator's task snapshots (:class:`swarmd.core.tasks.Journal`),
  one row per (kind, task, subtask), upserted; replayed by ``Coordinator.restore``.
  A "forget" record (retention, swarmd/core/retention.py) deletes every row of its
  task here and in ``inputs`` and ``artifacts``, itself included.
- ``inputs``: the files a task shipped with it, sent along with each dispatch.
- ``artifacts``: committed results' output files.
- ``outbox``: a worker's finished results until their coordinator acknowledges them.
- ``usage``: the coordinator's llm usage book (:mod:`swarmd.core.usage`), one row per
  time bucket and (profile, model, node, client), upserted with the journal records
  of the same commit.
- ``quarantine``: journal rows restore could not use (bad msgpack, a missing key, a
  wrong type), moved out of ``journal`` with the reason, for a person to look at.

The file (and so its -wal and -shm, which SQLite creates with the file's mode) is
0600: it holds task inputs and results.

Writes are grouped: the shell hands over all the records one scheduling pass produced
and they go in one transaction, so journaling does not limit dispatch throughput.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    kind TEXT NOT NULL, task TEXT NOT NULL, subtask TEXT NOT NULL, data BLOB NOT NULL,
    seq INTEGER NOT NULL, PRIMARY KEY (kind, task, subtask));
CREATE INDEX IF NOT EXISTS journal_task ON journal (task);
CREATE TABLE IF NOT EXISTS inputs (
    task TEXT NOT NULL, path TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (task, path));
CREATE TABLE IF NOT EXISTS artifacts (
    task TEXT NOT NULL, subtask TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (task, subtask, name));
CREATE TABLE IF NOT EXISTS outbox (
    task TEXT NOT NULL, subtask TEXT NOT NULL, attempt INTEGER NOT NULL,
    coordinator TEXT NOT NULL, message BLOB NOT NULL, PRIMARY KEY (task, subtask, attempt));
CREATE TABLE IF NOT EXISTS usage (
    start INTEGER NOT NULL, span INTEGER NOT NULL, profile TEXT NOT NULL, model TEXT NOT NULL,
    node TEXT NOT NULL, client TEXT NOT NULL, node_name TEXT NOT NULL, requests INTEGER NOT NULL,
    errors INTEGER NOT NULL, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
    cost REAL NOT NULL, PRIMARY KEY (start, span, profile, model, node, client));
CREATE TABLE IF NOT EXISTS quarantine (
    kind TEXT, task TEXT, subtask TEXT, data BLOB, reason TEXT NOT NULL, at REAL NOT NULL);
"""
_SIDE_FILES = ("", "-wal", "-shm", "-journal")

JournalRecord = tuple[str, dict[str, Any]]  # (kind, data)
# The usage book's changes: rows to upsert, and keys (with start, span, dims) to delete.
UsageWrite = tuple[Sequence[tuple[Any, ...]], Sequence[Any]]
BadRow = tuple[tuple[str, str, str], str]  # (kind, task, subtask), why


WAL_LIMIT = 8 << 20  # bytes the -wal file keeps after a checkpoint
# The writer checkpoints only past this many WAL pages (a fallback): the checkpointer
# thread does it every CHECKPOINT_S, off the event loop, so a commit never pays for one.
WRITER_CHECKPOINT_PAGES = 16384
CHECKPOINT_S = 1.0


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        if str(path) != ":memory:":
            private(path)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes
            # A checkpoint rewinds the WAL; this cuts it back to size after a big transaction.
            self.db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            self.db.executescript(_SCHEMA)
            row = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM journal").fetchone()
        except BaseException:
            self.db.close()  # not a database, or the disk is full: the caller decides
            raise
        self.transactions = 0  # written so far (swarmctl stats: store_transactions)
        self._checkpointer: threading.Thread | None = None
        self._closing = threading.Event()
        self._seq = int(row[0])
        self._loaded: list[JournalRecord] | None = None  # read by load(), for journal()
        self.bad_rows: list[BadRow] = []  # what journal() quarantined

    def start_checkpointer(self) -> None:
        """Checkpoint the WAL from a thread of its own (its own connection), every
        CHECKPOINT_S while there were writes, so commits on the loop stay short."""
        if self._checkpointer is not None or str(self.path) == ":memory:":
            return
        self.db.execute(f"PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_PAGES}")
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="swarmd-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        seen = -1
        try:
            while not self._closing.wait(CHECKPOINT_S):
                if self.transactions != seen:
                    seen = self.transactions
                    with contextlib.suppress(sqlite3.Error):  # busy: the next round
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def close(self) -> None:
        self._closing.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=5)
        self.db.close()

    # ------------------------------------------------------------ coordinator journal

    def write_journal(
        self,
        records: Iterable[tuple[str, str, str, Mapping[str, Any]]],
        usage: UsageWrite | None = None,
    ) -> int:
        """Upsert (kind, task, subtask, data) records, and the usage book's changed
        rows (``usage``: upserts, keys gone), in one transaction."""
        rows = []
        for kind, task, subtask, data in records:
            self._seq += 1
            rows.append((kind, task, subtask, msgspec.msgpack.encode(data), self._seq))
        if not rows and not usage:
            return 0
        with self._transaction():
            if usage:
                self._write_usage(*usage)
            self.db.executemany(
                "INSERT INTO journal (kind, task, subtask, data, seq) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (kind, task, subtask) DO UPDATE SET data = excluded.data, "
                "seq = excluded.seq",
                rows,
            )
            for kind, task, _, _, _ in rows:
                if kind == "forget":
                    self._forget(task)
        return len(rows)

    def _write_usage(self, upserts: Sequence[tuple[Any, ...]], gone: Sequence[Any]) -> None:
        self.db.executemany(
            "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (start, span, profile, model, node, client) DO UPDATE SET "
            "node_name = excluded.node_name, requests = excluded.requests, "
            "errors = excluded.errors, tokens_in = excluded.tokens_in, "
            "tokens_out = excluded.tokens_out, cost = excluded.cost",
            upserts,
        )
        self.db.executemany(
            "DELETE FROM usage WHERE start = ? AND span = ? AND profile = ? AND model = ? "
            "AND node = ? AND client = ?",
            [(k.start, k.span, *k.dims) for k in gone],
        )

    def usage_rows(self) -> list[tuple[Any, ...]]:
        """The usage book as it was last written (``swarmd.core.usage.Row`` tuples)."""
        return list(self.db.execute("SELECT * FROM usage"))

    def _forget(self, task: str) -> None:
        # The "forget" row itself goes too: nothing of a forgotten task stays, and the
        # freed pages are reused (the file stays as big as the most ever kept).
        # journal_task makes this an index lookup, not a scan of every task's rows.
        for table in ("journal", "inputs", "artifacts"):
            self.db.execute(f"DELETE FROM {table} WHERE task = ?", (task,))

    def load(self) -> None:
        """Check the file and read the journal and the outbox now (a damaged file raises
        sqlite3.DatabaseError here, at start); ``journal()`` returns what was read."""
        problem = self.db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if problem != "ok":
            raise Damaged(f"database disk image is malformed: {problem}")
        self._loaded = self.journal()
        self.outbox()

    def journal(self) -> list[JournalRecord]:
        """(kind, data) in write order, for ``Coordinator.restore``. A row that is not
        a msgpack map of its own task is quarantined (``bad_rows`` says which)."""
        if self._loaded is not None:
            out, self._loaded = self._loaded, None
            return out
        out, bad = [], []
        rows = self.db.execute("SELECT kind, task, subtask, data FROM journal ORDER BY seq")
        for kind, task, subtask, data in rows:
            try:
                record = msgspec.msgpack.decode(data)
            except (msgspec.DecodeError, TypeError) as exc:
                bad.append(((kind, task, subtask), f"not msgpack: {exc}"))
                continue
            if not isinstance(record, dict) or record.get("task") != task:
                bad.append(((kind, task, subtask), "not a record of its task"))
                continue
            out.append((kind, record))
        if bad:
            self.quarantine(bad)
        return out

    def task_journal(self, task: str) -> list[JournalRecord]:
        """One task's rows, (kind, data) in write order (its replica, sent whole)."""
        rows = self.db.execute(
            "SELECT kind, data FROM journal WHERE task = ? ORDER BY seq", (task,)
        ).fetchall()
        out = []
        for kind, data in rows:
            with contextlib.suppress(msgspec.DecodeError):
                record = msgspec.msgpack.decode(data)
                if isinstance(record, dict):
                    out.append((str(kind), record))
        return out

    def quarantine(self, rows: Iterable[BadRow]) -> None:
        """Move these journal rows to the quarantine table, with why."""
        rows = list(rows)
        now = time.time()
        with self._transaction():
            for (kind, task, subtask), why in rows:
                key = (kind, task, subtask)
                self.db.execute(
                    "INSERT INTO quarantine (kind, task, subtask, data, reason, at) "
                    "SELECT kind, task, subtask, data, ?, ? FROM journal "
                    "WHERE kind = ? AND task = ? AND subtask = ?",
                    (why, now, *key),
                )
                self.db.execute(
                    "DELETE FROM journal WHERE kind = ? AND task = ? AND subtask = ?", key
                )
        self.bad_rows += rows

    def quarantined(self) -> int:
        """Rows in quarantine (kept until a person deletes them)."""
        return int(self.db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0])

    # ------------------------------------------------------------ task files

    def put_inputs(self, task: str, files: Mapping[str, bytes]) -> None:
        with self._transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO inputs (task, path, data) VALUES (?, ?, ?)",
                [(task, path, data) for path, data in files.items()],
            )

    def inputs(self, task: str) -> dict[str, bytes]:
        rows = self.db.execute("SELECT path, data FROM inputs WHERE task = ?", (task,))
        return {path: bytes(data) for path, data in rows}

    def put_artifacts(self, task: str, subtask: str, files: Mapping[str, bytes]) -> None:
        with self._transaction():
            self.db.execute("DELETE FROM artifacts WHERE task = ? AND subtask = ?", (task, subtask))
            self.db.executemany(
                "INSERT INTO artifacts (task, subtask, name, data) VALUES (?, ?, ?, ?)",
                [(task, subtask, name, data) for name, data in files.items()],
            )

    def artifacts(self, task: str) -> dict[str, dict[str, bytes]]:
        out: dict[str, dict[str, bytes]] = {}
        rows = self.db.execute(
            "SELECT subtask, name, data FROM artifacts WHERE task = ? ORDER BY subtask, name",
            (task,),
        )
        for subtask, name, data in rows:
            out.setdefault(subtask, {})[name] = bytes(data)
        return out

    # ------------------------------------------------------------ worker outbox

    def update_outbox(
        self,
        puts: Iterable[tuple[str, str, int, str, bytes]],
        drops: Iterable[tuple[str, str, int]],
    ) -> None:
        """Add (task, subtask, attempt, coordinator, message) rows and remove acknowledged
        ones, in one transaction."""
        with self._transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO outbox (task, subtask, attempt, coordinator, message) "
                "VALUES (?, ?, ?, ?, ?)",
                list(puts),
            )
            self.db.executemany(
                "DELETE FROM outbox WHERE task = ? AND subtask = ? AND attempt = ?", list(drops)
            )

    def outbox(self) -> list[tuple[str, bytes]]:
        """(coordinator address, encoded AttemptResult) of every unacknowledged result."""
        rows = self.db.execute("SELECT coordinator, message FROM outbox")
        return [(coordinator, bytes(message)) for coordinator, message in rows]

    # ------------------------------------------------------------

    def _transaction(self) -> _Tx:
        self.transactions += 1
        return _Tx(self.db)


class Damaged(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found the file damaged."""

    sqlite_errorcode = 11  # SQLITE_CORRUPT


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error:
                # A failed COMMIT (disk full) may leave the transaction open: end it, or
                # every later BEGIN fails. Already rolled back: that ROLLBACK fails.
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
                raise
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("ROLLBACK")


def private(path: Path) -> None:
    """Create ``path`` 0600 if it is not there (SQLite gives its -wal and -shm the
    file's mode), and make it and those 0600 if they are."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in _SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)


def move_aside(path: Path, when: float) -> Path:
    """Rename ``path`` and its -wal, -shm to ``path.damaged-TIME``(-wal, -shm)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(when))
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in _SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}{suffix}", f"{target}{suffix}")
    return target
