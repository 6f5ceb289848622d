"""Retention: which finished tasks a coordinator forgets, and when.

A coordinator keeps every finished task (its status, results, journal rows, input
files and artifacts) so ``swarmctl status``/``result`` can read it — but not forever:
a finished task is forgotten once it finished more than ``keep_s`` ago, and the
oldest finished tasks are forgotten while more than ``keep_tasks`` tasks, or more
than ``keep_subtasks`` subtasks in all, are kept (memory goes with subtasks: a
finished subtask record with its attempts and placements is a few KiB). The caps
never take a task that finished less than ``grace_s`` ago, so a client waiting on it
can still read its result. Unfinished tasks are never forgotten, however old or many.

Pure: :func:`to_forget` is given the finished tasks oldest first and the time; the
coordinator (``Coordinator.expire``) turns its answer into "forget" journal records,
and the shell calls that every ``interval_s`` and as soon as the count cap is passed.
Each call forgets one bounded batch (``batch_subtasks``), so a node that starts with
a lower cap than its journal holds catches up over several loop turns instead of
stalling one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

DAY_S: Final = 86_400.0


@dataclass(frozen=True, slots=True)
class Retention:
    keep_s: float = 7 * DAY_S  # a finished task is forgotten this long after it finished
    keep_tasks: int = 10_000  # at most this many finished tasks are kept (oldest go first)
    keep_subtasks: int = 100_000  # and at most this many subtasks in them
    grace_s: float = 60.0  # the caps keep a task at least this long after it finished
    batch_subtasks: int = 20_000  # one call forgets tasks of at most this many subtasks
    interval_s: float = 60.0  # how often the shell sweeps for tasks that aged out

    def __post_init__(self) -> None:
        if not (math.isfinite(self.keep_s) and self.keep_s >= 0):
            raise ValueError(f"keep_s {self.keep_s!r}: expected a finite number >= 0")
        if not (math.isfinite(self.grace_s) and self.grace_s >= 0):
            raise ValueError(f"grace_s {self.grace_s!r}: expected a finite number >= 0")
        if self.keep_tasks < 0:
            raise ValueError(f"keep_tasks {self.keep_tasks!r}: expected >= 0")
        if self.keep_subtasks < 0:
            raise ValueError(f"keep_subtasks {self.keep_subtasks!r}: expected >= 0")
        if self.batch_subtasks < 1:
            raise ValueError(f"batch_subtasks {self.batch_subtasks!r}: expected >= 1")

    def over_cap(self, finished: int, subtasks: int) -> bool:
        """More finished tasks (or subtasks in them) are held than kept: sweep now, not
        at the next interval."""
        return finished > self.keep_tasks or subtasks > self.keep_subtasks


def to_forget(
    finished: Iterable[tuple[str, float, int]],
    count: int,
    subtasks: int,
    now: float,
    policy: Retention,
) -> list[str]:
    """The finished tasks to forget now, oldest first.

    ``finished``: (task id, finished time, number of subtasks) of every finished task,
    oldest first; ``count`` and ``subtasks``: how many tasks and subtasks that is. A
    task goes if it finished at or before ``now - keep_s``, or — once it finished at
    least ``grace_s`` ago — while more than ``keep_tasks`` tasks or ``keep_subtasks``
    subtasks would be left. The batch stops before it would exceed ``batch_subtasks``
    subtasks (but always takes one task, however big, so every call makes progress).
    What goes is a prefix of the oldest-first order, so the walk stops at the first
    task that stays: a call costs its batch, not the number of finished tasks.
    """
    cutoff = now - policy.keep_s
    capped = now - policy.grace_s
    out: list[str] = []
    budget = policy.batch_subtasks
    for task_id, finished_at, size in finished:
        over = count - len(out) > policy.keep_tasks or subtasks > policy.keep_subtasks
        if finished_at > cutoff and not (over and finished_at <= capped):
            break
        if out and size > budget:
            break
        out.append(task_id)
        budget -= size
        subtasks -= size
    return out
