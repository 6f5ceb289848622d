"""A result's artifacts as a blob on disk, for results too big for one message.

A blob is a directory with two files: ``data``, every artifact's bytes one after the
other, and ``manifest``, msgpack ``[[name, size, sha256], ...]`` in the same order. On
the wire (``blob_want`` / ``blob_chunk``, PROTOCOL.md) it is one byte stream, the
manifest then the data, cut into CHUNK_BYTES chunks; :class:`protocol.messages.BlobRef`
describes it. The worker writes one where the artifacts are collected
(:class:`BlobWriter`, never holding more than a chunk in memory) and serves chunks of it
(:func:`read_chunk`); the coordinator keeps what it received in the same form and reads
artifacts back from it (:func:`read_manifest`, :func:`verify`).

Artifacts up to INLINE_BYTES in all (and at most INLINE_FILES of them) still travel
inside the result message, as before: the small-result path is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from protocol.messages import CHUNK_BYTES, BlobRef

INLINE_BYTES: Final = 1024 * 1024  # artifacts up to this total go inside the result
INLINE_FILES: Final = 1000  # ... and up to this many of them
MANIFEST_MAX: Final = 64 * 1024 * 1024  # a manifest longer than this is refused
Entry = tuple[str, int, bytes]  # name, size, sha256
_decoder = msgspec.msgpack.Decoder(list[tuple[str, int, bytes]])


class BlobError(Exception):
    """A blob that cannot be read or fails its checks (the message says which)."""


@dataclass(frozen=True, slots=True)
class Spooled:
    """A blob written on this node: where, and what the result message says of it."""

    path: Path
    ref: BlobRef


def encode_manifest(entries: list[Entry]) -> bytes:
    return msgspec.msgpack.encode(entries)


def decode_manifest(data: bytes) -> list[Entry]:
    try:
        entries = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BlobError(f"bad manifest: {exc}") from None
    for name, size, sha in entries:
        if size < 0 or len(sha) != 32 or not name:
            raise BlobError(f"bad manifest entry for {name!r}")
    return entries


class BlobWriter:
    """Writes a blob directory, artifact by artifact, a chunk at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._data = open(path / "data", "wb")  # noqa: SIM115 (closed by finish/abort)
        self.entries: list[Entry] = []
        self.size = 0

    def add_bytes(self, name: str, data: bytes) -> None:
        self._data.write(data)
        self.entries.append((name, len(data), hashlib.sha256(data).digest()))
        self.size += len(data)

    def add_file(self, name: str, file: str | Path, budget: int) -> int | None:
        """Copy ``file`` in; its size, or None (nothing kept) if it is over ``budget``."""
        digest, n = hashlib.sha256(), 0
        with open(file, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                n += len(chunk)
                if n > budget:
                    self._data.truncate(self.size)
                    self._data.seek(self.size)
                    return None
                digest.update(chunk)
                self._data.write(chunk)
        self.entries.append((name, n, digest.digest()))
        self.size += n
        return n

    def finish(self) -> Spooled:
        self._data.close()
        manifest = encode_manifest(self.entries)
        (self.path / "manifest").write_bytes(manifest)
        ref = BlobRef(
            size=len(manifest) + self.size,
            manifest_bytes=len(manifest),
            manifest_sha256=hashlib.sha256(manifest).digest(),
            files=len(self.entries),
        )
        return Spooled(self.path, ref)

    def abort(self) -> None:
        self._data.close()
        shutil.rmtree(self.path, ignore_errors=True)


def read_chunk(path: Path, ref: BlobRef, offset: int, size: int = CHUNK_BYTES) -> bytes:
    """Bytes ``offset .. offset + size`` of the blob's stream (manifest, then data)."""
    out = b""
    m = ref.manifest_bytes
    try:
        if offset < m:
            with open(path / "manifest", "rb") as f:
                f.seek(offset)
                out = f.read(min(size, m - offset))
        if len(out) < size and offset + len(out) < ref.size:
            start = offset + len(out) - m
            fd = os.open(path / "data", os.O_RDONLY)
            try:
                out += os.pread(fd, size - len(out), start)
            finally:
                os.close(fd)
    except OSError as exc:
        raise BlobError(f"cannot read the blob at {path}: {exc.strerror or exc}") from None
    want = min(size, ref.size - offset)
    if len(out) != want:
        raise BlobError(f"the blob at {path} is {len(out)} bytes short at offset {offset}")
    return out


def read_manifest(path: Path) -> list[Entry]:
    try:
        data = (path / "manifest").read_bytes()
    except OSError as exc:
        raise BlobError(f"cannot read {path / 'manifest'}: {exc.strerror or exc}") from None
    return decode_manifest(data)


def verify(path: Path, entries: list[Entry]) -> None:
    """Check every artifact's size and sha256 against the data file (blocking: run it
    in a thread). Raises :class:`BlobError` naming the first artifact that fails."""
    with open(path / "data", "rb") as f:
        for name, size, sha in entries:
            digest, left = hashlib.sha256(), size
            while left:
                chunk = f.read(min(left, CHUNK_BYTES))
                if not chunk:
                    raise BlobError(f"artifact {name!r}: {left} bytes missing")
                digest.update(chunk)
                left -= len(chunk)
            if digest.digest() != sha:
                raise BlobError(f"artifact {name!r} failed its sha256 check")
        if f.read(1):
            raise BlobError("the blob has bytes beyond its manifest")


def read_artifact(path: Path, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of a blob's data file."""
    fd = os.open(path / "data", os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)
