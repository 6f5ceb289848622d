"""Placeholders that insert an upstream subtask's result: ``{{ lint.stdout }}``.

A placeholder is ``{{ ID.FIELD }}`` with optional whitespace inside the braces, where
FIELD is one of :data:`FIELDS`. Prompts, each command argument (one argv element at a
time, never re-split by a shell) and the contents of input files are rendered with the
results of the subtask's upstreams. Inserted values lose their trailing newlines, as
shell command substitution does.

Anything else that starts with ``{{`` (``{{ name }}``, ``{{ a.b.c }}``, Jinja blocks)
is left alone. Something shaped like a placeholder but with an unknown field
(``{{ lint.stdot }}``) is reported by the job parser when ID names a subtask, so a typo
is caught at submit time; see :func:`placeholders`.

Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

FIELDS: Final[tuple[str, ...]] = ("stdout", "stderr", "output", "exit_code")

_PLACEHOLDER: Final = re.compile(
    r"\{\{\s*(?P<id>[A-Za-z0-9_-]{1,64})\.(?P<field>[A-Za-z_][A-Za-z0-9_]*)\s*\}\}"
)


@dataclass(frozen=True, slots=True)
class Placeholder:
    """One ``{{ ID.FIELD }}``-shaped occurrence in a text (the field may be unknown)."""

    text: str  # as written, braces included
    subtask: str
    field: str

    @property
    def known(self) -> bool:
        return self.field in FIELDS


def placeholders(text: str) -> list[Placeholder]:
    """Every ``{{ ID.NAME }}``-shaped occurrence, in order, known field or not."""
    return [
        Placeholder(m.group(0), m.group("id"), m.group("field"))
        for m in _PLACEHOLDER.finditer(text)
    ]


def references(text: str) -> set[str]:
    """The subtask ids whose results ``text`` inserts (placeholders with a known field)."""
    return {m.group("id") for m in _PLACEHOLDER.finditer(text) if m.group("field") in FIELDS}


def value_text(value: object) -> str:
    """A result value as inserted text: None is empty, bytes are decoded as UTF-8
    (bad bytes replaced), numbers are written out; trailing newlines are removed."""
    if value is None:
        text = ""
    elif isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("utf-8", errors="replace")
    else:
        text = str(value)
    return text.rstrip("\r\n")


RENDER_MAX: Final = 2 * 1024 * 1024  # characters a subtask's rendered templates may reach


class TooLarge(ValueError):
    """Rendering would exceed the limit (raised before the text is built)."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__(
            f"{what} makes it over the limit of {limit} characters (pass big outputs on "
            "as files, with outputs and inputs, not as placeholders)"
        )
        self.what = what


def render(text: str, results: Mapping[str, Mapping[str, Any]], limit: int | None = None) -> str:
    """Replace each placeholder with a known field by ``results[ID][FIELD]``.

    One pass: text inserted from a result is never expanded again. A missing field or
    a None value inserts nothing. Raises KeyError naming the id when ``results`` has no
    entry for a referenced subtask (the job parser makes sure only upstreams are named,
    so this means the caller passed the wrong results). With ``limit``, raises
    :class:`TooLarge` if the rendered text would be longer, before building it.
    """
    if "{{" not in text:
        return text
    values: dict[tuple[str, str], str] = {}  # each inserted value made once
    pieces: list[str] = []
    size, last = 0, 0
    for m in _PLACEHOLDER.finditer(text):
        field = m.group("field")
        if field not in FIELDS:
            continue
        subtask = m.group("id")
        value = values.get((subtask, field))
        if value is None:
            try:
                result = results[subtask]
            except KeyError:
                raise KeyError(f"no result for subtask {subtask!r} named by {m.group(0)}") from None
            value = values[(subtask, field)] = value_text(result.get(field))
        size += m.start() - last + len(value)
        if limit is not None and size > limit:
            raise TooLarge(limit, f"rendering {m.group(0)}")
        pieces += (text[last : m.start()], value)
        last = m.end()
    if limit is not None and size + len(text) - last > limit:
        raise TooLarge(limit, "the text after the last placeholder")
    pieces.append(text[last:])
    return "".join(pieces)


def compact(text: str) -> str:
    """Rewrite every placeholder without whitespace inside the braces (``{{lint.stdout}}``),
    so splitting a command line into words keeps each placeholder within one word."""
    return _PLACEHOLDER.sub(lambda m: "{{" + m.group("id") + "." + m.group("field") + "}}", text)
