"""Job specs: parse and validate a job (TOML or JSON), order its subtasks, and check it
against the cluster before it is accepted.

A job is a DAG of subtasks (``after`` edges). :func:`parse_job` validates the whole
structure and reports *every* problem it finds in one :class:`JobError`, one line per
problem, each naming the subtask and the key, so a user fixes everything in one go.
:func:`check_feasible` refuses subtasks that no live peer could ever run, and
:func:`check_input_sizes` refuses missing or oversized input files (the caller stats
the files; this module does no I/O).

Sizes are ints in bytes, durations float seconds. No I/O, no clock.
"""

from __future__ import annotations

import difflib
import heapq
import json
import keyword
import math
import re
import shlex
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Final, Literal, cast

from swarmd.core import template
from swarmd.core.units import parse_duration, parse_size

Kind = Literal["shell", "llm", "python"]
Priority = Literal["critical", "high", "normal", "low"]

KINDS: Final[tuple[Kind, ...]] = ("shell", "llm", "python")
PRIORITY_RANK: Final[Mapping[str, int]] = {"critical": 0, "high": 1, "normal": 2, "low": 3}

MAX_ID_LENGTH: Final = 64
MAX_NAME_LENGTH: Final = 200
MAX_SUBTASKS: Final = 10_000
MAX_RETRIES: Final = 100
MAX_REPORTED: Final = 100  # problems spelt out in a JobError's message (all are in .errors)
DEFAULT_RETRIES: Final = 2
DEFAULT_MAX_TOKENS: Final = 256
SINGLE_SUBTASK_ID: Final = "main"

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
_JOB_KEYS: Final = ("name", "priority", "deadline", "subtask", "subtasks")


# ---------------------------------------------------------------------------- types


@dataclass(frozen=True)
class SubtaskSpec:
    id: str
    kind: Kind
    run: tuple[str, ...] = ()  # shell argv
    prompt: str | None = None  # llm; may contain {{ ID.stdout }} / {{ ID.output }}
    call: str | None = None  # python "module:function"
    args: tuple[Any, ...] = field(default=(), hash=False)  # python, JSON-able
    kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)  # python, JSON-able
    capability: str | None = None
    model: str | None = None  # a model profile name ([models.NAME])
    after: tuple[str, ...] = ()
    priority: Priority = "normal"  # the job's priority unless the subtask sets one
    timeout_s: float | None = None
    # shell/python: about how long it runs on a speed-1 node (a pricing hint); None:
    # unknown (pricing then takes 1 s). An llm subtask is estimated from its tokens.
    estimate_s: float | None = None
    retries: int = DEFAULT_RETRIES  # re-dispatches after node failures (not app errors)
    retry_on_error: bool = False
    min_vram: int = 0  # bytes
    min_ram: int = 0  # bytes
    node: str | None = None  # pin to a node name or id (prefix)
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    inputs: tuple[str, ...] = ()  # relative paths (files or dirs) from the submitter's cwd
    outputs: tuple[str, ...] = ()  # relative paths collected back as artifacts
    max_tokens: int | None = None  # llm (DEFAULT_MAX_TOKENS when kind == "llm")
    system: str | None = None  # llm system prompt (optional)

    def templated_texts(self) -> list[tuple[str, str]]:
        """``(key, text)`` of every text rendered with upstream results before running:
        the prompt, the system prompt and each argv element (input file contents are
        rendered too, but they are not part of the spec)."""
        texts = [("run", arg) for arg in self.run]
        if self.prompt is not None:
            texts.append(("prompt", self.prompt))
        if self.system is not None:
            texts.append(("system", self.system))
        return texts


@dataclass(frozen=True)
class JobSpec:
    name: str
    priority: Priority = "normal"
    deadline_s: float | None = None  # relative to submit time
    subtasks: tuple[SubtaskSpec, ...] = ()

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.subtasks)

    def subtask(self, subtask_id: str) -> SubtaskSpec:
        """The subtask with that id; KeyError if there is none."""
        for s in self.subtasks:
            if s.id == subtask_id:
                return s
        raise KeyError(subtask_id)


