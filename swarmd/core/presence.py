"""Power and presence policy: whether this node takes new work, and whether its running
work yields the CPU, given its battery and its owner's activity.

Sans-I/O: the shell (:mod:`swarmd.presence`) samples the readings (psutil's battery,
logind or input interrupts for the user) and calls :func:`decide`; what it returns is
gossiped (``paused``) and applied (no new work; renice).

* ``[node] on_battery``: ``"run"`` (work on battery as on mains), ``"pause"`` (no new
  work while on battery) or ``"below:N"`` (no new work while on battery under N %,
  0 <= N <= 100; the default is ``below:30``). A machine without a battery is on mains.
  A battery whose charger state is unknown counts as on battery.
* ``[node] when_user_active``: ``"run"`` (the default: the owner's activity changes
  nothing), ``"nice"`` (running work is reniced while the user is active) or
  ``"pause"`` (no new work while the user is active; running work finishes). Active:
  input within the last ``user_idle_s`` seconds. Unknown activity counts as idle.

A node can be paused for several reasons at once; it shows the first of
``draining`` (``swarmctl drain`` or shutting down), ``disk-full`` (its journal cannot
be written), ``battery``, ``user-active``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MAINS",
    "PAUSE_REASONS",
    "BatteryRule",
    "Decision",
    "PausedReason",
    "Power",
    "PresencePolicy",
    "Readings",
    "UserActive",
    "battery_pause",
    "decide",
    "parse_battery_override",
    "parse_on_battery",
    "parse_when_user_active",
    "paused_reason",
    "power_moved",
]

PausedReason = Literal["battery", "user-active", "draining", "disk-full"]
PAUSE_REASONS: tuple[PausedReason, ...] = ("draining", "disk-full", "battery", "user-active")
UserActive = Literal["run", "nice", "pause"]
DEFAULT_ON_BATTERY = "below:30"
DEFAULT_USER_IDLE_S = 120.0


@dataclass(frozen=True, slots=True)
class BatteryRule:
    """``mode`` run | pause | below; ``threshold`` (percent) for below."""

    mode: Literal["run", "pause", "below"]
    threshold: float = 0.0

    def __str__(self) -> str:
        return f"below:{self.threshold:g}" if self.mode == "below" else self.mode


@dataclass(frozen=True, slots=True)
class PresencePolicy:
    on_battery: BatteryRule = BatteryRule("below", 30.0)
    when_user_active: UserActive = "run"
    user_idle_s: float = DEFAULT_USER_IDLE_S


@dataclass(frozen=True, slots=True)
class Power:
    """What the machine runs on. ``on_ac`` None and ``battery_percent`` None: no battery
    (mains). ``on_ac`` None with a percent: a battery whose charger state is unknown."""

    on_ac: bool | None = None
    battery_percent: float | None = None

    @property
    def has_battery(self) -> bool:
        return self.on_ac is not None or self.battery_percent is not None

    @property
    def on_battery(self) -> bool:
        return self.has_battery and self.on_ac is not True


MAINS = Power()


@dataclass(frozen=True, slots=True)
class Readings:
    power: Power = MAINS
    idle_s: float | None = None  # seconds since the user's last input; None: unknown


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy says now: ``paused`` (battery | user-active) with ``detail`` (for
    ``explain`` and ``peers``), and whether running work should be reniced."""

    paused: PausedReason | None = None
    detail: str | None = None
    nice: bool = False


# ---------------------------------------------------------------- config values


_BELOW = re.compile(r"below:\s*([0-9]+(?:\.[0-9]+)?)\s*%?")


def parse_on_battery(value: object) -> BatteryRule:
    """``"run"``, ``"pause"`` or ``"below:N"`` (0 <= N <= 100); ValueError otherwise."""
    expected = 'expected "pause", "run" or "below:N" with N a percentage 0-100 (e.g. "below:30")'
    if not isinstance(value, str):
        raise ValueError(f"{value!r}: {expected}")
    text = value.strip().lower()
    if text in ("run", "pause"):
        return BatteryRule("run" if text == "run" else "pause")
    m = _BELOW.fullmatch(text)
    if m is None:
        raise ValueError(f"{value!r}: {expected}")
    threshold = float(m.group(1))
    if not 0.0 <= threshold <= 100.0:
        raise ValueError(f"{value!r}: {threshold:g} is not a percentage 0-100 (below:N)")
    return BatteryRule("below", threshold)


