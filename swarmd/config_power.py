"""``[node]`` power and presence keys of swarmd.toml: ``on_battery``,
``when_user_active``, ``user_idle`` and the ``battery_override`` test hook (see
:mod:`swarmd.core.presence` for what they mean)."""

from __future__ import annotations

import math
from typing import Any

from .config_table import ConfigError
from .config_table import Table as _Table
from .core.presence import (
    PresencePolicy,
    parse_battery_override,
    parse_on_battery,
    parse_when_user_active,
)
from .core.units import parse_duration

MAX_USER_IDLE_S = 86400.0


def presence_values(node: _Table) -> dict[str, Any]:
    """Config keyword arguments: ``presence`` (a :class:`PresencePolicy`) and
    ``battery_override`` (a :class:`Power`, or absent)."""
    base = PresencePolicy()
    on_battery = node.convert("on_battery", parse_on_battery, base.on_battery)
    active = node.convert("when_user_active", parse_when_user_active, base.when_user_active)
    idle_s = node.convert("user_idle", parse_duration, base.user_idle_s)
    if not math.isfinite(idle_s) or not 0.0 < idle_s <= MAX_USER_IDLE_S:
        raise ConfigError(f"{node.where} user_idle: expected a duration > 0 and <= 1d")
    values: dict[str, Any] = {"presence": PresencePolicy(on_battery, active, idle_s)}
    if (override := node.convert("battery_override", parse_battery_override)) is not None:
        values["battery_override"] = override
    return values
