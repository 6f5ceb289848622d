"""A task's committed artifacts read back in pieces, for ``swarmctl result --out``
(``artifact`` requests): small ones from the SQLite ``artifacts`` table, those that came
in chunks from their blob under ``STATE_DIR/artifacts/`` (:mod:`swarmd.transfers`).
A reply carries at most ``max_bytes`` (≤ CHUNK_BYTES) of data, however big the artifacts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from protocol.messages import ArtifactPiece, ArtifactReply, ArtifactRequest

from . import blobs
from .store import Store
from .transfers import artifacts_dir, safe_component

CACHED = 16  # manifests of blobs kept decoded


@dataclass(frozen=True, slots=True)
class _Item:
    name: str
    size: int
    sha256: bytes
    at: int  # offset in the blob's data (blob), or -1: ``data`` holds it
    data: bytes = b""


class ArtifactReader:
    def __init__(self, store: Store, root: Path) -> None:
        self.store = store
        self.root = root
        self._cache: dict[tuple[str, str], list[_Item]] = {}

    def listing(self, task: str, subtask: str) -> list[_Item]:
        if not (safe_component(task) and safe_component(subtask)):
            return []
        path = artifacts_dir(self.root, task, subtask)
        if (path / "manifest").exists():
            cached = self._cache.get((task, subtask))
            if cached is not None:
                return cached
            items, at = [], 0
            for name, size, sha in blobs.read_manifest(path):
                items.append(_Item(name, size, sha, at))
                at += size
            if len(self._cache) >= CACHED:
                self._cache.pop(next(iter(self._cache)))
            self._cache[(task, subtask)] = items
            return items
        rows = self.store.db.execute(
            "SELECT name, data FROM artifacts WHERE task = ? AND subtask = ? ORDER BY name",
            (task, subtask),
        )
        return [
            _Item(name, len(data), hashlib.sha256(data).digest(), -1, bytes(data))
            for name, data in rows
        ]

    def read(self, request: ArtifactRequest) -> ArtifactReply:
        items = self.listing(request.task, request.subtask)
        path = artifacts_dir(self.root, request.task, request.subtask)
        pieces: list[ArtifactPiece] = []
        index, offset, budget = request.index, request.offset, request.max_bytes
        while index < len(items) and (budget > 0 or not pieces):
            item = items[index]
            n = min(budget, item.size - offset)
            if item.at < 0:
                data = item.data[offset : offset + n]
            else:
                data = blobs.read_artifact(path, item.at + offset, n) if n else b""
                if len(data) < n:
                    raise blobs.BlobError(f"artifact {item.name!r} is cut short on disk")
            pieces.append(ArtifactPiece(item.name, item.size, item.sha256, offset, data))
            budget -= len(data)
            offset += len(data)
            if offset >= item.size:
                index, offset = index + 1, 0
            if len(pieces) >= 4096:
                break
        return ArtifactReply(pieces=pieces, index=index, offset=offset, done=index >= len(items))

    def inline_total(self, task: str) -> int | None:
        """Bytes of the task's artifacts if all are inline (None: some are blobs)."""
        if safe_component(task) and (self.root / "artifacts" / task).exists():
            return None
        row = self.store.db.execute(
            "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM artifacts WHERE task = ?", (task,)
        ).fetchone()
        return int(row[0])
