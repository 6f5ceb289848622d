"""Job files: TOML or JSON text (syntax errors with line and column, duplicate JSON
keys refused) read into a :class:`JobSpec`, and a file's format told from its name."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from typing import Any, Literal

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
            f"expected a JSON object at the top level, got {type_name(data)}", source=source
        )
    return parse_job(data, source=source)


def job_format(filename: str) -> Literal["toml", "json"]:
    """The format of a job file by its name: ``.json`` is JSON, anything else TOML."""
    return "json" if filename.lower().endswith(".json") else "toml"
