"""The private working directory of one attempt: inputs written in, outputs collected.

``<workdir_root>/<task>/<subtask>/<attempt>``, mode 0700, created empty for the attempt
and removed after its result is built. Every path that comes with a subtask (input
names, output names) is relative and must stay inside the directory: absolute paths and
``..`` are refused, and symbolic links that lead outside are not followed when
outputs are collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Final, TypeVar

from swarmd import blobs
from swarmd.blobs import Spooled

if TYPE_CHECKING:
    from swarmd.executors import ExecRequest, ExecResult, Limits

T = TypeVar("T")

MAX_ARTIFACT_FILES: Final = 100_000  # artifacts of one attempt (Limits.max_artifact_files)
_COMPONENT_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class WorkdirError(ValueError):
    """A path or size in the subtask spec that this node refuses (an application error)."""


def relative_path(name: str, what: str) -> PurePosixPath:
    """``name`` as a normalised relative path, or :class:`WorkdirError`."""
    if not name or "\x00" in name or "\\" in name:
        raise WorkdirError(f"{what} {name!r}: not a valid relative path")
    path = PurePosixPath(name)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise WorkdirError(f"{what} {name!r}: absolute paths are not allowed")
    parts = [p for p in path.parts if p != "."]
    if ".." in parts:
        raise WorkdirError(f"{what} {name!r}: '..' is not allowed (it would leave the workdir)")
    if not parts:
        raise WorkdirError(f"{what} {name!r}: names the working directory itself")
    return PurePosixPath(*parts)


def attempt_dir(root: Path, task_id: str, subtask_id: str, attempt: int) -> Path:
    for label, value in (("task id", task_id), ("subtask id", subtask_id)):
        if not _COMPONENT_RE.fullmatch(value):
            raise WorkdirError(f"{label} {value!r} cannot name a directory")
    if attempt < 0:
        raise WorkdirError(f"attempt {attempt} is negative")
    return root / task_id / subtask_id / str(attempt)


def create(root: Path, task_id: str, subtask_id: str, attempt: int) -> Path:
    """Make the attempt's directory (0700, empty; a leftover from a crash is removed)."""
    path = attempt_dir(root, task_id, subtask_id, attempt)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    for level in (path.parent.parent, path.parent):
        level.mkdir(exist_ok=True, mode=0o700)
    if path.exists() or path.is_symlink():
        _rmtree(path)
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)  # whatever the umask
    return path


async def prepare(req: ExecRequest, root: Path, limits: Limits) -> Path | ExecResult:
    """Create the attempt's directory and write its inputs; an error result if refused."""
    from swarmd.executors import ExecResult

    try:
        inputs = check_inputs(req.inputs, limits.max_input_bytes)
        for name in req.outputs:
            relative_path(name, "output")
        path = create(root, req.task_id, req.subtask_id, req.attempt)
    except WorkdirError as exc:
        return ExecResult.failure(str(exc), app_failed=True)
    except OSError as exc:
        return ExecResult.failure(f"cannot create the working directory: {exc}", app_failed=False)
    try:
        await off_loop(write_inputs, path, inputs)
    except OSError as exc:
        remove(path)
        return ExecResult.failure(f"cannot write inputs: {exc}", app_failed=False)
    except BaseException:
        remove(path)
        raise
    return path


def remove(path: Path) -> None:
    """Remove an attempt directory and its task/subtask parents if they are empty."""
    _rmtree(path)
    for level in (path.parent, path.parent.parent):
        try:
            level.rmdir()
        except OSError:
            break


