"""A job's ``inputs``, read from the submit directory to travel with the job.

Nothing outside the submit directory leaves this machine:

* A symbolic link is followed only when its resolved target stays inside the submit
  directory — a link named as an input, a link in a directory being shipped, and a
  link among an input's parent directories alike. One that leads outside is refused
  with its path and where it points; so is a link loop.
* Only regular files and directories are read. A FIFO, a socket or a device is
  refused, and so is a file on ``/proc``, ``/sys`` or ``/dev`` (pseudo files: their
  sizes lie and their contents describe this machine, e.g. ``/proc/self/environ``).
* Each file is opened without following a last-moment symlink, checked again to be a
  regular file once open, and read no further than the per-file limit, so a file
  swapped or grown after the walk is refused rather than read.

Every problem is a :class:`JobError` naming the subtask (``swarmctl submit`` exits 2).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from swarmd.core.jobspec import JobError, JobSpec, check_input_sizes
from swarmd.core.jobspec.errors import Problems
from swarmd.core.jobspec.wording import format_size, quote

MAX_INPUT_BYTES = 12 * 1024 * 1024  # all shipped files of a job: they travel in one frame
MAX_INPUT_FILE_BYTES = 12 * 1024 * 1024
PSEUDO_FILE_SYSTEMS = (Path("/proc"), Path("/sys"), Path("/dev"))
_OPEN_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | os.O_CLOEXEC
)


class _Refused(Exception):
    """An input that must not be shipped; the message names it."""


def collect_inputs(job: JobSpec, root: Path) -> dict[str, bytes]:
    """Read every ``inputs`` path of ``job`` from the directory ``root``: the files by
    their path relative to ``root`` as the job names them. JobError naming what is
    wrong: a path leading outside ``root``, a special file, a missing or oversized one."""
    walk = _Walk(root)
    problems = Problems(None)
    for pos, spec in enumerate(job.subtasks):
        for rel in spec.inputs:
            for why in walk.add(rel):
                problems.add(why, spec.id, "inputs", pos)
    problems.raise_if_any()
    check_input_sizes(job, walk.sizes, MAX_INPUT_BYTES, MAX_INPUT_FILE_BYTES)
    files: dict[str, bytes] = {}
    total = 0
    for key, path in walk.paths.items():
        files[key] = _read(key, path, MAX_INPUT_FILE_BYTES)
        total += len(files[key])
        if total > MAX_INPUT_BYTES:
            raise JobError(
                f"input files grew past the limit of {format_size(MAX_INPUT_BYTES)} while "
                "being read",
                key="inputs",
            )
    return files


class _Walk:
    """The files of a job's inputs: their sizes (for the limits) and real paths."""

    def __init__(self, root: Path) -> None:
        self.top = root.resolve()  # the submit directory, its own links resolved
        self.sizes: dict[str, int | None] = {}  # as check_input_sizes wants them
        self.paths: dict[str, Path] = {}  # key -> the file's resolved path
        self.taken = 0  # files taken so far, counting each time one is named

    def add(self, rel: str) -> list[str]:
        """Take one input path as written in the job (relative, no ``..``: checked);
        why (parts of) it cannot be shipped."""
        try:
            real = self._resolve(self.top / rel, rel)
            if not real.is_relative_to(self.top):
                return [self._escape(rel, real)]
            info = _stat(rel, real)
            if info is None:
                self.sizes[rel] = None  # reported as missing by check_input_sizes
            elif not stat.S_ISDIR(info.st_mode):
                self._file(rel, real, info)
            else:
                _not_pseudo(rel, real)
                before = self.taken
                refused = self._directory(_norm(rel), real)
                if self.taken == before and not refused:
                    self.sizes[rel] = 0
                return refused
        except _Refused as exc:
            return [str(exc)]
        return []

    def _directory(self, key: str, real: Path) -> list[str]:
        """Take every file below the directory ``real`` (``key`` in the job); why the
        ones refused were."""
        refused: list[str] = []
        # depth first, without recursion: trees can be deep
        todo: list[tuple[str, Path, tuple[Path, ...]]] = [(key, real, (real,))]
        while todo:
            at, directory, chain = todo.pop()
            try:
                with os.scandir(directory) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                refused.append(f"{quote(at)}: cannot read: {exc.strerror or exc}")
                continue
            for entry in entries:
                child = entry.name if at == "." else f"{at}/{entry.name}"
                try:
                    below = self._entry(child, entry, chain)
                except _Refused as exc:
                    refused.append(str(exc))
                    continue
                if below is not None:
                    todo.append((child, below, (*chain, below)))
        return refused

    def _entry(self, key: str, entry: os.DirEntry[str], chain: tuple[Path, ...]) -> Path | None:
        """Take one entry of a directory being walked (``chain``: the directories down
        to it): a file is taken; a directory to walk is returned."""
        target = Path(entry.path)
        if entry.is_symlink():
            target = self._followed_link(key, target)
        info = _stat(key, target)
        if info is None:
            return None  # a dangling link inside the tree: nothing to ship
        if not stat.S_ISDIR(info.st_mode):
            self._file(key, target, info)
            return None
        if target in chain:
            raise _Refused(f"{quote(key)} is a symbolic link loop: not followed")
        _not_pseudo(key, target)
        return target

    def _file(self, key: str, real: Path, info: os.stat_result) -> None:
        if not stat.S_ISREG(info.st_mode):
            raise _Refused(
                f"{quote(key)} is {_kind(info.st_mode)}: only regular files and "
                "directories can be inputs"
            )
        _not_pseudo(key, real)
        self.sizes[key], self.paths[key] = info.st_size, real
        self.taken += 1

    def _followed_link(self, key: str, link: Path) -> Path:
        """The target of the link at ``key`` if it stays inside the submit directory."""
        target = self._resolve(link, key)
        if not target.is_relative_to(self.top):
            raise _Refused(_link_message(key, link))
        return target

    def _escape(self, rel: str, real: Path) -> str:
        """Why the input ``rel`` (resolving to ``real``) leads outside: the first link
        on its way that does, with where it points."""
        here = self.top
        parts = PurePosixPath(rel.replace("\\", "/")).parts
        for i, part in enumerate(parts):
            here = here / part
            if here.is_symlink():
                shown = "/".join(parts[: i + 1])
                target = self._resolve(here, shown)
                if not target.is_relative_to(self.top):
                    return _link_message(shown, here)
                here = target
        return f"{quote(rel)} resolves to {quote(str(real))}, outside the submit directory"

    @staticmethod
    def _resolve(path: Path, key: str) -> Path:
        try:
            return path.resolve()
        except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13)
            raise _Refused(f"{quote(key)} is a symbolic link loop: not followed") from None


