"""Opening the node's SQLite file at start: a damaged one is moved aside (the node
starts with an empty journal, and the log says what was kept and how to get rows
back); a state dir the disk will not write to stops the start with one line and exit
code 75 (:data:`swarmd.statedir.EXIT_UNWRITABLE`). Journal rows restore cannot use
are quarantined (:func:`quarantine`), the rest restored.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from .core import tasks as core
from .journal_health import describe, is_damaged, is_disk_error
from .statedir import EXIT_UNWRITABLE, StartupError
from .store import Store, move_aside

LOGGED_MAX = 20  # quarantined rows logged one by one at start; beyond, a count


def open_store(path: Path, log: logging.Logger) -> tuple[Store, Path | None]:
    """The store at ``path``, its journal read (``Store.load``), and where a damaged
    file was moved to (None if it was sound)."""
    try:
        return _open(path), None
    except (sqlite3.Error, OSError) as exc:
        if not is_damaged(exc):
            raise _unwritable(exc, path) from None
        damage = exc
    moved = move_aside(path, time.time())
    log.error(
        "the journal %s is damaged (%s): moved it to %s (with its -wal and -shm) and "
        "started with an empty journal. Kept: the node id, cluster secret and generation "
        "(the same member of the same cluster). Not restored: the tasks this node "
        "coordinated, their inputs and artifacts, and results it had not delivered (their "
        "coordinators run those again). To get rows back, stop swarmd and run "
        "`sqlite3 %s .recover > recovered.sql`",
        path,
        damage,
        moved,
        moved,
    )
    try:
        return _open(path), moved
    except (sqlite3.Error, OSError) as exc:
        raise _unwritable(exc, path) from None


def _open(path: Path) -> Store:
    store = Store(path)
    try:
        store.load()
    except BaseException:
        store.close()
        raise
    return store


def _unwritable(exc: BaseException, path: Path) -> BaseException:
    if is_disk_error(exc):
        return StartupError(
            f"cannot open the journal: {describe(exc, path.parent)}; free some space "
            "(or fix the disk) and start swarmd again",
            exit_code=EXIT_UNWRITABLE,
        )
    return exc


def quarantine(store: Store, effects: list[core.Effect], log: logging.Logger) -> list[core.Effect]:
    """Move the rows of restore's :class:`Quarantine` effects out of the journal, log
    them (and those the store could not decode) with their task ids; the other effects."""
    bad = [(e.key, e.reason) for e in effects if isinstance(e, core.Quarantine)]
    if bad:
        store.quarantine(bad)
    rows = [*store.bad_rows, *bad]
    for (kind, task, subtask), why in rows[:LOGGED_MAX]:
        sub = f" subtask {subtask}" if subtask else ""
        log.error("journal: quarantined the %s record of task %s%s: %s", kind, task, sub, why)
    if rows:
        log.error(
            "journal: %d record(s) quarantined (table `quarantine` in %s), the rest "
            "restored; a task without its records runs those subtasks again",
            len(rows),
            store.path,
        )
    return [e for e in effects if not isinstance(e, core.Quarantine)]
