"""The reader of one subtask table: its id and kind, the keys allowed for that kind,
and each value checked and converted into :class:`SubtaskSpec` keyword arguments."""

from __future__ import annotations

import keyword
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Final, cast

from swarmd.core import template
from swarmd.core.units import parse_duration, parse_size

from .errors import Problems
from .spec import (
    DEFAULT_MAX_TOKENS,
    KINDS,
    MAX_ID_LENGTH,
    MAX_RETRIES,
    PRIORITY_RANK,
    Kind,
    Priority,
    SubtaskSpec,
)
from .wording import bad_priority, quote, suggest, type_name

_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Keys of a subtask table, by kind. Order is the order of the "allowed" lists in messages.
_COMMON_KEYS: Final = (
    "id",
    "kind",
    "after",
    "priority",
    "timeout",
    "retries",
    "retry_on_error",
    "min_vram",
    "min_ram",
    "capability",
    "node",
    "env",
)
_KIND_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "shell": ("run", "inputs", "outputs", "estimate"),
    "llm": ("prompt", "model", "max_tokens", "system"),
    "python": ("call", "args", "kwargs", "inputs", "outputs", "estimate"),
}
_ALL_KEYS: Final = frozenset(_COMMON_KEYS).union(*_KIND_KEYS.values())


def is_jsonable(value: object, depth: int = 0) -> bool:
    if depth > 64:
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, list | tuple):
        return all(is_jsonable(v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and is_jsonable(v, depth + 1) for k, v in value.items())
    return False


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


def valid_call(call: str) -> bool:
    module, sep, attr = call.partition(":")
    if not sep or not module or not attr:
        return False
    return all(
        part.isidentifier() and not keyword.iskeyword(part)
        for part in (*module.split("."), *attr.split("."))
    )


@dataclass
class Draft:
    """One subtask table as far as it could be read."""

    pos: int  # 0-based position in the file
    label: str  # id, or "#N" when the id is unusable
    id: str | None
    kind: Kind | None
    after: list[str]
    values: dict[str, Any]  # SubtaskSpec keyword arguments that were valid

    def spec(self) -> SubtaskSpec:
        assert self.id is not None and self.kind is not None
        return SubtaskSpec(id=self.id, kind=self.kind, after=tuple(self.after), **self.values)


class SubtaskReader:
    def __init__(
        self, pos: int, raw: Mapping[str, Any], job_priority: Priority, problems: Problems
    ) -> None:
        self.pos = pos
        self.raw = raw
        self.problems = problems
        self.job_priority = job_priority
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

    # -- the subtask

    def read(self) -> Draft:
        raw = self.raw
        values: dict[str, Any] = {}

        subtask_id: str | None = None
        if "id" not in raw:
            self.error("id", "missing (every subtask needs an id)")
        elif not isinstance(raw["id"], str):
            self.error("id", f"expected a string, got {type_name(raw['id'])}")
        elif not _ID_RE.fullmatch(raw["id"]):
            self.error(
                "id",
                f"{quote(raw['id'])} is not a valid id (letters, digits, _ and -, "
                f"at most {MAX_ID_LENGTH} characters)",
            )
        else:
            subtask_id = raw["id"]
            self.label = subtask_id

        kind: Kind | None = None
        if "kind" not in raw:
            self.error("kind", f"missing (one of {', '.join(KINDS)})")
        elif raw["kind"] not in KINDS:
            shown = quote(raw["kind"]) if isinstance(raw["kind"], str) else repr(raw["kind"])
            self.error("kind", f"unknown kind {shown} (expected one of {', '.join(KINDS)})")
        else:
            kind = cast(Kind, raw["kind"])

        allowed = (*_COMMON_KEYS, *_KIND_KEYS[kind]) if kind is not None else tuple(_ALL_KEYS)
        for key in raw:
            if key in allowed:
                continue
            if kind is not None and key in _ALL_KEYS:
                owners = [k for k, keys in _KIND_KEYS.items() if key in keys]
                self.error(
                    None,
                    f'key "{key}" is for {" and ".join(owners)} subtasks, not {kind} '
                    f"(allowed for {kind}: {', '.join(sorted(allowed))})",
                )
            else:
                self.error(
                    None,
                    f"unknown key {quote(str(key))}{suggest(str(key), allowed)} "
                    f"(allowed{f' for {kind}' if kind else ''}: {', '.join(sorted(allowed))})",
                )

        after: list[str] = []
        if "after" in raw:
            deps = self.string_list("after", "subtask ids")
            if deps is not None:
                after = list(dict.fromkeys(deps))

        values["priority"] = self.job_priority
        if "priority" in raw:
            value = raw["priority"]
            if isinstance(value, str) and value in PRIORITY_RANK:
                values["priority"] = value
            else:
                self.error("priority", bad_priority(value))
        if "timeout" in raw and (seconds := self.duration("timeout")) is not None:
            values["timeout_s"] = seconds
        estimated = "estimate" in raw and "estimate" in allowed
        if estimated and (seconds := self.duration("estimate")) is not None:
            values["estimate_s"] = seconds
        if "retries" in raw and (retries := self.integer("retries", 0, MAX_RETRIES)) is not None:
            values["retries"] = retries
        if "retry_on_error" in raw:
            if isinstance(raw["retry_on_error"], bool):
                values["retry_on_error"] = raw["retry_on_error"]
            else:
                self.error(
                    "retry_on_error",
                    f"expected true or false, got {type_name(raw['retry_on_error'])}",
                )
        for key in ("min_vram", "min_ram"):
            if key in raw and (size := self.size(key)) is not None:
                values[key] = size
        for key in ("capability", "node"):
            if key in raw and (text := self.string(key)) is not None:
                values[key] = text
        if "env" in raw:
            values["env"] = self.env()

        if kind == "shell":
            self.shell(values)
        elif kind == "llm":
            self.llm(values)
        elif kind == "python":
            self.python(values)
        for key in ("inputs", "outputs"):
            if key in raw and key in allowed and (paths := self.paths(key)) is not None:
                values[key] = paths

        return Draft(self.pos, self.label, subtask_id, kind, after, values)

    def env(self) -> dict[str, str]:
        value = self.raw["env"]
        if not isinstance(value, Mapping):
            self.error("env", f'expected a table of NAME = "value", got {type_name(value)}')
            return {}
        env: dict[str, str] = {}
        for name, text in value.items():
            if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
                self.error("env", f"{quote(str(name))} is not a valid variable name")
            elif not isinstance(text, str):
                self.error("env", f"{name}: expected a string, got {type_name(text)}")
            elif "\0" in text:
                self.error("env", f"{name}: value contains a NUL character")
            else:
                env[name] = text
        return env

    def shell(self, values: dict[str, Any]) -> None:
        if "run" not in self.raw:
            self.error("run", 'missing (the command, e.g. run = ["make", "test"])')
            return
        value = self.raw["run"]
        argv: list[str]
        if isinstance(value, str):
            try:
                argv = shlex.split(template.compact(value))
            except ValueError as exc:
                self.error("run", f"cannot split {quote(value)} into words: {exc}")
                return
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            argv = list(value)
        else:
            self.error(
                "run", f"expected a list of strings (or one command line), got {type_name(value)}"
            )
            return
        if not argv or not argv[0]:
            self.error("run", "the command is empty")
            return
        if any("\0" in arg for arg in argv):
            self.error("run", "an argument contains a NUL character")
            return
        values["run"] = tuple(argv)

    def llm(self, values: dict[str, Any]) -> None:
        if "prompt" not in self.raw:
            self.error("prompt", "missing (llm subtasks need a prompt)")
        elif (prompt := self.string("prompt")) is not None:
            values["prompt"] = prompt
        if "model" in self.raw and (model := self.string("model")) is not None:
            values["model"] = model
        if "capability" in self.raw and "model" in self.raw:
            self.error(None, 'give either "capability" or "model" (a profile name), not both')
        elif "capability" not in self.raw and "model" not in self.raw:
            self.error(None, 'llm subtasks need "capability" or "model" (a profile name)')
        values["max_tokens"] = DEFAULT_MAX_TOKENS
        if (
            "max_tokens" in self.raw
            and (n := self.integer("max_tokens", 1, 10_000_000)) is not None
        ):
            values["max_tokens"] = n
        if "system" in self.raw and (system := self.string("system", allow_empty=True)) is not None:
            values["system"] = system

    def python(self, values: dict[str, Any]) -> None:
        if "call" not in self.raw:
            self.error("call", 'missing (e.g. call = "mypkg.module:function")')
        elif (call := self.string("call")) is not None:
            if valid_call(call):
                values["call"] = call
            else:
                self.error("call", f'{quote(call)} is not of the form "module.path:function"')
        if "args" in self.raw:
            args = self.raw["args"]
            if not isinstance(args, list):
                self.error("args", f"expected a list, got {type_name(args)}")
            elif not is_jsonable(args):
                self.error(
                    "args",
                    "must hold only JSON values (strings, finite numbers, booleans, lists, tables)",
                )
            else:
                values["args"] = tuple(args)
        if "kwargs" in self.raw:
            kwargs = self.raw["kwargs"]
            if not isinstance(kwargs, Mapping):
                self.error("kwargs", f"expected a table, got {type_name(kwargs)}")
            elif not is_jsonable(kwargs):
                self.error(
                    "kwargs",
                    "must hold only JSON values (strings, finite numbers, booleans, lists, tables)",
                )
            elif bad := [k for k in kwargs if not k.isidentifier()]:
                self.error("kwargs", f"{quote(bad[0])} is not a valid keyword argument name")
            else:
                values["kwargs"] = dict(kwargs)
