"""``[node] adopt_after_s``: how long a coordinator must stay down before its successor
adopts its unfinished tasks (swarmd/core/succession.py).

Off unless set: the chaos suite still finds, under compound faults, a successor that
adopts from a stale replica a task its coordinator had finished (so a subtask runs
twice). Replicas are kept either way (a successor answers ``status`` for the task of
an absent coordinator). Set it (5 s is a good value) to have tasks adopted."""

from __future__ import annotations

import math
from typing import Any

from .config_table import ConfigError
from .config_table import Table as _Table

DEFAULT_ADOPT_AFTER_S = math.inf  # off: see above
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
