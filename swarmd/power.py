"""What this machine runs on, read from psutil: mains, or a battery at some level and
whether its charger is plugged in. Cheap (a few sysfs reads); called every few seconds.
"""

from __future__ import annotations

import math

import psutil

from .core.presence import MAINS, Power


def read_power() -> Power:
    """The battery as psutil sees it. No battery (``sensors_battery()`` is None, or
    psutil cannot tell on this platform): mains, ``Power(None, None)``. A charger state
    psutil does not know is taken from the time left: unlimited means on AC, an
    estimate means discharging, unknown stays None (the policy counts it as battery)."""
    try:
        info = psutil.sensors_battery()  # AttributeError on platforms without it
    except Exception:
        return MAINS
    if info is None:
        return MAINS
    try:
        percent: float | None = float(info.percent)
    except (TypeError, ValueError):
        percent = None
    if percent is not None:
        percent = round(max(0.0, min(100.0, percent)), 1) if math.isfinite(percent) else None
    plugged = info.power_plugged
    if plugged is None:
        if info.secsleft == psutil.POWER_TIME_UNLIMITED:
            plugged = True
        elif isinstance(info.secsleft, int | float) and info.secsleft >= 0:
            plugged = False
    return Power(on_ac=None if plugged is None else bool(plugged), battery_percent=percent)