class JobError(ValueError):
    """A bad job. ``str(err)`` reads ``subtask "plan": after: unknown subtask "lnt" ...``.

    A JobError raised by this module for several problems has one line per problem in
    its message and the single problems in ``errors``; for one problem ``errors`` is
    ``[err]`` itself. ``subtask`` is the id, or ``"#N"`` (1-based position in the file)
    for a subtask whose id is missing or invalid.
    """

    def __init__(
        self,
        message: str,
        subtask: str | None = None,
        key: str | None = None,
        *,
        source: str | None = None,
    ) -> None:
        self.message = message
        self.subtask = subtask
        self.key = key
        self.source = source
        self.errors: list[JobError] = [self]
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.source:
            parts.append(self.source)
        if self.subtask is not None:
            label = self.subtask
            parts.append(f"subtask {label}" if label.startswith("#") else f'subtask "{label}"')
        if self.key:
            parts.append(self.key)
        parts.append(self.message)
        return ": ".join(parts)

    @classmethod
    def combine(cls, errors: Sequence[JobError]) -> JobError:
        """One error for all of ``errors`` (itself when there is just one)."""
        if not errors:
            raise ValueError("no errors to combine")
        if len(errors) == 1:
            return errors[0]
        lines = [str(e) for e in errors[:MAX_REPORTED]]
        if len(errors) > MAX_REPORTED:
            lines.append(f"… and {len(errors) - MAX_REPORTED} more problems")
        combined = cls("\n".join(lines))
        combined.errors = list(errors)
        return combined


@dataclass(frozen=True)
class PeerFacts:
    """What submit-time validation needs to know about one live peer."""

    name: str
    node_id: str
    capabilities: frozenset[str]  # union of its model profiles' capabilities
    models: frozenset[str]  # its model profile names
    max_vram_total: int  # bytes, its largest GPU's total VRAM (0 without a GPU)
    ram_total: int  # bytes
    allow_shell: bool


# ---------------------------------------------------------------------------- helpers


