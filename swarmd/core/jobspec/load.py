"""Job files: TOML or JSON text (syntax errors with line and column, duplicate JSON
keys refused) read into a :class:`JobSpec`, and a file's format told from its name."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

from .errors import JobError
from .job import parse_job
from .spec import JobSpec
from .wording import quote, type_name


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(f"duplicate key {quote(key)} in an object")
        obj[key] = value
    return obj


def load_job_text(text: str, fmt: Literal["toml", "json"], source: str) -> JobSpec:
    """Parse a job file's text (TOML or JSON) and validate it. Syntax errors are a
    JobError with the line and column. A leading byte-order mark is ignored."""
    text = text.removeprefix("\ufeff")
    read = _SYNTAX.get(fmt)
    if read is None:
        raise ValueError(f"unknown job format {fmt!r}")
    data = read(text, source)
    if not isinstance(data, Mapping):
        raise JobError(
            f"expected a JSON object at the top level, got {type_name(data)}", source=source
        )
    return parse_job(data, source=source)


def _read_toml(text: str, source: str) -> object:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = re.fullmatch(r"(?s)(.*) \(at line (\d+), column (\d+)\)", message)
        if m:
            message = f"line {m.group(2)}, column {m.group(3)}: {m.group(1)}"
        raise JobError(f"not valid TOML: {message}", source=source) from None
    except RecursionError:  # tomllib recurses once per level of [ or {
        raise JobError("not valid TOML: nested too deeply", source=source) from None


def _read_json(text: str, source: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as exc:
        raise JobError(f"not valid JSON: {exc}", source=source) from None
    except json.JSONDecodeError as exc:
        raise JobError(
            f"not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}", source=source
        ) from None
    except RecursionError:
        raise JobError("not valid JSON: nested too deeply", source=source) from None


# The syntax of each job file format: text -> data, or a JobError with line and column.
_SYNTAX: Final[Mapping[str, Callable[[str, str], object]]] = {
    "toml": _read_toml,
    "json": _read_json,
}


def job_format(filename: str) -> Literal["toml", "json"]:
    """The format of a job file by its name: ``.json`` is JSON, anything else TOML."""
    return "json" if filename.lower().endswith(".json") else "toml"
