"""Lower (and restore) the CPU priority of the work this daemon runs, for
``[node] when_user_active = "nice"``.

The work is every process group led by a descendant of the daemon: each shell subtask
runs in its own session (its pid is its group, see :mod:`swarmd.executors.shell`) and
so does each python pool worker (it calls ``setsid``). Nothing else the daemon starts
leads a group. ``setpriority(PRIO_PGRP)`` sets the nice value of every process of a
group; what they start later inherits it.

Restoring needs privilege: an unprivileged process may raise a nice value but not lower
it again (CAP_SYS_NICE, or ``RLIMIT_NICE``/``LimitNICE=`` in a systemd unit). Without
it the work started while the user was active stays niced until it ends (one warning);
work started later runs at the daemon's priority.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable

import psutil

__all__ = ["NICE_WHILE_ACTIVE", "Renicer", "work_groups"]

NICE_WHILE_ACTIVE = 19  # the lowest CPU priority: the owner's programs come first


def work_groups(root_pid: int) -> set[int]:
    """The process groups led by descendants of ``root_pid``."""
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return set()
    groups = set()
    for child in children:
        with contextlib.suppress(OSError):
            if os.getpgid(child.pid) == child.pid:
                groups.add(child.pid)
    return groups


class Renicer:
    def __init__(
        self,
        log: logging.Logger,
        root_pid: int | None = None,
        groups: Callable[[int], set[int]] = work_groups,
    ) -> None:
        self.log = log
        self.root_pid = os.getpid() if root_pid is None else root_pid
        self.groups = groups
        self.base = os.getpriority(os.PRIO_PROCESS, 0)  # the daemon's own nice value
        self.niced: set[int] = set()  # groups set to NICE_WHILE_ACTIVE, still alive
        self.counters = {"reniced": 0, "restored": 0, "restore_refused": 0}
        self._warned = False

    def apply(self, nice: bool) -> None:
        """Nice every group of work (new ones too), or restore the ones niced."""
        if nice:
            current = self.groups(self.root_pid)
            self.niced &= current  # forget the groups that ended
            for pgid in current - self.niced:
                if self._set(pgid, max(self.base, NICE_WHILE_ACTIVE)):
                    self.niced.add(pgid)
                    self.counters["reniced"] += 1
            return
        for pgid in sorted(self.niced):
            try:
                os.setpriority(os.PRIO_PGRP, pgid, self.base)
                self.counters["restored"] += 1
            except ProcessLookupError:
                pass
            except PermissionError:
                self.counters["restore_refused"] += 1
                if not self._warned:
                    self._warned = True
                    self.log.warning(
                        "cannot restore the priority of work niced while the user was "
                        "active (needs CAP_SYS_NICE or LimitNICE=): it stays niced until "
                        "it ends"
                    )
        self.niced.clear()

    def _set(self, pgid: int, value: int) -> bool:
        try:
            os.setpriority(os.PRIO_PGRP, pgid, value)
        except OSError:  # gone (ProcessLookupError), not ours (PermissionError)
            return False
        return True