class _Problems:
    """Problems found so far, each tagged with the position of its subtask for sorting."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        self._items: list[tuple[int, int, JobError]] = []

    def add(
        self, message: str, subtask: str | None = None, key: str | None = None, pos: int = -1
    ) -> None:
        err = JobError(message, subtask, key, source=self.source)
        self._items.append((pos, len(self._items), err))

    def __bool__(self) -> bool:
        return bool(self._items)

    def raise_if_any(self) -> None:
        if self._items:
            raise JobError.combine([e for _, _, e in sorted(self._items, key=lambda t: t[:2])])


def _type_name(value: object) -> str:
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


def _quote(text: str) -> str:
    """A value in a message: double-quoted, with control characters escaped."""
    return json.dumps(text, ensure_ascii=False)


def _listing(names: Iterable[str], limit: int = 20) -> str:
    items = sorted(set(names))
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, … ({len(items) - limit} more)"


def _format_size(n: int) -> str:
    for unit, mult in (("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= mult:
            whole, rest = divmod(n, mult)
            if rest == 0:
                return f"{whole} {unit}"
            return f"{n / mult:.2f}".rstrip("0").rstrip(".") + f" {unit}"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"


def _suggest(word: str, choices: Iterable[str]) -> str:
    """A "did you mean" for a misspelt name (skipped among very many choices: slow)."""
    options = list(choices)
    if len(options) > 500:
        return ""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.7)
    return f'; did you mean "{close[0]}"?' if close else ""


def _cycle_text(cycle: Sequence[str], limit: int = 12) -> str:
    """``a -> b -> a``; a long cycle is shortened in the middle."""
    if len(cycle) <= limit:
        return " -> ".join(cycle)
    head = " -> ".join(cycle[: limit - 2])
    return f"{head} -> … ({len(cycle) - limit} more) … -> {cycle[-2]} -> {cycle[-1]}"


def _is_jsonable(value: object, depth: int = 0) -> bool:
    if depth > 64:
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, list | tuple):
        return all(_is_jsonable(v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_jsonable(v, depth + 1) for k, v in value.items())
    return False


def _path_problem(path: str) -> str | None:
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


def _valid_call(call: str) -> bool:
    module, sep, attr = call.partition(":")
    if not sep or not module or not attr:
        return False
    return all(
        part.isidentifier() and not keyword.iskeyword(part)
        for part in (*module.split("."), *attr.split("."))
    )


# ---------------------------------------------------------------------------- parsing


@dataclass
class _Draft:
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


class _SubtaskReader:
    def __init__(
        self, pos: int, raw: Mapping[str, Any], job_priority: Priority, problems: _Problems
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
            self.error(key, f"expected a string, got {_type_name(value)}")
            return None
        if not allow_empty and not value.strip():
            self.error(key, "must not be empty")
            return None
        return value

    def string_list(self, key: str, what: str) -> list[str] | None:
        value = self.raw[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, f"expected a list of {what}, got {_type_name(value)}")
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
            self.error(key, f"expected a whole number, got {_type_name(value)}")
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
            why = _path_problem(item)
            if why is not None:
                self.error(key, f"{_quote(item)}: {why}")
                ok = False
        return tuple(items) if ok else None

    # -- the subtask

    def read(self) -> _Draft:
        raw = self.raw
        values: dict[str, Any] = {}

        subtask_id: str | None = None
        if "id" not in raw:
            self.error("id", "missing (every subtask needs an id)")
        elif not isinstance(raw["id"], str):
            self.error("id", f"expected a string, got {_type_name(raw['id'])}")
        elif not _ID_RE.fullmatch(raw["id"]):
            self.error(
                "id",
                f"{_quote(raw['id'])} is not a valid id (letters, digits, _ and -, "
                f"at most {MAX_ID_LENGTH} characters)",
            )
        else:
            subtask_id = raw["id"]
            self.label = subtask_id

        kind: Kind | None = None
        if "kind" not in raw:
            self.error("kind", f"missing (one of {', '.join(KINDS)})")
        elif raw["kind"] not in KINDS:
            shown = _quote(raw["kind"]) if isinstance(raw["kind"], str) else repr(raw["kind"])
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
                    f"unknown key {_quote(str(key))}{_suggest(str(key), allowed)} "
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
                self.error("priority", _bad_priority(value))
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
                    f"expected true or false, got {_type_name(raw['retry_on_error'])}",
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

        return _Draft(self.pos, self.label, subtask_id, kind, after, values)

    def env(self) -> dict[str, str]:
        value = self.raw["env"]
        if not isinstance(value, Mapping):
            self.error("env", f'expected a table of NAME = "value", got {_type_name(value)}')
            return {}
        env: dict[str, str] = {}
        for name, text in value.items():
            if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
                self.error("env", f"{_quote(str(name))} is not a valid variable name")
            elif not isinstance(text, str):
                self.error("env", f"{name}: expected a string, got {_type_name(text)}")
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
                self.error("run", f"cannot split {_quote(value)} into words: {exc}")
                return
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            argv = list(value)
        else:
            self.error(
                "run", f"expected a list of strings (or one command line), got {_type_name(value)}"
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
            if _valid_call(call):
                values["call"] = call
            else:
                self.error("call", f'{_quote(call)} is not of the form "module.path:function"')
        if "args" in self.raw:
            args = self.raw["args"]
            if not isinstance(args, list):
                self.error("args", f"expected a list, got {_type_name(args)}")
            elif not _is_jsonable(args):
                self.error(
                    "args",
                    "must hold only JSON values (strings, finite numbers, booleans, lists, tables)",
                )
            else:
                values["args"] = tuple(args)
        if "kwargs" in self.raw:
            kwargs = self.raw["kwargs"]
            if not isinstance(kwargs, Mapping):
                self.error("kwargs", f"expected a table, got {_type_name(kwargs)}")
            elif not _is_jsonable(kwargs):
                self.error(
                    "kwargs",
                    "must hold only JSON values (strings, finite numbers, booleans, lists, tables)",
                )
            elif bad := [k for k in kwargs if not k.isidentifier()]:
                self.error("kwargs", f"{_quote(bad[0])} is not a valid keyword argument name")
            else:
                values["kwargs"] = dict(kwargs)


def _bad_priority(value: object) -> str:
    shown = _quote(value) if isinstance(value, str) else repr(value)
    return f"bad priority {shown} (expected one of {', '.join(PRIORITY_RANK)})"


def _default_name(source: str) -> str:
    stem = PurePosixPath(source.replace("\\", "/")).name
    for suffix in (".toml", ".json"):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return "job"


def parse_job(data: Mapping[str, Any], *, source: str = "job") -> JobSpec:
    """Validate a job read from TOML or JSON and return its spec.

    Raises one :class:`JobError` listing every problem found (``source`` prefixes each
    line, e.g. the file name). A missing ``name`` defaults to the file name without
    ``.toml``/``.json`` (else ``"job"``).
    """
    problems = _Problems(source)
    if not isinstance(data, Mapping):
        problems.add(f"expected a table at the top level, got {_type_name(data)}")
        problems.raise_if_any()

    for key in data:
        if key not in _JOB_KEYS:
            problems.add(
                f"unknown key {_quote(str(key))} at the top level{_suggest(str(key), _JOB_KEYS)} "
                f"(allowed: name, priority, deadline, [[subtask]])"
            )

    name = _default_name(source)
    if "name" in data:
        value = data["name"]
        if not isinstance(value, str) or not value.strip():
            problems.add(f"expected a non-empty string, got {_type_name(value)}", key="name")
        elif len(value) > MAX_NAME_LENGTH or not value.isprintable():
            problems.add(f"must be printable and at most {MAX_NAME_LENGTH} characters", key="name")
        else:
            name = value

    priority: Priority = "normal"
    if "priority" in data:
        if isinstance(data["priority"], str) and data["priority"] in PRIORITY_RANK:
            priority = cast(Priority, data["priority"])
        else:
            problems.add(_bad_priority(data["priority"]), key="priority")

    deadline_s: float | None = None
    if "deadline" in data:
        try:
            deadline_s = parse_duration(data["deadline"])
        except (ValueError, TypeError) as exc:
            problems.add(str(exc), key="deadline")
        else:
            if deadline_s <= 0:
                problems.add("must be longer than zero", key="deadline")
                deadline_s = None

    present = [k for k in ("subtask", "subtasks") if k in data]
    raw_subtasks: object = []
    if len(present) == 2:
        problems.add('give the subtasks under one key, "subtask" or "subtasks", not both')
    elif not present:
        problems.add(
            'the job has no subtasks (add [[subtask]] tables, or a "subtasks" list in JSON)'
        )
    else:
        raw_subtasks = data[present[0]]
    drafts: list[_Draft] = []
    if len(present) == 1:
        key = present[0]
        if not isinstance(raw_subtasks, list):
            problems.add(
                f"expected a list of subtask tables, got {_type_name(raw_subtasks)}", key=key
            )
        elif not raw_subtasks:
            problems.add("the job has no subtasks", key=key)
        elif len(raw_subtasks) > MAX_SUBTASKS:
            problems.add(
                f"{len(raw_subtasks)} subtasks; at most {MAX_SUBTASKS} are allowed", key=key
            )
        else:
            for pos, raw in enumerate(raw_subtasks):
                if not isinstance(raw, Mapping):
                    problems.add(f"expected a table, got {_type_name(raw)}", f"#{pos + 1}", pos=pos)
                    continue
                drafts.append(_SubtaskReader(pos, raw, priority, problems).read())

    _check_graph(drafts, problems)
    problems.raise_if_any()
    return JobSpec(
        name=name,
        priority=priority,
        deadline_s=deadline_s,
        subtasks=tuple(d.spec() for d in drafts),
    )


def _check_graph(drafts: list[_Draft], problems: _Problems) -> None:
    """Ids, ``after`` edges, cycles and template references across subtasks."""
    first: dict[str, _Draft] = {}
    for d in drafts:
        if d.id is None:
            continue
        if d.id in first:
            problems.add(
                f"duplicate id {_quote(d.id)} (also used by subtask #{first[d.id].pos + 1}); "
                "ids must be unique",
                f"#{d.pos + 1}",
                "id",
                d.pos,
            )
        else:
            first[d.id] = d
    known = list(first)
    known_listing = _listing(known)

    deps: dict[str, list[str]] = {}
    for d in first.values():
        edges: list[str] = []
        for dep in d.after:
            if dep == d.id:
                problems.add("a subtask cannot wait for itself", d.label, "after", d.pos)
            elif dep not in first:
                problems.add(
                    f"unknown subtask {_quote(dep)}{_suggest(dep, known)} (known: {known_listing})",
                    d.label,
                    "after",
                    d.pos,
                )
            else:
                edges.append(dep)
        deps[d.label] = edges

    position = {i: first[i].pos for i in first}
    for cycle in _find_cycles(known, deps, position):
        problems.add(
            f"dependency cycle {_cycle_text(cycle)} (each waits for the next)",
            cycle[0],
            "after",
            position[cycle[0]],
        )

    is_upstream = _upstream_test(deps)
    for d in first.values():
        if d.kind is None:
            continue
        texts = [("run", a) for a in d.values.get("run", ())]
        texts += [(k, d.values[k]) for k in ("prompt", "system") if d.values.get(k) is not None]
        for key, text in texts:
            for ph in template.placeholders(text):
                if not ph.known:
                    if ph.subtask in first:
                        problems.add(
                            f"{ph.text}: unknown field {_quote(ph.field)}"
                            f"{_suggest(ph.field, template.FIELDS)} "
                            f"(expected one of {', '.join(template.FIELDS)})",
                            d.label,
                            key,
                            d.pos,
                        )
                    continue
                if ph.subtask == d.id:
                    problems.add(
                        f"{ph.text}: a subtask cannot use its own result", d.label, key, d.pos
                    )
                elif ph.subtask not in first:
                    problems.add(
                        f"{ph.text}: unknown subtask {_quote(ph.subtask)}"
                        f"{_suggest(ph.subtask, known)} (known: {known_listing})",
                        d.label,
                        key,
                        d.pos,
                    )
                elif not is_upstream(ph.subtask, d.label):
                    problems.add(
                        f"{ph.text}: subtask {_quote(ph.subtask)} is not upstream of "
                        f'{_quote(d.label)}; add it to "after"',
                        d.label,
                        key,
                        d.pos,
                    )


def _upstream_test(deps: Mapping[str, Sequence[str]]) -> Callable[[str, str], bool]:
    """A function telling whether ``a`` is upstream of ``b`` (``b`` waits for it, directly
    or transitively; ``a != b``). Built on first use: strongly connected components
    (so cycles cost nothing extra), then each component's upstreams as a bitset."""
    comp: dict[str, int] = {}
    upstream_bits: list[int] = []

    def build() -> None:
        comp.update(_components(deps))
        members: list[list[str]] = [[] for _ in range(max(comp.values(), default=-1) + 1)]
        for node, c in comp.items():
            members[c].append(node)
        # Components come out dependencies first, so each one's upstreams are ready.
        for c, nodes in enumerate(members):
            bits = 0
            for node in nodes:
                for dep in deps[node]:
                    d = comp[dep]
                    bits |= 1 << d if d == c else upstream_bits[d] | 1 << d
            upstream_bits.append(bits)

    def test(a: str, b: str) -> bool:
        if a in deps[b]:
            return True
        if not comp:
            build()
        ca, cb = comp[a], comp[b]
        return ca == cb or bool(upstream_bits[cb] >> ca & 1)

    return test


