"""How values appear in error messages: type names, quoted text, short listings,
sizes in binary units, "did you mean" suggestions and cycles as ``a -> b -> a``."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence

from .spec import PRIORITY_RANK


def type_name(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def quote(text: str) -> str:
    """A value in a message: double-quoted, with control characters escaped."""
    return json.dumps(text, ensure_ascii=False)


def listing(names: Iterable[str], limit: int = 20) -> str:
    items = sorted(set(names))
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, … ({len(items) - limit} more)"


def format_size(n: int) -> str:
    for unit, mult in (("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= mult:
            whole, rest = divmod(n, mult)
            if rest == 0:
                return f"{whole} {unit}"
            return f"{n / mult:.2f}".rstrip("0").rstrip(".") + f" {unit}"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"


def suggest(word: str, choices: Iterable[str]) -> str:
    """A "did you mean" for a misspelt name (skipped among very many choices: slow)."""
    options = list(choices)
    if len(options) > 500:
        return ""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.7)
    return f'; did you mean "{close[0]}"?' if close else ""


def cycle_text(cycle: Sequence[str], limit: int = 12) -> str:
    """``a -> b -> a``; a long cycle is shortened in the middle."""
    if len(cycle) <= limit:
        return " -> ".join(cycle)
    head = " -> ".join(cycle[: limit - 2])
    return f"{head} -> … ({len(cycle) - limit} more) … -> {cycle[-2]} -> {cycle[-1]}"


def bad_priority(value: object) -> str:
    shown = quote(value) if isinstance(value, str) else repr(value)
    return f"bad priority {shown} (expected one of {', '.join(PRIORITY_RANK)})"
