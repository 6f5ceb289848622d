"""The worker's side of big results: artifacts written to a spool directory by the
executor (one blob per attempt, :mod:`swarmd.blobs`) and served chunk by chunk as the
coordinator asks (``blob_want``), until the result is acknowledged.

The spool lives beside the SQLite outbox, which keeps only the small result message
(naming the blob): an outbox row and its blob go together; at start a blob no row names
is left over from a crash and is removed.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from protocol.messages import CHUNK_BYTES, AttemptResult, BlobChunk, BlobWant, Message

from . import blobs

AttemptKey = tuple[str, str, int]


def spool_name(key: AttemptKey) -> str:
    digest = hashlib.blake2b(repr(key).encode(), digest_size=12).hexdigest()
    return f"{key[0]}-{digest}"


class BlobServer:
    def __init__(
        self,
        root: Path,
        send: Callable[[str, Message], bool],
        counters: Counter[str],
        log: logging.Logger,
    ) -> None:
        self.root = root
        self.send = send
        self.counters = counters
        self.log = log
        # The attempts that may have a blob on disk (declared outputs, or one kept from
        # before a restart): an acknowledgement of any other costs no stat.
        self._spooled: set[AttemptKey] = set()

    def path_of(self, key: AttemptKey) -> Path:
        return self.root / spool_name(key)

    def spool_for(self, key: AttemptKey) -> Path:
        """Where the attempt ``key`` writes a blob, should its artifacts need one."""
        self._spooled.add(key)
        return self.path_of(key)

    def serve(self, want: BlobWant, addr: str | None, result: AttemptResult | None) -> None:
        """Send the chunks ``want`` asks for, read from disk one at a time; an error
        chunk if this worker has no such blob (acknowledged, or lost)."""
        if addr is None or result is None or result.blob is None:
            self.counters["blob_unknown_wants"] += 1
            return  # acknowledged already (the coordinator has it) or never ours
        key = (want.task, want.subtask, want.attempt)
        ref, path = result.blob, self.path_of(key)
        for i in range(want.count):
            offset = want.offset + i * CHUNK_BYTES
            if offset >= ref.size:
                break
            try:
                data = blobs.read_chunk(path, ref, offset)
            except blobs.BlobError as exc:
                self.log.warning("attempt %s/%s#%d: %s", *key, exc)
                self.counters["blob_read_errors"] += 1
                self.send(addr, self._chunk(want, offset, b"", f"the worker lost it: {exc}"))
                return
            self.counters["blob_chunks_sent"] += 1
            self.send(addr, self._chunk(want, offset, data))

    @staticmethod
    def _chunk(want: BlobWant, offset: int, data: bytes, error: str = "") -> BlobChunk:
        return BlobChunk(
            task=want.task,
            subtask=want.subtask,
            attempt=want.attempt,
            offset=offset,
            data=data,
            sha256=hashlib.sha256(data).digest() if not error else b"",
            error=error[:4000],
        )

    def drop(self, key: AttemptKey) -> None:
        if key not in self._spooled:
            return
        self._spooled.discard(key)
        path = self.path_of(key)
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)

    def keep_only(self, keys: Iterable[AttemptKey]) -> int:
        """Remove every blob but those of ``keys`` (at start); how many went."""
        self._spooled = set(keys)
        if not self.root.is_dir():
            return 0
        keep = {spool_name(k) for k in self._spooled}
        gone = 0
        for entry in self.root.iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)
                gone += 1
        return gone