def _components(deps: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Tarjan's strongly connected components (iterative): node -> component number,
    numbered so that a component comes after every component it waits for."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comp: dict[str, int] = {}
    count = 0

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)

    for root in deps:
        if root in index:
            continue
        visit(root)
        work = [(root, 0)]
        while work:
            node, i = work[-1]
            edges = deps[node]
            if i < len(edges):
                work[-1] = (node, i + 1)
                child = edges[i]
                if child not in index:
                    visit(child)
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp[member] = count
                    if member == node:
                        break
                count += 1
    return comp


def _find_cycles(
    ids: Sequence[str], deps: Mapping[str, Sequence[str]], position: Mapping[str, int]
) -> list[list[str]]:
    """Dependency cycles, each as a path ``[a, b, ..., a]`` along ``after`` edges, starting
    at its first subtask in file order. Disjoint cycles are all reported; within a
    tangle of overlapping cycles, one."""
    dependants: dict[str, list[str]] = {i: [] for i in ids}
    waiting = {i: len(deps.get(i, ())) for i in ids}
    for i in ids:
        for dep in deps.get(i, ()):
            dependants[dep].append(i)
    remaining = set(ids)
    ready = [i for i in ids if waiting[i] == 0]

    def resolve(nodes: list[str]) -> None:
        while nodes:
            node = nodes.pop()
            if node not in remaining:
                continue
            remaining.discard(node)
            for child in dependants[node]:
                if child in remaining:
                    waiting[child] -= 1
                    if waiting[child] == 0:
                        nodes.append(child)

    resolve(ready)
    cycles: list[list[str]] = []
    while remaining:
        # Every remaining subtask waits for another remaining one: walking those edges
        # from any of them must come back to a subtask already on the path.
        node = min(remaining, key=position.__getitem__)
        path: list[str] = []
        on_path: dict[str, int] = {}
        while node not in on_path:
            on_path[node] = len(path)
            path.append(node)
            node = next(d for d in deps[node] if d in remaining)
        loop = path[on_path[node] :]
        start = min(range(len(loop)), key=lambda k: position[loop[k]])
        loop = loop[start:] + loop[:start]
        cycles.append([*loop, loop[0]])
        resolve(list(loop))
    return cycles


