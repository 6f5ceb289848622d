"""What a dispatch carries: the subtask's spec as a worker needs it, and the input
files under its ``inputs``, with ``{{ ID.stdout }}`` placeholders in text files rendered
from the upstream results, bounded so that a dispatch always fits one frame."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from .core import template
from .core.jobspec import SubtaskSpec

# A dispatch's input files, rendered, at most (the frame is 16 MiB; the spec's texts
# are at most template.RENDER_MAX characters).
DISPATCH_FILES_MAX = 12 * 1024 * 1024


def dispatch_files(
    spec: SubtaskSpec, files: Mapping[str, bytes], upstream: Mapping[str, Mapping[str, Any]]
) -> dict[str, bytes]:
    """The subtask's files, rendered; :class:`template.TooLarge` past the limit."""
    out = render_files(files_for(spec, files), upstream)
    if sum(len(v) for v in out.values()) > DISPATCH_FILES_MAX:
        raise template.TooLarge(DISPATCH_FILES_MAX, "rendering them")
    return out


def files_for(spec: SubtaskSpec, files: Mapping[str, bytes]) -> dict[str, bytes]:
    """The shipped files under the subtask's ``inputs`` (a file or a directory)."""
    out = {}
    for wanted in spec.inputs:
        prefix = wanted.rstrip("/")
        for path, data in files.items():
            if path == prefix or path.startswith(prefix + "/"):
                out[path] = data
    return out


def render_files(
    files: Mapping[str, bytes], upstream: Mapping[str, Mapping[str, Any]]
) -> dict[str, bytes]:
    """``{{ ID.stdout }}`` in text input files, from the upstream results."""
    if not upstream:
        return dict(files)
    out = {}
    for path, data in files.items():
        try:
            text = data.decode()
        except UnicodeDecodeError:
            out[path] = data
            continue
        if "{{" in text:
            with contextlib.suppress(KeyError):
                text = template.render(text, upstream, template.RENDER_MAX)
        out[path] = text.encode()
    return out


def spec_to_wire(spec: SubtaskSpec) -> dict[str, Any]:
    """What a worker needs of a (rendered) subtask spec."""
    return {
        "id": spec.id,
        "kind": spec.kind,
        "run": list(spec.run),
        "env": dict(spec.env),
        "timeout_s": spec.timeout_s,
        "outputs": list(spec.outputs),
        "prompt": spec.prompt,
        "system": spec.system,
        "max_tokens": spec.max_tokens,
        "call": spec.call,
        "args": list(spec.args),
        "kwargs": dict(spec.kwargs),
        **({} if spec.api is None else {"api": spec.api, "request": spec.request}),
        **(
            {}
            if spec.engine is None
            else {"engine": spec.engine, "min_ram": spec.min_ram, "min_vram": spec.min_vram}
        ),
    }
