"""``[tasks] shares`` and ``[tasks] starved_after``: the ready queue's guaranteed share of
the starts per priority class, and how long a class's oldest ready subtask waits before
the class is starved and draws on it (swarmd/core/queue.py). ``critical`` has no share:
nothing ever passes it.

    [tasks]
    shares = { high = 0.10, normal = 0.05, low = 0.05 }   # the defaults; 0: strict
    starved_after = "30s"
"""

from __future__ import annotations

import math
from typing import Any

from .config_table import ConfigError
from .config_table import Table as _Table
from .core.jobspec import PRIORITY_RANK
from .core.queue import DEFAULT_PATIENCE_S, DEFAULT_SHARES
from .core.units import parse_duration

MAX_STARVED_AFTER_S = 86400.0


def queue_config(t: _Table) -> dict[str, Any]:
    """``queue_shares`` (rank, share) pairs and ``starved_after_s`` for Config."""
    return {"queue_shares": _shares(t), "starved_after_s": _starved_after(t)}


def _shares(t: _Table) -> tuple[tuple[int, float], ...]:
    table = t.get("shares", dict)
    if table is None:
        return tuple(DEFAULT_SHARES.items())
    shares = dict(DEFAULT_SHARES)
    for name, value in table.items():
        where = f"{t.where} shares.{name}"
        if name == "critical":
            raise ConfigError(f"{where}: critical has no share (nothing passes it)")
        if name not in PRIORITY_RANK:
            raise ConfigError(f"{where}: unknown class, expected high, normal or low")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not 0.0 <= value < 1.0:
            raise ConfigError(
                f"{where}: expected a share from 0 (strict) to below 1, not {value!r}"
            )
        shares[PRIORITY_RANK[name]] = float(value)
    if sum(shares.values()) > 1.0:
        raise ConfigError(f"{t.where} shares: they add up to more than 1")
    return tuple(sorted(shares.items()))


def _starved_after(t: _Table) -> float:
    seconds = t.convert("starved_after", parse_duration, DEFAULT_PATIENCE_S)
    if not 0.0 <= seconds <= MAX_STARVED_AFTER_S:
        raise ConfigError(f"{t.where} starved_after: expected 0s to 24h, not {seconds:g} s")
    return float(seconds)
