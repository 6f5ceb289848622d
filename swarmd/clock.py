"""The coordinator's clock."""

from __future__ import annotations

import time


class Clock:
    """Wall-clock seconds that never go backwards: epoch at start + monotonic since.

    Journaled times stay meaningful across restarts (epoch seconds), and a clock
    step while running cannot expire every lease at once.
    """

    def __init__(self) -> None:
        self._wall0, self._mono0 = time.time(), time.monotonic()

    def __call__(self) -> float:
        return self._wall0 + time.monotonic() - self._mono0
