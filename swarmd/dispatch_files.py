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


class MissingArtifact(Exception):
    """An ``upstream_inputs`` entry names no artifact its subtask left (the message
    says which)."""


def dispatch_files(
    spec: SubtaskSpec,
    files: Mapping[str, bytes],
    upstream: Mapping[str, Mapping[str, Any]],
    artifacts: Mapping[str, Mapping[str, bytes]] | None = None,
) -> dict[str, bytes]:
    """The subtask's files, rendered, and the upstream artifacts it asks for
    (``artifacts``: subtask -> name -> bytes); :class:`template.TooLarge` past the
    limit, :class:`MissingArtifact` for an artifact that is not there."""
    out = render_files(files_for(spec, files), upstream)
    out.update(upstream_files(spec, artifacts or {}))
    if sum(len(v) for v in out.values()) > DISPATCH_FILES_MAX:
        raise template.TooLarge(DISPATCH_FILES_MAX, "rendering them")
    return out


def upstream_files(
    spec: SubtaskSpec, artifacts: Mapping[str, Mapping[str, bytes]]
) -> dict[str, bytes]:
    """The upstream artifacts under ``upstream_inputs`` (``SUBTASK/PATH``: a file or a
    directory of that subtask's artifacts), each at its own path."""
    out: dict[str, bytes] = {}
    for item in spec.upstream_inputs:
        source, _, path = item.partition("/")
        prefix = path.rstrip("/")
        found = {
            name: data
            for name, data in artifacts.get(source, {}).items()
            if name == prefix or name.startswith(prefix + "/")
        }
        if not found:
            raise MissingArtifact(
                f"upstream_inputs: {item}: subtask {source} left no artifact {prefix} "
                "(big artifacts stay with their result and are not shipped as inputs)"
            )
        out.update(found)
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
