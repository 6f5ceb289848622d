"""Typed access to one table of swarmd.toml, with errors that name the file, the table
and the key (:class:`ConfigError`; the CLI exits 2 on them)."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    pass


class Table:
    """Typed access to one TOML table with errors that say where."""

    def __init__(self, where: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a table")
        self.where, self.data, self.used = where, data, set[str]()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        is_bool = isinstance(value, bool)  # bool is an int subclass: only if asked for
        if (is_bool and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(f"{self.where} {key}: expected {names}, got {value!r}")
        return value

    def convert(self, key: str, fn: Any, default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        try:
            return fn(self.data[key])
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{self.where} {key}: {exc}") from None

    def check_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.where}: unknown key(s) {', '.join(unknown)}")
