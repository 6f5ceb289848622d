"""The coordinator's side of big results: fetch a result's blob from its worker in
chunks, check it, keep it on disk, and only then commit the result.

A result whose artifacts did not fit inline names a blob (``AttemptResult.blob``). While
its attempt is still the one that counts, the coordinator pulls the blob
(:class:`swarmd.core.transfer.Pull`: a window of chunks in flight, each acknowledged by
the next ``blob_want``) into ``STATE_DIR/incoming/TASK/SUBTASK.ATTEMPT/``: each chunk's
sha256 is checked on receipt (a bad one is dropped, counted and asked again), the
manifest's against the result message, and at the end every artifact's, in a thread.
Then the result is committed with the artifact names and the blob moves to
``STATE_DIR/artifacts/TASK/SUBTASK/`` (:mod:`swarmd.artifacts` reads it back). Each
chunk renews the attempt's lease, so a long transfer does not look like a dead worker.

What arrived survives a restart of either side: a lost chunk or link is asked again
after ``STALL_S``; a restarted coordinator hears the result again (the worker resends
it until acknowledged) and goes on from the chunks already on disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Final

from protocol.messages import AttemptResult, BlobChunk, BlobWant, Message

from . import blobs
from .core.transfer import Pull

ACTIVE_MAX: Final = 4  # blobs pulled at once; more wait their turn
RESTARTS_MAX: Final = 2  # a blob failing its checks is fetched again this often
RENEW_S: Final = 1.0  # chunks renew the attempt's lease at most this often
_COMPONENT: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

Key = tuple[str, str, int]
Renew = Callable[[AttemptResult], bool]  # renew the attempt's lease; False: it is over


@dataclass(frozen=True, slots=True)
class Received:
    """What became of a result's blob: its artifact names, or why it is not here."""

    names: tuple[str, ...] = ()
    error: str | None = None


Deliver = Callable[[AttemptResult, Received], None]


@dataclass(slots=True)
class _Incoming:
    head: AttemptResult
    path: Path
    pull: Pull
    manifest: bytearray = field(default_factory=bytearray)
    entries: list[blobs.Entry] | None = None
    fd: int | None = None
    active: bool = False
    verifying: bool = False
    restarts: int = 0
    renewed: float = 0.0
    began: float | None = None  # when the first chunk was taken (bandwidth)
    began_at: int = 0  # bytes taken by then
    measurable: bool = True  # no stall, resume or restart: its rate is the link's


def safe_component(value: str) -> bool:
    return bool(_COMPONENT.fullmatch(value))


def artifacts_dir(root: Path, task: str, subtask: str) -> Path:
    return root / "artifacts" / task / subtask