# ---------------------------------------------------------------------------- loading


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(f"duplicate key {_quote(key)} in an object")
        obj[key] = value
    return obj


def load_job_text(text: str, fmt: Literal["toml", "json"], source: str) -> JobSpec:
    """Parse a job file's text (TOML or JSON) and validate it. Syntax errors are a
    JobError with the line and column. A leading byte-order mark is ignored."""
    data: object
    text = text.removeprefix("\ufeff")
    if fmt == "toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            message = str(exc)
            m = re.fullmatch(r"(?s)(.*) \(at line (\d+), column (\d+)\)", message)
            if m:
                message = f"line {m.group(2)}, column {m.group(3)}: {m.group(1)}"
            raise JobError(f"not valid TOML: {message}", source=source) from None
    elif fmt == "json":
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except _DuplicateKey as exc:
            raise JobError(f"not valid JSON: {exc}", source=source) from None
        except json.JSONDecodeError as exc:
            raise JobError(
                f"not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}", source=source
            ) from None
        except RecursionError:
            raise JobError("not valid JSON: nested too deeply", source=source) from None
    else:
        raise ValueError(f"unknown job format {fmt!r}")
    if not isinstance(data, Mapping):
        raise JobError(
            f"expected a JSON object at the top level, got {_type_name(data)}", source=source
        )
    return parse_job(data, source=source)


