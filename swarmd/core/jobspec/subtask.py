"""The reader of one subtask table: its id and kind, the keys allowed for that kind,
and each value checked and converted into :class:`SubtaskSpec` keyword arguments.

The common keys are read from a table (key, spec field, typed reader), in the order of
the table; then the kind's own reader (:mod:`.kinds`); then the input and output paths.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from .errors import Problems
from .fields import FieldReader
from .kinds import KIND_KEYS, KIND_READERS
from .spec import KINDS, MAX_ID_LENGTH, MAX_RETRIES, Kind, Priority, SubtaskSpec
from .wording import quote, suggest, type_name

_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Keys every kind allows. Order is the order of the "allowed" lists in messages.
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
_ALL_KEYS: Final = frozenset(_COMMON_KEYS).union(*KIND_KEYS.values())

# (key in the table, SubtaskSpec field, reader): a key is read when present and allowed
# for the subtask's kind; an unusable value is reported and leaves the field unset.
_Field = tuple[str, str, Callable[[FieldReader, str], object]]
_COMMON_FIELDS: Final[tuple[_Field, ...]] = (
    ("priority", "priority", FieldReader.priority),
    ("timeout", "timeout_s", FieldReader.duration),
    ("estimate", "estimate_s", FieldReader.duration),
    ("retries", "retries", lambda r, key: r.integer(key, 0, MAX_RETRIES)),
    ("retry_on_error", "retry_on_error", FieldReader.boolean),
    ("min_vram", "min_vram", FieldReader.size),
    ("min_ram", "min_ram", FieldReader.size),
    ("capability", "capability", FieldReader.string),
    ("node", "node", FieldReader.string),
    ("engine", "engine", FieldReader.string),
    ("env", "env", FieldReader.env),
)
_PATH_FIELDS: Final[tuple[_Field, ...]] = (
    ("inputs", "inputs", FieldReader.paths),
    ("upstream_inputs", "upstream_inputs", FieldReader.paths),
    ("outputs", "outputs", FieldReader.paths),
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


def read_subtask(
    pos: int, raw: Mapping[str, Any], job_priority: Priority, problems: Problems
) -> Draft:
    """Read the subtask table at ``pos`` (0-based), reporting its problems."""
    r = FieldReader(pos, raw, problems)
    subtask_id = _read_id(r)
    kind = _read_kind(r)
    allowed = (*_COMMON_KEYS, *KIND_KEYS[kind]) if kind is not None else tuple(_ALL_KEYS)
    _check_keys(r, kind, allowed)
    after = _read_after(r)
    values: dict[str, Any] = {"priority": job_priority}
    _read_fields(r, _COMMON_FIELDS, allowed, values)
    if kind is not None:
        KIND_READERS[kind](r, values)
    _read_fields(r, _PATH_FIELDS, allowed, values)
    return Draft(pos, r.label, subtask_id, kind, after, values)


def _read_fields(
    r: FieldReader, fields: Sequence[_Field], allowed: Sequence[str], values: dict[str, Any]
) -> None:
    for key, name, read in fields:
        if key in r.raw and key in allowed and (value := read(r, key)) is not None:
            values[name] = value


def _read_id(r: FieldReader) -> str | None:
    """The subtask's id (which then labels its problems), or None."""
    raw = r.raw
    if "id" not in raw:
        r.error("id", "missing (every subtask needs an id)")
    elif not isinstance(raw["id"], str):
        r.error("id", f"expected a string, got {type_name(raw['id'])}")
    elif not _ID_RE.fullmatch(raw["id"]):
        r.error(
            "id",
            f"{quote(raw['id'])} is not a valid id (letters, digits, _ and -, "
            f"at most {MAX_ID_LENGTH} characters)",
        )
    else:
        r.label = raw["id"]
        return r.label
    return None


def _read_kind(r: FieldReader) -> Kind | None:
    raw = r.raw
    if "kind" not in raw:
        r.error("kind", f"missing (one of {', '.join(KINDS)})")
    elif raw["kind"] not in KINDS:
        shown = quote(raw["kind"]) if isinstance(raw["kind"], str) else repr(raw["kind"])
        r.error("kind", f"unknown kind {shown} (expected one of {', '.join(KINDS)})")
    else:
        return cast(Kind, raw["kind"])
    return None


def _check_keys(r: FieldReader, kind: Kind | None, allowed: Sequence[str]) -> None:
    """Report keys not allowed for ``kind`` (None: keys of no kind at all)."""
    for key in r.raw:
        if key in allowed:
            continue
        if kind is not None and key in _ALL_KEYS:
            owners = [k for k, keys in KIND_KEYS.items() if key in keys]
            r.error(
                None,
                f'key "{key}" is for {" and ".join(owners)} subtasks, not {kind} '
                f"(allowed for {kind}: {', '.join(sorted(allowed))})",
            )
        else:
            r.error(
                None,
                f"unknown key {quote(str(key))}{suggest(str(key), allowed)} "
                f"(allowed{f' for {kind}' if kind else ''}: {', '.join(sorted(allowed))})",
            )


def _read_after(r: FieldReader) -> list[str]:
    """The ids the subtask waits for, without repeats (empty when unusable)."""
    if "after" not in r.raw:
        return []
    deps = r.string_list("after", "subtask ids")
    return [] if deps is None else list(dict.fromkeys(deps))
