"""Daily budgets per API key: ``[gateway] budget = { "sk-…" = "2000000 tokens/day" }``.

A budget is either tokens (prompt + completion) or cost (``"$5/day"``, in the unit of
the profiles' ``cost_per_mtok``) per UTC day; it resets at 00:00 UTC. The config names
raw keys; everything else knows a key only by its :func:`key_id` (the first 12 hex
digits of its SHA-256), so no raw key is kept past parsing or ever shown.

:meth:`Budgets.refusal` answers the gateway's question "may this key spend more
today?" from what was spent: None, or the message a 429 carries.

Sans-I/O: plain values in, plain values out.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from swarmd.core.usage import DAY_S

KEY_ID_HEX: Final = 12
_TOKENS_RE = re.compile(r"^\s*([0-9][0-9_,]*)\s*tokens?\s*/\s*day\s*$", re.IGNORECASE)
_COST_RE = re.compile(r"^\s*\$\s*([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*/\s*day\s*$", re.IGNORECASE)

Unit = Literal["tokens", "cost"]


def key_id(api_key: str) -> str:
    """How usage, budgets and metrics name an API key: sha256(key) hex, first 12."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:KEY_ID_HEX]


@dataclass(frozen=True, slots=True)
class Budget:
    limit: float  # tokens or cost per UTC day
    unit: Unit

    def describe(self) -> str:
        if self.unit == "tokens":
            return f"{int(self.limit):,} tokens/day"
        return f"${self.limit:g}/day"


def parse_budget(text: Any) -> Budget:
    """``"2000000 tokens/day"`` (``_`` or ``,`` may group digits) or ``"$5/day"``
    (``"$2.50/day"``). ValueError, naming the value, on anything else."""
    if not isinstance(text, str):
        raise ValueError(f'bad budget {text!r}: expected a string like "2000000 tokens/day"')
    if m := _TOKENS_RE.match(text):
        return Budget(float(int(m.group(1).replace("_", "").replace(",", ""))), "tokens")
    if m := _COST_RE.match(text):
        cost = float(m.group(1))
        if math.isfinite(cost):
            return Budget(cost, "cost")
    raise ValueError(f'bad budget {text!r}: expected "N tokens/day" or "$N/day"')


def parse_budgets(raw: Any) -> dict[str, Budget]:
    """The ``budget`` table, raw API key -> budget text, as key id -> :class:`Budget`.
    ValueError naming the entry (by key id, never the key) on a bad one."""
    if not isinstance(raw, Mapping):
        raise ValueError('expected a table of "API key" = "N tokens/day" or "$N/day"')
    budgets: dict[str, Budget] = {}
    for api_key, text in raw.items():
        if not isinstance(api_key, str) or not api_key:
            raise ValueError("an API key must be a non-empty string")
        kid = key_id(api_key)
        try:
            budgets[kid] = parse_budget(text)
        except ValueError as exc:
            raise ValueError(f"the key with id {kid}: {exc}") from None
    return budgets


def _until_midnight(now: float) -> str:
    left = int(DAY_S - now % DAY_S)
    return f"{left // 3600}h{left % 3600 // 60:02d}m"


class Budgets:
    """The configured budgets, by key id."""

    def __init__(self, by_key_id: Mapping[str, Budget] | None = None) -> None:
        self.by_key_id = dict(by_key_id or {})

    def __bool__(self) -> bool:
        return bool(self.by_key_id)

    def refusal(self, key: str, tokens: int, cost: float, now: float) -> str | None:
        """Why ``key`` may not spend more today (its budget is used up), else None.
        ``tokens`` and ``cost`` are what it spent today (UTC)."""
        budget = self.by_key_id.get(key)
        if budget is None:
            return None
        spent = float(tokens) if budget.unit == "tokens" else cost
        if spent < budget.limit:
            return None
        used = f"{tokens:,} tokens" if budget.unit == "tokens" else f"${cost:.4f}"
        return (
            f"daily budget spent for API key {key} (key id): used {used} of "
            f"{budget.describe()} today (UTC); it resets at 00:00 UTC, in {_until_midnight(now)}"
        )