def parse_when_user_active(value: object) -> UserActive:
    if value == "run" or value == "nice" or value == "pause":
        return value
    raise ValueError(f'{value!r}: expected "run", "nice" or "pause"')


def parse_battery_override(value: object) -> Power:
    """The ``[node] battery_override`` test hook: ``"none"`` (no battery), ``"ac"`` or
    ``"ac:N"`` (on AC, at N %), ``"N"`` or ``"battery:N"`` (on battery at N %)."""
    expected = 'expected "none", "ac", "ac:N", "N" or "battery:N" with N a percentage 0-100'
    text = value.strip().lower() if isinstance(value, str) else ""
    if text == "none":
        return MAINS
    if text == "ac":
        return Power(on_ac=True)
    on_ac, _, number = text.rpartition(":")
    if on_ac not in ("", "ac", "battery"):
        raise ValueError(f"{value!r}: {expected}")
    try:
        percent = float(number.rstrip("%"))
    except ValueError:
        raise ValueError(f"{value!r}: {expected}") from None
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"{value!r}: {expected}")
    return Power(on_ac=on_ac == "ac", battery_percent=percent)


# ---------------------------------------------------------------- the decision


def _percent(p: float) -> str:
    """A level as said: whole points, rounded down (29.6 % is under 30 %)."""
    return f"{math.floor(p)} %"


def battery_pause(power: Power, rule: BatteryRule) -> str | None:
    """Why the battery rule pauses new work (the detail), or None."""
    if not power.on_battery or rule.mode == "run":
        return None
    if rule.mode == "pause":
        level = "" if power.battery_percent is None else f" {_percent(power.battery_percent)}"
        return f"battery{level} (on_battery = pause)"
    if power.battery_percent is None:
        return None  # below:N with no level known: nothing to compare
    if power.battery_percent < rule.threshold:
        return f"battery {_percent(power.battery_percent)} < {rule.threshold:g} %"
    return None


def user_active(idle_s: float | None, policy: PresencePolicy) -> bool:
    return idle_s is not None and math.isfinite(idle_s) and idle_s < policy.user_idle_s


def decide(readings: Readings, policy: PresencePolicy) -> Decision:
    """The policy's answer for these readings (draining and a full disk aside: see
    :func:`paused_reason`). Battery comes before user activity."""
    battery = battery_pause(readings.power, policy.on_battery)
    active = user_active(readings.idle_s, policy)
    nice = active and policy.when_user_active == "nice"
    if battery is not None:
        return Decision("battery", battery, nice)
    if active and policy.when_user_active == "pause":
        assert readings.idle_s is not None
        idle, limit = readings.idle_s, policy.user_idle_s
        return Decision("user-active", f"user active (input {idle:.0f} s ago < {limit:g} s)")
    return Decision(nice=nice)


def paused_reason(
    draining: bool, refusing: str | None, decision: Decision
) -> tuple[PausedReason | None, str | None]:
    """The node's ``paused`` reason and its detail, all causes together, first of
    :data:`PAUSE_REASONS`."""
    if draining:
        return "draining", "draining"
    if refusing is not None:
        return "disk-full", refusing
    return decision.paused, decision.detail


def power_moved(before: Power | None, now: Power) -> bool:
    """Whether ``now`` is worth gossiping after ``before``: the charger or the presence
    of a battery changed, or the level moved by 1 point or more."""
    if before is None or before.on_ac != now.on_ac:
        return True
    if (before.battery_percent is None) != (now.battery_percent is None):
        return True
    if before.battery_percent is None or now.battery_percent is None:
        return False
    return abs(before.battery_percent - now.battery_percent) >= 1.0
