"""Bounded capture of a stream: keep the last ``limit`` bytes, count what was dropped."""

from __future__ import annotations

import asyncio
from typing import Final

CHUNK: Final = 64 * 1024


class TailBuffer:
    """The last ``limit`` bytes written, never more in memory (plus one chunk)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.total = 0
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        self.total += len(data)
        if len(data) >= self.limit:
            self._buf[:] = data[len(data) - self.limit :] if self.limit else b""
            return
        self._buf += data
        excess = len(self._buf) - self.limit
        if excess > 0:
            del self._buf[:excess]

    def since(self, offset: int) -> tuple[int, bytes]:
        """The bytes from stream offset ``offset`` on that are still kept, and the
        offset they start at (later than ``offset`` if some were dropped)."""
        first = self.total - len(self._buf)
        start = min(max(offset, first), self.total)
        return start, bytes(self._buf[start - first :])

    @property
    def dropped(self) -> int:
        return self.total - len(self._buf)

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def text(self) -> str:
        """The kept tail as text, after a note saying how much was dropped."""
        body = bytes(self._buf).decode("utf-8", errors="replace")
        if not self.truncated:
            return body
        note = (
            f"[swarmd: output truncated, {self.dropped} of {self.total} bytes dropped; "
            f"the last {len(self._buf)} bytes follow]\n"
        )
        return note + body


async def drain(stream: asyncio.StreamReader, into: TailBuffer) -> None:
    """Read ``stream`` to EOF in chunks into ``into`` (memory stays bounded)."""
    while True:
        chunk = await stream.read(CHUNK)
        if not chunk:
            return
        into.write(chunk)


class LiveOutput:
    """A running command's stdout and stderr as they are captured, for following."""

    def __init__(self) -> None:
        self.out: TailBuffer | None = None
        self.err: TailBuffer | None = None