def job_format(filename: str) -> Literal["toml", "json"]:
    """The format of a job file by its name: ``.json`` is JSON, anything else TOML."""
    return "json" if filename.lower().endswith(".json") else "toml"


def job_to_data(job: JobSpec) -> dict[str, Any]:
    """The job as a JSON-able mapping that :func:`parse_job` turns back into an equal
    spec (durations in seconds, sizes in bytes, defaults written out)."""
    subtasks: list[dict[str, Any]] = []
    for s in job.subtasks:
        entry: dict[str, Any] = {"id": s.id, "kind": s.kind}
        if s.kind == "shell":
            entry["run"] = list(s.run)
        elif s.kind == "llm":
            entry["prompt"] = s.prompt
            if s.model is not None:
                entry["model"] = s.model
            if s.max_tokens is not None:
                entry["max_tokens"] = s.max_tokens
            if s.system is not None:
                entry["system"] = s.system
        else:
            entry["call"] = s.call
            if s.args:
                entry["args"] = list(s.args)
            if s.kwargs:
                entry["kwargs"] = dict(s.kwargs)
        if s.capability is not None:
            entry["capability"] = s.capability
        if s.after:
            entry["after"] = list(s.after)
        entry["priority"] = s.priority
        if s.timeout_s is not None:
            entry["timeout"] = s.timeout_s
        if s.estimate_s is not None:
            entry["estimate"] = s.estimate_s
        entry["retries"] = s.retries
        if s.retry_on_error:
            entry["retry_on_error"] = True
        if s.min_vram:
            entry["min_vram"] = s.min_vram
        if s.min_ram:
            entry["min_ram"] = s.min_ram
        if s.node is not None:
            entry["node"] = s.node
        if s.env:
            entry["env"] = dict(s.env)
        if s.inputs:
            entry["inputs"] = list(s.inputs)
        if s.outputs:
            entry["outputs"] = list(s.outputs)
        subtasks.append(entry)
    data: dict[str, Any] = {"name": job.name, "priority": job.priority, "subtasks": subtasks}
    if job.deadline_s is not None:
        data["deadline"] = job.deadline_s
    return data


# ---------------------------------------------------------------------------- one-subtask jobs

_FLAGS: Final[Mapping[str, str]] = {
    "name": "--name",
    "priority": "--priority",
    "deadline": "--deadline",
    "capability": "--capability",
    "model": "--model",
    "min_vram": "--min-vram",
    "timeout": "--timeout",
    "prompt": "--prompt",
    "max_tokens": "--max-tokens",
    "system": "--system",
    "run": "command",
}


def _single_job(data: dict[str, Any], source: str) -> JobSpec:
    """Parse a one-subtask job built from command-line options; errors name the flags."""
    try:
        return parse_job(data, source=source)
    except JobError as exc:
        errors = [
            JobError(e.message, None, _FLAGS.get(e.key or "", e.key), source=source)
            for e in exc.errors
        ]
        raise JobError.combine(errors) from None


