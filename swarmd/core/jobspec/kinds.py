"""What each kind of subtask adds to the common keys: the keys it allows, and the reader
of those keys (shell: the command; llm: prompt, model, tokens; python: the call and its
arguments). ``inputs``, ``outputs`` and ``estimate`` are allowed here but read with the
common keys."""

from __future__ import annotations

import keyword
import math
import shlex
from collections.abc import Callable, Mapping
from typing import Any, Final

from swarmd.core import template

from .fields import FieldReader
from .spec import APIS, DEFAULT_MAX_TOKENS, Kind
from .wording import quote, type_name

# Keys of a subtask table, by kind. Order is the order of the "allowed" lists in messages.
KIND_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "shell": ("run", "inputs", "upstream_inputs", "outputs", "estimate", "engine"),
    "llm": ("prompt", "model", "max_tokens", "system", "api", "request", "client"),
    "python": ("call", "args", "kwargs", "inputs", "upstream_inputs", "outputs", "estimate"),
}

_JSON_ONLY: Final = "must hold only JSON values (strings, finite numbers, booleans, lists, tables)"


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


def valid_call(call: str) -> bool:
    module, sep, attr = call.partition(":")
    if not sep or not module or not attr:
        return False
    return all(
        part.isidentifier() and not keyword.iskeyword(part)
        for part in (*module.split("."), *attr.split("."))
    )


# ---------------------------------------------------------------------------- shell


def read_shell(r: FieldReader, values: dict[str, Any]) -> None:
    if "run" not in r.raw:
        r.error("run", 'missing (the command, e.g. run = ["make", "test"])')
        return
    argv = _argv(r, r.raw["run"])
    if argv is None:
        return
    if not argv or not argv[0]:
        r.error("run", "the command is empty")
        return
    if any("\0" in arg for arg in argv):
        r.error("run", "an argument contains a NUL character")
        return
    values["run"] = tuple(argv)


def _argv(r: FieldReader, value: object) -> list[str] | None:
    """``run`` as words: a list of strings as given, one command line split as a shell
    would (after joining template placeholders into single words)."""
    if isinstance(value, str):
        try:
            return shlex.split(template.compact(value))
        except ValueError as exc:
            r.error("run", f"cannot split {quote(value)} into words: {exc}")
            return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    r.error("run", f"expected a list of strings (or one command line), got {type_name(value)}")
    return None


# ---------------------------------------------------------------------------- llm


def read_llm(r: FieldReader, values: dict[str, Any]) -> None:
    raw = r.raw
    if "api" in raw or "request" in raw:
        _read_request(r, values)
    elif "prompt" not in raw:
        r.error("prompt", "missing (llm subtasks need a prompt)")
    elif (prompt := r.string("prompt")) is not None:
        values["prompt"] = prompt
    if "model" in raw and (model := r.string("model")) is not None:
        values["model"] = model
    if "capability" in raw and "model" in raw and "api" not in raw:
        r.error(None, 'give either "capability" or "model" (a profile name), not both')
    elif "capability" not in raw and "model" not in raw:
        r.error(None, 'llm subtasks need "capability" or "model" (a profile name)')
    values["max_tokens"] = DEFAULT_MAX_TOKENS
    if "max_tokens" in raw and (n := r.integer("max_tokens", 1, 10_000_000)) is not None:
        values["max_tokens"] = n
    if "system" in raw and (system := r.string("system", allow_empty=True)) is not None:
        values["system"] = system
    if "client" in raw and (client := r.string("client")) is not None:
        values["client"] = client


def _read_request(r: FieldReader, values: dict[str, Any]) -> None:
    """An OpenAI request passed through: ``api`` (which endpoint) and ``request`` (the
    body), instead of a prompt."""
    raw = r.raw
    for key in ("prompt", "system"):
        if key in raw:
            r.error(key, f'not with "api" and "request" (the request carries the {key})')
    api = raw.get("api")
    if api not in APIS:
        shown = quote(api) if isinstance(api, str) else "missing"
        r.error("api", f"{shown}: expected one of {', '.join(APIS)} (with a request)")
    else:
        values["api"] = api
    request = raw.get("request")
    if not isinstance(request, Mapping):
        r.error("request", f"expected a table (an OpenAI request body), got {type_name(request)}")
    elif not is_jsonable(request):
        r.error("request", _JSON_ONLY)
    else:
        values["request"] = dict(request)


# ---------------------------------------------------------------------------- python


def read_python(r: FieldReader, values: dict[str, Any]) -> None:
    if "call" not in r.raw:
        r.error("call", 'missing (e.g. call = "mypkg.module:function")')
    elif (call := r.string("call")) is not None:
        if valid_call(call):
            values["call"] = call
        else:
            r.error("call", f'{quote(call)} is not of the form "module.path:function"')
    if "args" in r.raw and (args := _args(r, r.raw["args"])) is not None:
        values["args"] = args
    if "kwargs" in r.raw and (kwargs := _kwargs(r, r.raw["kwargs"])) is not None:
        values["kwargs"] = kwargs


def _args(r: FieldReader, args: object) -> tuple[Any, ...] | None:
    if not isinstance(args, list):
        r.error("args", f"expected a list, got {type_name(args)}")
    elif not is_jsonable(args):
        r.error("args", _JSON_ONLY)
    else:
        return tuple(args)
    return None


def _kwargs(r: FieldReader, kwargs: object) -> dict[str, Any] | None:
    if not isinstance(kwargs, Mapping):
        r.error("kwargs", f"expected a table, got {type_name(kwargs)}")
    elif not is_jsonable(kwargs):
        r.error("kwargs", _JSON_ONLY)
    elif bad := [k for k in kwargs if not k.isidentifier()]:
        r.error("kwargs", f"{quote(bad[0])} is not a valid keyword argument name")
    else:
        return dict(kwargs)
    return None


KindReader = Callable[[FieldReader, dict[str, Any]], None]

KIND_READERS: Final[Mapping[Kind, KindReader]] = {
    "shell": read_shell,
    "llm": read_llm,
    "python": read_python,
}