def _rmtree(path: Path) -> None:
    def retry_writable(func: Callable[..., Any], failed: str, _exc: Any) -> None:
        # A subtask may leave read-only directories behind; make them writable, retry.
        try:
            os.chmod(os.path.dirname(failed) or ".", 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
            func(failed)
        except OSError:
            pass

    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
        return
    shutil.rmtree(path, onerror=retry_writable)


def check_inputs(inputs: Mapping[str, bytes], max_bytes: int) -> dict[PurePosixPath, bytes]:
    """Validate input names and the total size before anything is written."""
    checked: dict[PurePosixPath, bytes] = {}
    total = 0
    for name, content in inputs.items():
        rel = relative_path(name, "input")
        if rel in checked:
            raise WorkdirError(f"input {name!r}: given twice")
        checked[rel] = content
        total += len(content)
    if total > max_bytes:
        raise WorkdirError(f"inputs are {total} bytes, over this node's limit of {max_bytes}")
    names = set(checked)
    for rel in checked:
        for parent in rel.parents:
            if parent in names:
                raise WorkdirError(f"input {str(parent)!r} is a file and also a directory")
    return checked


def write_inputs(workdir: Path, inputs: Mapping[PurePosixPath, bytes]) -> None:
    """Write checked inputs (see :func:`check_inputs`) into a fresh workdir."""
    for rel, content in inputs.items():
        target = workdir.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(target, flags, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(content)


@dataclass
class Collected:
    artifacts: dict[str, bytes] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    over_limit: list[str] = field(default_factory=list)  # files left out by the size cap
    skipped: list[str] = field(default_factory=list)  # links outside, devices, fifos
    refused: list[str] = field(default_factory=list)  # named outputs that were skipped
    too_many: int = 0  # files left out by the count cap
    max_files: int = 0
    blob: Spooled | None = None  # the artifacts, written to the spool instead of memory

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.artifacts.values())

    def problems(self, max_bytes: int) -> list[str]:
        lines = []
        if self.missing:
            lines.append("missing outputs: " + ", ".join(self.missing))
        if self.refused:
            lines.append(
                "outputs not collected (a link leading outside the working directory, "
                "or not a regular file): " + ", ".join(self.refused)
            )
        if self.over_limit:
            lines.append(
                f"artifacts over this node's limit of {max_bytes} bytes, left out: "
                + ", ".join(_few(self.over_limit))
            )
        if self.too_many:
            lines.append(
                f"artifacts over this node's limit of {self.max_files} files: "
                f"{self.too_many} left out"
            )
        return lines


def _few(names: Sequence[str], n: int = 10) -> list[str]:
    return [*names[:n], f"... {len(names) - n} more"] if len(names) > n else list(names)


class _Sink:
    """Collected artifacts: in memory while they are few and small (they go inside the
    result), else all of them in a blob under ``spool`` (never more than a chunk of
    one in memory)."""

    def __init__(self, result: Collected, spool: Path | None) -> None:
        self.result = result
        self.spool = spool
        self.memory = 0
        self.writer: blobs.BlobWriter | None = None

    def add(self, key: str, file: str, size: int, budget: int) -> int | None:
        """Keep ``file``; its size, or None if it is over ``budget``."""
        artifacts = self.result.artifacts
        if self.writer is None and (
            self.spool is None
            or (self.memory + size <= blobs.INLINE_BYTES and len(artifacts) < blobs.INLINE_FILES)
        ):
            with open(file, "rb") as f:
                data = f.read(budget + 1)
            if len(data) > budget:
                return None
            artifacts[key] = data
            self.memory += len(data)
            return len(data)
        if self.writer is None:
            assert self.spool is not None
            self.writer = blobs.BlobWriter(self.spool)
            for name, data in artifacts.items():
                self.writer.add_bytes(name, data)
            artifacts.clear()
        return self.writer.add_file(key, file, budget)

    def finish(self) -> None:
        if self.writer is not None:
            self.result.blob = self.writer.finish()


def collect_outputs(
    workdir: Path,
    outputs: Sequence[str],
    max_bytes: int,
    spool: Path | None = None,
    max_files: int = MAX_ARTIFACT_FILES,
) -> Collected:
    """Read the named files (directories recursively) into artifacts, up to ``max_bytes``
    and ``max_files`` in total; past blobs.INLINE_BYTES or INLINE_FILES they go into a
    blob under ``spool`` (if given). Raises :class:`WorkdirError` for an invalid name."""
    result = Collected(max_files=max_files)
    sink = _Sink(result, spool)
    try:
        _collect(workdir, outputs, max_bytes, max_files, result, sink)
    except BaseException:
        if sink.writer is not None:
            sink.writer.abort()
        raise
    sink.finish()
    return result


def _files_of(path: Path, real_root: str) -> list[str]:
    if os.path.isdir(path) and _inside(path, real_root):
        files: list[str] = []
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            dirnames.sort()
            files.extend(os.path.join(dirpath, f) for f in sorted(filenames))
        return files
    return [str(path)]


def _collect(
    workdir: Path,
    outputs: Sequence[str],
    max_bytes: int,
    max_files: int,
    result: Collected,
    sink: _Sink,
) -> None:
    real_root = os.path.realpath(workdir)
    budget, kept = max_bytes, set()
    for name in outputs:
        rel = relative_path(name, "output")
        path = workdir.joinpath(*rel.parts)
        if not os.path.lexists(path):
            result.missing.append(name)
            continue
        files = _files_of(path, real_root)
        skipped_before = len(result.skipped)
        for file in files:
            key = PurePosixPath(Path(file).relative_to(workdir).as_posix()).as_posix()
            if key in kept:
                continue
            if not _inside(Path(file), real_root):
                result.skipped.append(key)
                continue
            try:
                st = os.stat(file)
            except OSError:
                result.skipped.append(key)
                continue
            if not stat.S_ISREG(st.st_mode):
                result.skipped.append(key)
                continue
            if len(kept) >= max_files:
                result.too_many += 1
                continue
            size = None if st.st_size > budget else sink.add(key, file, st.st_size, budget)
            if size is None:
                result.over_limit.append(key)
                continue
            kept.add(key)
            budget -= size
        if files == [str(path)] and len(result.skipped) > skipped_before:
            result.refused.append(name)  # asked for by name: say why it is not there


def _inside(path: Path, real_root: str) -> bool:
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root + os.sep)


async def collect(req: ExecRequest, cwd: Path, limits: Limits) -> tuple[Collected, list[str]]:
    """The attempt's declared outputs from ``cwd`` (off the event loop), and what is
    wrong with them: missing, over a limit, unreadable."""
    if not req.outputs:
        return Collected(), []
    try:
        collected = await off_loop(
            collect_outputs,
            cwd,
            req.outputs,
            limits.max_artifact_bytes,
            req.spool,
            limits.max_artifact_files,
        )
    except WorkdirError as exc:
        return Collected(), [str(exc)]
    except OSError as exc:
        return Collected(), [f"cannot collect outputs: {exc}"]
    return collected, collected.problems(limits.max_artifact_bytes)


async def off_loop(fn: Callable[..., T], *args: object) -> T:
    """Run blocking file work in a thread; if cancelled, let the thread finish first so
    the caller's cleanup does not race it."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 30.0)
        raise
