"""Whether this node can write its state dir: the last failed commit of the journal or
of the worker's outbox, and what kind of failure it was.

A failed commit (disk full, quota, I/O error, a read-only file system) does not stop
the node: it keeps what it has in memory, refuses new work (:attr:`JournalHealth.reason`
is shown by ``swarmctl peers`` and ``stats`` and gossiped, so coordinators place
elsewhere), retries the commit, and takes work again once a commit succeeds.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Store

RETRY_S = 1.0  # a failed commit is tried again this often

# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26

DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}


class JournalUnavailable(RuntimeError):
    """New work refused: the journal cannot be written (the message says why)."""


def sqlite_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def is_damaged(exc: BaseException) -> bool:
    """SQLite says the file is not a database, or a damaged one."""
    return isinstance(exc, sqlite3.DatabaseError) and sqlite_code(exc) in (
        _SQLITE_CORRUPT,
        _SQLITE_NOTADB,
    )


def is_disk_error(exc: BaseException) -> bool:
    """A write the disk refused: full, over quota, I/O error, read-only."""
    if isinstance(exc, OSError):
        return exc.errno in DISK_ERRNOS
    return isinstance(exc, sqlite3.Error) and sqlite_code(exc) in (
        _SQLITE_FULL,
        _SQLITE_IOERR,
        _SQLITE_READONLY,
        _SQLITE_CANTOPEN,
    )


def describe(exc: BaseException, state_dir: Path) -> str:
    """One line naming the state dir and what went wrong with it."""
    if isinstance(exc, OSError) and exc.errno is not None:
        what = f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno, exc.errno)})"
    elif sqlite_code(exc) == _SQLITE_FULL:
        what = "no space left on device (SQLITE_FULL)"
    else:
        what = str(exc) or type(exc).__name__
    return f"state dir {state_dir}: {what}"


class JournalHealth:
    """The failing writers of one state dir ("journal", "outbox") and why.

    ``on_change(reason)`` is called when the node starts refusing work (a reason) and
    when it may take work again (None)."""

    def __init__(self, state_dir: Path, log: logging.Logger) -> None:
        self.state_dir = state_dir
        self.log = log
        self.failures = 0  # commits that failed (swarmctl stats: journal_commit_failures)
        self.on_change: Callable[[str | None], None] = lambda _reason: None
        self._failing: dict[str, str] = {}  # writer -> why
        self._since = 0.0

    @property
    def reason(self) -> str | None:
        """Why the node refuses work; None while every commit succeeds."""
        if not self._failing:
            return None
        return "journal not writable: " + next(iter(self._failing.values()))

    def refuse_if_failing(self) -> None:
        """JournalUnavailable (new work refused) while a commit fails."""
        if self.reason is not None:
            raise JournalUnavailable(f"not taking new work: {self.reason}")

    def failed(self, writer: str, exc: BaseException) -> None:
        self.failures += 1
        why = describe(exc, self.state_dir)
        was = self.reason
        if writer not in self._failing:
            self.log.error(
                "%s commit failed: %s; refusing new work, keeping what is held in memory "
                "and retrying every %gs",
                writer,
                why,
                RETRY_S,
            )
        self._failing[writer] = why
        if was is None:
            self._since = time.monotonic()
            self.on_change(self.reason)

    def ok(self, writer: str) -> None:
        if self._failing.pop(writer, None) is None:
            return
        if not self._failing:
            self.log.warning(
                "state dir %s is writable again after %.1fs: committed what was held; "
                "taking work again",
                self.state_dir,
                time.monotonic() - self._since,
            )
            self.on_change(None)

    def stats(self, store: Store, moved: Path | None) -> dict[str, int]:
        """The journal's counters for ``swarmctl stats``."""
        return {
            "journal_failing": int(self.reason is not None),
            "journal_commit_failures": self.failures,
            "journal_quarantined": store.quarantined(),
            "journal_damaged_moved": int(moved is not None),
        }
