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
            for why in _input_problems(item, norm, max_file):
                problems.add(why, s.id, "inputs", pos)
    if (too_large := _total_problem(norm, max_total)) is not None:
        problems.add(too_large, key="inputs")
    problems.raise_if_any()


def _input_problems(item: str, norm: Mapping[str, int | None], max_file: int) -> list[str]:
    """Why the input ``item`` cannot be shipped: missing, or its files over ``max_file``."""
    base = _norm(item)
    if base == ".":
        covered = list(norm.items())
    else:
        prefix = base + "/"
        covered = [(p, n) for p, n in norm.items() if p == base or p.startswith(prefix)]
    if not covered or any(n is None for p, n in covered if p == base):
        return [f"{quote(item)} does not exist"]
    return [
        f"{quote(path)} is {format_size(size)}, over the per-file limit of {format_size(max_file)}"
        for path, size in covered
        if size is not None and size > max_file
    ]


def _total_problem(norm: Mapping[str, int | None], max_total: int) -> str | None:
    """Why all input files together are too large (naming the largest), or None."""
    total = sum(n for n in norm.values() if n is not None)
    if total <= max_total:
        return None
    largest = sorted(((n, p) for p, n in norm.items() if n), reverse=True)[:3]
    shown = ", ".join(f"{quote(p)} {format_size(n)}" for n, p in largest)
    return (
        f"input files total {format_size(total)}, over the limit of "
        f"{format_size(max_total)} (largest: {shown})"
    )


def _norm(path: str) -> str:
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts) or "."