def _options(
    name: str | None,
    priority: str,
    deadline: str | float | None,
    capability: str | None,
    min_vram: str | int | None,
    timeout: str | float | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    job: dict[str, Any] = {"priority": priority}
    if name is not None:
        job["name"] = name
    if deadline is not None:
        job["deadline"] = deadline
    subtask: dict[str, Any] = {"id": SINGLE_SUBTASK_ID}
    if capability is not None:
        subtask["capability"] = capability
    if min_vram is not None:
        subtask["min_vram"] = min_vram
    if timeout is not None:
        subtask["timeout"] = timeout
    return job, subtask


def single_command_job(
    argv: Sequence[str],
    *,
    name: str | None = None,
    priority: str = "normal",
    deadline: str | float | None = None,
    capability: str | None = None,
    min_vram: str | int | None = None,
    timeout: str | float | None = None,
    source: str = "swarmctl submit",
) -> JobSpec:
    """The job of ``swarmctl submit [options] -- CMD ARG...``: one shell subtask "main".
    The job name defaults to the command's base name."""
    job, subtask = _options(name, priority, deadline, capability, min_vram, timeout)
    if not argv:
        raise JobError("give a command to run after --", source=source)
    if name is None:
        base = PurePosixPath(argv[0].replace("\\", "/")).name
        job["name"] = base if base.isprintable() and base else "command"
    subtask.update(kind="shell", run=list(argv))
    job["subtasks"] = [subtask]
    return _single_job(job, source)


def single_prompt_job(
    prompt: str,
    capability: str | None = None,
    *,
    model: str | None = None,
    name: str | None = None,
    priority: str = "normal",
    deadline: str | float | None = None,
    min_vram: str | int | None = None,
    timeout: str | float | None = None,
    max_tokens: int | None = None,
    system: str | None = None,
    source: str = "swarmctl submit",
) -> JobSpec:
    """The job of ``swarmctl submit --prompt TEXT --capability CAP``: one llm subtask
    "main" (``model`` names a profile instead of a capability). Name defaults to "prompt"."""
    if capability is None and model is None:
        raise JobError(
            "give --capability CAP to say which kind of model should answer", source=source
        )
    job, subtask = _options(name, priority, deadline, capability, min_vram, timeout)
    job.setdefault("name", "prompt")
    subtask.update(kind="llm", prompt=prompt)
    if model is not None:
        subtask["model"] = model
    if max_tokens is not None:
        subtask["max_tokens"] = max_tokens
    if system is not None:
        subtask["system"] = system
    job["subtasks"] = [subtask]
    return _single_job(job, source)


# ---------------------------------------------------------------------------- order


def topological_order(job: JobSpec) -> list[str]:
    """Subtask ids so that each comes after everything it waits for; among subtasks
    that are ready at the same time, file order. JobError on a cycle."""
    position = {s.id: i for i, s in enumerate(job.subtasks)}
    waiting = {s.id: 0 for s in job.subtasks}
    dependants: dict[str, list[str]] = {s.id: [] for s in job.subtasks}
    for s in job.subtasks:
        for dep in set(s.after):
            if dep not in position:
                raise JobError(f"unknown subtask {_quote(dep)}", s.id, "after")
            dependants[dep].append(s.id)
            waiting[s.id] += 1
    ready = [position[i] for i, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node = job.subtasks[heapq.heappop(ready)].id
        order.append(node)
        for child in dependants[node]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, position[child])
    if len(order) != len(job.subtasks):
        deps = {s.id: list(s.after) for s in job.subtasks}
        cycle = _find_cycles(list(position), deps, position)[0]
        raise JobError(f"dependency cycle {_cycle_text(cycle)}", cycle[0], "after")
    return order


# ---------------------------------------------------------------------------- the cluster


def _pin_matches(pin: str, peers: Sequence[PeerFacts]) -> list[PeerFacts]:
    by_name = [p for p in peers if p.name == pin]
    return by_name or [p for p in peers if p.node_id.startswith(pin)]


def _names(peers: Iterable[PeerFacts]) -> str:
    return _listing(p.name for p in peers)


def check_feasible(job: JobSpec, peers: Sequence[PeerFacts]) -> None:
    """Refuse subtasks that no live peer could run, listing every problem.

    ``peers`` are the live peers (alive, self included), draining or not: a draining
    or busy peer may take work later, a missing capability will not appear by waiting.
    Each constraint is checked alone first (capability, model profile, min_vram,
    min_ram, node pin, shell permission — python calls count as shell); when each is
    met somewhere but no single peer meets them all, the message says where each is met.
    """
    problems = _Problems(None)
    if not peers:
        raise JobError("no live peers in the cluster to run this job")
    capabilities = frozenset[str]().union(*(p.capabilities for p in peers))
    models = frozenset[str]().union(*(p.models for p in peers))

    for pos, s in enumerate(job.subtasks):

        def error(key: str | None, message: str, s: SubtaskSpec = s, pos: int = pos) -> None:
            problems.add(message, s.id, key, pos)

        # (description, peers meeting it) for every constraint of the subtask
        constraints: list[tuple[str, list[PeerFacts]]] = []
        ok = True
        if s.capability is not None:
            having = [p for p in peers if s.capability in p.capabilities]
            if not having:
                error(
                    "capability",
                    f"no live peer offers {_quote(s.capability)}"
                    f"{_suggest(s.capability, capabilities)} "
                    f"(the cluster has: {_listing(capabilities)})",
                )
                ok = False
            constraints.append((f"capability {_quote(s.capability)}", having))
        if s.model is not None:
            having = [p for p in peers if s.model in p.models]
            if not having:
                error(
                    "model",
                    f"no live peer has a model profile {_quote(s.model)}"
                    f"{_suggest(s.model, models)} (profiles in the cluster: {_listing(models)})",
                )
                ok = False
            constraints.append((f"model {_quote(s.model)}", having))
        if s.min_vram > 0:
            having = [p for p in peers if p.max_vram_total >= s.min_vram]
            if not having:
                best = max(peers, key=lambda p: p.max_vram_total)
                if best.max_vram_total <= 0:
                    error(
                        "min_vram", f"{_format_size(s.min_vram)} needed, but no live peer has a GPU"
                    )
                else:
                    error(
                        "min_vram",
                        f"{_format_size(s.min_vram)} needed, but the largest GPU on a live peer "
                        f"has {_format_size(best.max_vram_total)} ({best.name})",
                    )
                ok = False
            constraints.append((f"min_vram {_format_size(s.min_vram)}", having))
        if s.min_ram > 0:
            having = [p for p in peers if p.ram_total >= s.min_ram]
            if not having:
                best = max(peers, key=lambda p: p.ram_total)
                error(
                    "min_ram",
                    f"{_format_size(s.min_ram)} needed, but the most memory on a live peer is "
                    f"{_format_size(best.ram_total)} ({best.name})",
                )
                ok = False
            constraints.append((f"min_ram {_format_size(s.min_ram)}", having))
        if s.node is not None:
            having = _pin_matches(s.node, peers)
            if not having:
                error(
                    "node",
                    f"no live peer is named {_quote(s.node)} or has an id starting with it "
                    f"(live peers: {_names(peers)})",
                )
                ok = False
            elif len(having) > 1:
                error(
                    "node",
                    f"{_quote(s.node)} matches several peers "
                    f"({', '.join(f'{p.name} ({p.node_id})' for p in having)}); "
                    "give more of the id",
                )
                ok = False
            constraints.append((f"node {_quote(s.node)}", having))
        if s.kind in ("shell", "python"):
            having = [p for p in peers if p.allow_shell]
            if not having:
                error(
                    None,
                    f"no live peer allows {s.kind} subtasks (allow_shell = false on "
                    f"{_names(peers)})",
                )
                ok = False
            constraints.append((f"{s.kind} subtasks allowed", having))

        if ok and len(constraints) > 1:
            sets = [{p.node_id for p in having} for _, having in constraints]
            if not set.intersection(*sets):
                facts = "; ".join(f"{what} on {_names(having)}" for what, having in constraints)
                error(None, f"no single live peer meets all its constraints: {facts}")

    problems.raise_if_any()


def check_input_sizes(
    job: JobSpec,
    sizes: Mapping[str, int | None],
    max_total: int,
    max_file: int,
) -> None:
    """Refuse missing or oversized input files, naming the subtasks that list them.

    ``sizes`` maps paths relative to the submit directory to a size in bytes, or None
    when the path does not exist. For an input that is a file give its size under the
    path as written in the job; for a directory give each file inside it
    (``"src/a.py"``), or the directory itself with 0 when it is empty. An input with
    no entry at all counts as missing. Each file is counted once in the total, however
    many subtasks list it.
    """
    problems = _Problems(None)
    norm: dict[str, int | None] = {}
    for path, size in sizes.items():
        norm[_norm(path)] = size

    for pos, s in enumerate(job.subtasks):
        for item in s.inputs:
            base = _norm(item)
            if base == ".":
                covered = list(norm.items())
            else:
                prefix = base + "/"
                covered = [(p, n) for p, n in norm.items() if p == base or p.startswith(prefix)]
            if not covered or any(n is None for p, n in covered if p == base):
                problems.add(f"{_quote(item)} does not exist", s.id, "inputs", pos)
                continue
            for path, size in covered:
                if size is not None and size > max_file:
                    problems.add(
                        f"{_quote(path)} is {_format_size(size)}, over the per-file limit of "
                        f"{_format_size(max_file)}",
                        s.id,
                        "inputs",
                        pos,
                    )
    total = sum(n for n in norm.values() if n is not None)
    if total > max_total:
        largest = sorted(((n, p) for p, n in norm.items() if n), reverse=True)[:3]
        shown = ", ".join(f"{_quote(p)} {_format_size(n)}" for n, p in largest)
        problems.add(
            f"input files total {_format_size(total)}, over the limit of "
            f"{_format_size(max_total)} (largest: {shown})",
            key="inputs",
        )
    problems.raise_if_any()


def _norm(path: str) -> str:
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts) or "."