def _link_message(key: str, link: Path) -> str:
    try:
        points = os.readlink(link)
    except OSError:
        points = str(link.resolve())
    return (
        f"{quote(key)} is a symbolic link to {quote(points)}, outside the submit directory: "
        "links are followed only when they stay inside it"
    )


def _not_pseudo(key: str, real: Path) -> None:
    for pseudo in PSEUDO_FILE_SYSTEMS:
        if real.is_relative_to(pseudo):
            raise _Refused(
                f"{quote(key)} is on {pseudo}, a pseudo file system describing this "
                "machine: it cannot be an input"
            )


def _stat(key: str, path: Path) -> os.stat_result | None:
    """``os.stat``, None when there is nothing there."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Refused(f"{quote(key)}: cannot read: {exc.strerror or exc}") from None


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def _read(key: str, path: Path, limit: int) -> bytes:
    """The file's bytes: opened without following a link, a regular file once open,
    and no more than ``limit`` bytes of it."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise JobError(f"{quote(key)}: cannot read: {exc.strerror or exc}", key="inputs") from None
    with open(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise JobError(f"{quote(key)} is {_kind(mode)}, not a regular file", key="inputs")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise JobError(
            f"{quote(key)} grew past the per-file limit of {format_size(limit)} while being read",
            key="inputs",
        )
    return data


def _norm(path: str) -> str:
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts) or "."