class Transfers:
    def __init__(
        self,
        root: Path,
        send: Callable[[str, Message], bool],  # (node id, message)
        renew: Renew,
        deliver: Deliver,
        counters: Counter[str],
        log: logging.Logger,
    ) -> None:
        self.root = root
        self.send = send
        self.renew = renew
        self.deliver = deliver
        self.counters = counters
        self.log = log
        self.incoming: dict[Key, _Incoming] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # (node id, bytes, seconds) of each whole pull: the bandwidth from that worker
        # (swarmd.core.locality.Bandwidth.observe); None: not measured.
        self.on_measured: Callable[[str, int, float], None] | None = None

    # ------------------------------------------------------------ messages in

    def on_head(self, m: AttemptResult, now: float) -> None:
        """A result naming a blob, for an attempt that still counts (sent again until
        acknowledged): start fetching it, or go on where a stalled fetch stopped."""
        key = (m.task, m.subtask, m.attempt)
        inc = self.incoming.get(key)
        if inc is None:
            problem = self._refusal(m)
            if problem is not None:
                self._fail_head(m, problem)
                return
            inc = self._open(key, m, now)
            if inc is None:
                return
            self.incoming[key] = inc
            self.counters["transfers_started"] += 1
        self.renew(m)
        self._activate()

    def on_chunk(self, m: BlobChunk, now: float) -> None:
        key = (m.task, m.subtask, m.attempt)
        inc = self.incoming.get(key)
        if inc is None or not inc.active or inc.verifying:
            self.counters["transfer_stray_chunks"] += 1
            return
        if m.error:
            self._end(key, Received(error=f"artifacts not received: {m.error}"))
            return
        if hashlib.sha256(m.data).digest() != m.sha256:
            self.counters["transfer_bad_chunks"] += 1
            self.log.warning("%s/%s#%d: chunk at %d failed its sha256 check", *key, m.offset)
            return  # not taken: asked again after the stall
        if not inc.pull.take(m.offset, len(m.data), now):
            self.counters["transfer_stray_chunks"] += 1
            return
        try:
            self._write(inc, m.offset, m.data)
        except (OSError, blobs.BlobError) as exc:
            self._end(key, Received(error=f"artifacts not received: {exc}"))
            return
        self.counters["transfer_chunks"] += 1
        self._measure(inc, now)
        if now - inc.renewed >= RENEW_S:
            inc.renewed = now
            if not self.renew(inc.head):
                self._drop(key)  # the attempt no longer counts: its result will be stale
                return
        if inc.pull.done:
            self._verify(key, inc)
        else:
            self._ask(inc)

    def _measure(self, inc: _Incoming, now: float) -> None:
        """Bytes/s from the first chunk taken to the last, for a pull that never stalled
        or started over (those measure the failure, not the link)."""
        if inc.began is None:
            inc.began, inc.began_at = now, inc.pull.have
        elif inc.pull.done and self.on_measured is not None and inc.measurable:
            self.on_measured(inc.head.node, inc.pull.have - inc.began_at, now - inc.began)

    def tick(self, now: float) -> None:
        """Ask again where a fetch stalled (a lost chunk, link or sender)."""
        for key, inc in list(self.incoming.items()):
            if inc.active and not inc.verifying and inc.pull.stalled(now):
                if not self.renew(inc.head):
                    self._drop(key)
                    continue
                self.counters["transfer_resumed"] += 1
                inc.measurable = False
                inc.pull.resume(inc.pull.have, now)
                self._ask(inc)

    # ------------------------------------------------------------ the files

    def _open(self, key: Key, m: AttemptResult, now: float) -> _Incoming | None:
        assert m.blob is not None
        path = self.root / "incoming" / m.task / f"{m.subtask}.{m.attempt}"
        inc = _Incoming(m, path, Pull(m.blob.size, last_word=now))
        try:
            path.mkdir(parents=True, exist_ok=True)
            have = self._resume_point(inc)
            inc.fd = os.open(path / "data", os.O_RDWR | os.O_CREAT, 0o600)
            os.ftruncate(inc.fd, max(0, have - m.blob.manifest_bytes))
        except (OSError, blobs.BlobError) as exc:
            self._fail_head(m, f"cannot store artifacts: {exc}")
            return None
        if have:
            inc.measurable = False
            self.counters["transfer_resumed"] += 1
            self.log.info("%s/%s#%d: going on from %d of %d bytes", *key, have, m.blob.size)
        inc.pull.resume(have, now)
        return inc

    def _resume_point(self, inc: _Incoming) -> int:
        """Bytes already here from before a restart (the chunks written in order)."""
        ref = inc.head.blob
        assert ref is not None
        try:
            manifest = (inc.path / "manifest").read_bytes()
            data = os.stat(inc.path / "data").st_size
        except OSError:
            shutil.rmtree(inc.path, ignore_errors=True)
            inc.path.mkdir(parents=True, exist_ok=True)
            return 0
        if hashlib.sha256(manifest).digest() != ref.manifest_sha256:
            return 0
        inc.manifest[:] = manifest
        inc.entries = blobs.decode_manifest(manifest)
        have = min(ref.size, ref.manifest_bytes + data)
        return have if have == ref.size else have - have % inc.pull.chunk

    def _write(self, inc: _Incoming, offset: int, data: bytes) -> None:
        ref = inc.head.blob
        assert ref is not None and inc.fd is not None
        m = ref.manifest_bytes
        if offset < m:
            inc.manifest[offset:] = data[: m - offset]
            if len(inc.manifest) == m:
                self._manifest_done(inc)
        if offset + len(data) > m:
            start = max(offset, m)
            os.pwrite(inc.fd, data[start - offset :], start - m)

    def _manifest_done(self, inc: _Incoming) -> None:
        ref = inc.head.blob
        assert ref is not None
        manifest = bytes(inc.manifest)
        if hashlib.sha256(manifest).digest() != ref.manifest_sha256:
            raise blobs.BlobError("the manifest failed its sha256 check")
        entries = blobs.decode_manifest(manifest)
        if len(entries) != ref.files or sum(e[1] for e in entries) + len(manifest) != ref.size:
            raise blobs.BlobError("the manifest does not match the result")
        for name, _, _ in entries:
            if not _safe_name(name):
                raise blobs.BlobError(f"artifact name {name!r} is not a relative path")
        inc.entries = entries
        (inc.path / "manifest").write_bytes(manifest)

    # ------------------------------------------------------------ flow

    def _activate(self) -> None:
        active = sum(1 for i in self.incoming.values() if i.active)
        for inc in self.incoming.values():
            if active >= ACTIVE_MAX:
                return
            if not inc.active:
                inc.active = True
                active += 1
                if inc.pull.done:
                    self._verify(self._key(inc), inc)
                else:
                    self._ask(inc)

    def _ask(self, inc: _Incoming) -> None:
        run = inc.pull.wants()
        if run is not None:
            h = inc.head
            want = BlobWant(
                task=h.task, subtask=h.subtask, attempt=h.attempt, offset=run[0], count=run[1]
            )
            self.send(h.node, want)

    def _verify(self, key: Key, inc: _Incoming) -> None:
        """Every artifact's sha256, off the event loop; then deliver (or fetch again)."""
        inc.verifying = True
        if inc.fd is not None:
            os.close(inc.fd)
            inc.fd = None
        task = asyncio.get_running_loop().create_task(self._check(key, inc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, key: Key, inc: _Incoming) -> None:
        try:
            if inc.entries is None:
                raise blobs.BlobError("no manifest")
            await asyncio.to_thread(blobs.verify, inc.path, inc.entries)
        except (OSError, blobs.BlobError) as exc:
            self.counters["transfer_failed_checks"] += 1
            self.log.warning("%s/%s#%d: %s", *key, exc)
            if self.incoming.get(key) is not inc:
                return
            if inc.restarts >= RESTARTS_MAX:
                self._end(key, Received(error=f"artifacts not received: {exc}"))
                return
            inc.restarts += 1
            self._restart(inc)
            return
        if self.incoming.get(key) is inc:
            assert inc.entries is not None
            self.counters["transfers_done"] += 1
            self._end(key, Received(names=tuple(e[0] for e in inc.entries)))

    def _restart(self, inc: _Incoming) -> None:
        shutil.rmtree(inc.path, ignore_errors=True)
        inc.path.mkdir(parents=True, exist_ok=True)
        inc.manifest.clear()
        inc.entries = None
        inc.fd = os.open(inc.path / "data", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        inc.verifying = False
        inc.measurable = False
        inc.pull.resume(0, inc.pull.last_word)
        self._ask(inc)

    def _end(self, key: Key, received: Received) -> None:
        inc = self.incoming.pop(key)
        if inc.fd is not None:
            os.close(inc.fd)
        if received.error:
            self.log.warning("%s/%s#%d: %s", *key, received.error)
        self.deliver(inc.head, received)
        self._activate()

    def _drop(self, key: Key) -> None:
        inc = self.incoming.pop(key, None)
        if inc is not None:
            if inc.fd is not None:
                os.close(inc.fd)
            shutil.rmtree(inc.path, ignore_errors=True)
            self._activate()

    def _fail_head(self, m: AttemptResult, problem: str) -> None:
        self.log.warning("%s/%s#%d: %s", m.task, m.subtask, m.attempt, problem)
        self.deliver(m, Received(error=f"artifacts not received: {problem}"))

    @staticmethod
    def _key(inc: _Incoming) -> Key:
        return (inc.head.task, inc.head.subtask, inc.head.attempt)

    @staticmethod
    def _refusal(m: AttemptResult) -> str | None:
        ref = m.blob
        assert ref is not None
        if not (safe_component(m.task) and safe_component(m.subtask)):
            return "a task or subtask id that cannot name a directory"
        if ref.manifest_bytes > blobs.MANIFEST_MAX or ref.manifest_bytes > ref.size:
            return f"a manifest of {ref.manifest_bytes} bytes (the limit is {blobs.MANIFEST_MAX})"
        return None

    # ------------------------------------------------------------ after the commit

    def install(self, m: AttemptResult) -> None:
        """The result was committed: its blob becomes the subtask's artifacts."""
        source = self.root / "incoming" / m.task / f"{m.subtask}.{m.attempt}"
        target = artifacts_dir(self.root, m.task, m.subtask)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(source, target)

    def discard(self, m: AttemptResult) -> None:
        shutil.rmtree(self.root / "incoming" / m.task / f"{m.subtask}.{m.attempt}", True)

    def forget(self, task: str) -> None:
        """The task is forgotten (retention): its blobs go, fetched or not."""
        for key in [k for k in self.incoming if k[0] == task]:
            self._drop(key)
        if safe_component(task):
            for where in ("incoming", "artifacts"):
                shutil.rmtree(self.root / where / task, ignore_errors=True)


def _safe_name(name: str) -> bool:
    path = PurePosixPath(name)
    return (
        not path.is_absolute()
        and ".." not in path.parts
        and "\\" not in name
        and "\x00" not in name
        and path.as_posix() == name
        and name not in ("", ".")
    )
