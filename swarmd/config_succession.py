"""``[node] adopt_after_s``: how long a coordinator must stay down before its successor
adopts its unfinished tasks (swarmd/core/succession.py). 5 s by default: past failure
detection (0.1 s for a crash, ~1.7 s for silence) and a short network hiccup, well
before a user gives up on a task."""

from __future__ import annotations

import math
from typing import Any

from .config_table import ConfigError
from .config_table import Table as _Table

DEFAULT_ADOPT_AFTER_S = 5.0
MAX_ADOPT_AFTER_S = 86400.0


def adopt_after(node: _Table, values: dict[str, Any]) -> None:
    """Read ``adopt_after_s`` (seconds, > 0, at most a day) into ``values``."""
    value = node.get("adopt_after_s", (int, float))
    if value is None:
        return
    if isinstance(value, bool) or not math.isfinite(value) or not 0 < value <= MAX_ADOPT_AFTER_S:
        raise ConfigError(
            f"{node.where} adopt_after_s: expected seconds above 0 and at most "
            f"{MAX_ADOPT_AFTER_S:.0f}, not {value!r}"
        )
    values["adopt_after_s"] = float(value)
