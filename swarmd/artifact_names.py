"""What an artifact may be called: a relative path inside the subtask's output.

Checked where an artifact is received (the coordinator, before anything is stored) and
again by ``swarmctl result --out`` before it writes, so a hostile or buggy worker cannot
make either write outside the output directory or over a directory.
"""

from __future__ import annotations

from pathlib import PurePosixPath

MAX_NAME_BYTES = 1024  # the whole relative path, UTF-8
MAX_PART_BYTES = 255  # one path component (the common filesystem limit)


def artifact_name_problem(name: str) -> str | None:
    """Why ``name`` is not a safe artifact name; None if it is one."""
    if not name or name.strip("/") in ("", "."):
        return "empty"
    if "\x00" in name:
        return "a NUL in it"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    if name.startswith("/"):
        return "absolute"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "an empty, '.' or '..' component"
    if any(len(p.encode("utf-8", "surrogatepass")) > MAX_PART_BYTES for p in parts):
        return f"a component longer than {MAX_PART_BYTES} bytes"
    return None


def check_artifact_names(names: list[str]) -> str | None:
    """A message naming the first bad name, or None if all are safe and no name is
    also a directory of another (``a`` and ``a/b``)."""
    for name in names:
        problem = artifact_name_problem(name)
        if problem is not None:
            return f"bad artifact name {name[:200]!r}: {problem}"
    dirs = {str(p) for name in names for p in PurePosixPath(name).parents}
    clash = sorted(dirs.intersection(names))
    if clash:
        return f"bad artifact name {clash[0][:200]!r}: also a directory of another artifact"
    return None
