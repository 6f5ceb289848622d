"""The state dir under a running node: if it (or the lock or journal file in it) is
deleted or replaced, the node stops with exit code 78 rather than run on with state
nobody will find — its next start would make a new node in a new cluster.

Checked every ``CHECK_S`` by comparing (device, inode) with what was there at start.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from .statedir import EXIT_STATE_DIR_LOST

CHECK_S = 1.0


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class StateDirWatch:
    def __init__(self, state_dir: Path, names: tuple[str, ...] = ("lock", "swarmd.db")) -> None:
        self.paths = [state_dir, *(state_dir / n for n in names)]
        self._seen = {p: _identity(p) for p in self.paths}

    def check(self) -> str | None:
        """What changed since start, or None."""
        for path, seen in self._seen.items():
            now = _identity(path)
            if seen is not None and now is None:
                return f"{path} was deleted"
            if now != seen:
                return f"{path} was replaced"
        return None

    async def loop(self, stop: Callable[[int], None], log: logging.Logger) -> None:
        """Check every CHECK_S; on a change, log it and ``stop(EXIT_STATE_DIR_LOST)``."""
        while True:
            await asyncio.sleep(CHECK_S)
            problem = self.check()
            if problem is not None:
                log.error(
                    "STATE DIR LOST: %s while running. Stopping (exit %d) rather than run "
                    "on with state a restart would not find (it would start a new node in "
                    "a new cluster); put the state dir back (from a backup) before "
                    "starting swarmd again",
                    problem,
                    EXIT_STATE_DIR_LOST,
                )
                stop(EXIT_STATE_DIR_LOST)
                return
