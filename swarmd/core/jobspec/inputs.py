"""Input files at submit time: :func:`check_input_sizes` refuses inputs that are missing
or over the size limits, given the sizes the caller found (no I/O here)."""

from __future__ import annotations

from collections.abc import Mapping

from .errors import Problems
from .spec import JobSpec
from .wording import format_size, quote


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
    problems = Problems(None)
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
                problems.add(f"{quote(item)} does not exist", s.id, "inputs", pos)
                continue
            for path, size in covered:
                if size is not None and size > max_file:
                    problems.add(
                        f"{quote(path)} is {format_size(size)}, over the per-file limit of "
                        f"{format_size(max_file)}",
                        s.id,
                        "inputs",
                        pos,
                    )
    total = sum(n for n in norm.values() if n is not None)
    if total > max_total:
        largest = sorted(((n, p) for p, n in norm.items() if n), reverse=True)[:3]
        shown = ", ".join(f"{quote(p)} {format_size(n)}" for n, p in largest)
        problems.add(
            f"input files total {format_size(total)}, over the limit of "
            f"{format_size(max_total)} (largest: {shown})",
            key="inputs",
        )
    problems.raise_if_any()


def _norm(path: str) -> str:
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts) or "."
