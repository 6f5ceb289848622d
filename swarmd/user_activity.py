"""How long ago this machine's user last gave input, for ``[node] when_user_active``.

Two sources, tried in this order on every sample:

* logind (``loginctl``, no D-Bus library needed): the local sessions (``Remote=no``) of
  class ``user``. A graphical session says ``IdleHint=no`` while its user is active (the
  desktop sets the hint after its own idle delay), and ``IdleSinceHint`` when it went
  idle; a text session's ``IdleSinceHint`` is its terminal's last input. Nobody logged
  in locally: idle.
* input interrupts (``/proc/interrupts``, readable without root): the counts of the
  lines of built-in keyboards, mice and touchpads (i8042, i2c-hid, ELAN/Synaptics/ALPS
  devices). Input arrived when a count moved. USB keyboards and mice share the USB
  controller's interrupt with every other USB device, so they are not seen here.

``/dev/input/event*`` is not used: reading it needs root or the ``input`` group, and its
timestamps do not move with input. Unknown (neither source works): None, which the
policy counts as idle.
"""

from __future__ import annotations

import logging
import math
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["UserActivity", "idle_from_sessions", "input_counts", "parse_sessions"]

LOGINCTL_TIMEOUT_S = 2.0
GRAPHICAL = frozenset({"x11", "wayland", "mir"})
SESSION_PROPERTIES = ("Id", "Type", "Class", "Remote", "IdleHint", "IdleSinceHint")
_INPUT_LINE = re.compile(r"i8042|i2c[-_]hid|keyboard|mouse|touchpad|\b(?:ELAN|SYNA|ALPS)", re.I)

Run = Callable[[Sequence[str]], str | None]  # argv -> stdout, None when it failed


def run_loginctl(argv: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(
            ["loginctl", *argv],
            capture_output=True,
            text=True,
            timeout=LOGINCTL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def parse_sessions(text: str) -> list[dict[str, str]]:
    """``loginctl show-session -p ... ID...`` output: one block of KEY=VALUE per session,
    blocks separated by blank lines."""
    sessions: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        key, sep, value = line.partition("=")
        if sep:
            current[key.strip()] = value.strip()
        elif current:
            sessions.append(current)
            current = {}
    return sessions


def idle_from_sessions(sessions: Sequence[Mapping[str, str]], now: float) -> float:
    """Seconds since the last input in any local user session (``now``: unix time);
    ``math.inf`` when none says it had input."""
    idle = math.inf
    for s in sessions:
        if s.get("Class") != "user" or s.get("Remote") == "yes":
            continue
        try:
            since = int(s.get("IdleSinceHint") or 0) / 1e6  # microseconds, unix time
        except ValueError:
            since = 0.0
        if s.get("Type") in GRAPHICAL and s.get("IdleHint") == "no":
            idle = 0.0  # active now, as its desktop says
        elif since > 0:
            idle = min(idle, max(0.0, now - since))
    return idle


def input_counts(text: str) -> int | None:
    """The summed interrupt counts of the input devices in ``/proc/interrupts``; None
    when it lists none."""
    total, found = 0, False
    for line in text.splitlines()[1:]:
        label, _, rest = line.partition(":")
        if not label.strip() or not _INPUT_LINE.search(rest):
            continue
        found = True
        for field in rest.split():  # the per-CPU counts, then the chip and the name
            if not field.isdigit():
                break
            total += int(field)
    return total if found else None


class UserActivity:
    """``idle_s()``: seconds since the user's last input, math.inf for none seen, None
    when no source works. Blocking (a subprocess): call it in a thread."""

    def __init__(
        self,
        log: logging.Logger,
        run: Run = run_loginctl,
        interrupts: Path = Path("/proc/interrupts"),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = log
        self.run = run
        self.interrupts = interrupts
        self.clock = clock
        self.source: str | None = None  # the source the last sample came from
        self._count: int | None = None
        self._last_input: float | None = None  # unix time the count last moved

    def idle_s(self) -> float | None:
        idle, source = self._logind(), "logind"
        if idle is None:
            idle, source = self._from_interrupts(), "input interrupts"
        if idle is None:
            source = "none"
        if source != self.source:
            how = "unknown: counted as idle" if idle is None else f"from {source}"
            self.log.info("user activity %s", how)
            self.source = source
        return idle

    def _logind(self) -> float | None:
        listed = self.run(["list-sessions", "--no-legend"])
        if listed is None:
            return None
        ids = [line.split()[0] for line in listed.splitlines() if line.split()]
        if not ids:
            return math.inf
        props = [arg for p in SESSION_PROPERTIES for arg in ("-p", p)]
        shown = self.run(["show-session", *props, *ids])
        if shown is None:
            return None
        return idle_from_sessions(parse_sessions(shown), self.clock())

    def _from_interrupts(self) -> float | None:
        try:
            count = input_counts(self.interrupts.read_text())
        except (OSError, ValueError):
            count = None
        if count is None:
            return None
        now = self.clock()
        if self._count is not None and count != self._count:
            self._last_input = now
        self._count = count
        return math.inf if self._last_input is None else max(0.0, now - self._last_input)
