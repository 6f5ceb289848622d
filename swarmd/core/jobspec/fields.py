"""Typed readers of the values in one subtask table: each returns the value converted
(a string, a duration in seconds, a size in bytes, a bounded integer, relative paths,
an environment …) or None after reporting why the value is unusable."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Final

from swarmd.core.units import parse_duration, parse_size

from .errors import Problems
from .spec import PRIORITY_RANK
from .wording import bad_priority, quote, type_name

_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def path_problem(path: str) -> str | None:
    """Why a relative path from the job is not acceptable, or None."""
    if not path:
        return "empty path"
    if "\0" in path:
        return "path contains a NUL character"
    if path.startswith(("/", "\\")) or PureWindowsPath(path).drive:
        return "absolute paths are not allowed; give a path relative to the submit directory"
    if ".." in PurePosixPath(path.replace("\\", "/")).parts:
        return 'paths must stay inside the submit directory (no ".." parts)'
    return None


class FieldReader:
    """The values of one subtask table (at ``pos`` in the file), read one key at a time.

    Problems go to ``problems`` under ``label``: ``"#N"`` until the id is known."""

    def __init__(self, pos: int, raw: Mapping[str, Any], problems: Problems) -> None:
        self.pos = pos
        self.raw = raw
        self.problems = problems
        self.label = f"#{pos + 1}"

    def error(self, key: str | None, message: str) -> None:
        self.problems.add(message, self.label, key, self.pos)

    # -- typed getters: return None (and report) when the value is unusable

    def string(self, key: str, *, allow_empty: bool = False) -> str | None:
        value = self.raw[key]
        if not isinstance(value, str):
            self.error(key, f"expected a string, got {type_name(value)}")
            return None
        if not allow_empty and not value.strip():
            self.error(key, "must not be empty")
            return None
        return value

    def string_list(self, key: str, what: str) -> list[str] | None:
        value = self.raw[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, f"expected a list of {what}, got {type_name(value)}")
            return None
        return list(value)

    def duration(self, key: str) -> float | None:
        value = self.raw[key]
        try:
            seconds = parse_duration(value)
        except (ValueError, TypeError) as exc:
            self.error(key, str(exc))
            return None
        if seconds <= 0:
            self.error(key, "must be longer than zero")
            return None
        return seconds

    def size(self, key: str) -> int | None:
        try:
            return parse_size(self.raw[key])
        except (ValueError, TypeError) as exc:
            self.error(key, str(exc))
            return None

    def integer(self, key: str, low: int, high: int) -> int | None:
        value = self.raw[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"expected a whole number, got {type_name(value)}")
            return None
        if not low <= value <= high:
            self.error(key, f"{value} is out of range (expected {low} to {high})")
            return None
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.raw[key]
        if isinstance(value, bool):
            return value
        self.error(key, f"expected true or false, got {type_name(value)}")
        return None

    def priority(self, key: str) -> str | None:
        value = self.raw[key]
        if isinstance(value, str) and value in PRIORITY_RANK:
            return value
        self.error(key, bad_priority(value))
        return None

    def paths(self, key: str) -> tuple[str, ...] | None:
        items = self.string_list(key, "relative paths")
        if items is None:
            return None
        ok = True
        for item in items:
            why = path_problem(item)
            if why is not None:
                self.error(key, f"{quote(item)}: {why}")
                ok = False
        return tuple(items) if ok else None

    def env(self, key: str) -> dict[str, str]:
        """The valid ``NAME = "value"`` entries (each bad one reported)."""
        value = self.raw[key]
        if not isinstance(value, Mapping):
            self.error(key, f'expected a table of NAME = "value", got {type_name(value)}')
            return {}
        env: dict[str, str] = {}
        for name, text in value.items():
            if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
                self.error(key, f"{quote(str(name))} is not a valid variable name")
            elif not isinstance(text, str):
                self.error(key, f"{name}: expected a string, got {type_name(text)}")
            elif "\0" in text:
                self.error(key, f"{name}: value contains a NUL character")
            else:
                env[name] = text
        return env
