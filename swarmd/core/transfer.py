"""Flow control of one blob fetched in chunks (sans-I/O): what to ask for, and when.

The receiver pulls: it asks its sender for a run of chunks from an offset
(``blob_want``), which also acknowledges everything before that offset. At most
``window`` chunks are in flight; when half of them have arrived, the next run is asked
for, so the sender is never idle for a round trip and the receiver never holds more
than a window. Chunks are taken in order only (one link keeps order; a chunk out of
order or twice is dropped). No chunk for ``stall_s`` means one was lost (a dropped
connection, a restarted sender): everything from the last one taken is asked again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocol.messages import CHUNK_BYTES

WINDOW: Final = 8  # chunks in flight per transfer
STALL_S: Final = 3.0


@dataclass(slots=True)
class Pull:
    size: int  # bytes of the whole blob
    have: int = 0  # bytes taken, in order
    asked: int = 0  # end of what was asked for
    last_word: float = 0.0  # when a chunk last arrived (or the pull began or resumed)
    window: int = WINDOW
    stall_s: float = STALL_S
    chunk: int = CHUNK_BYTES

    @property
    def done(self) -> bool:
        return self.have >= self.size

    def wants(self) -> tuple[int, int] | None:
        """The run of chunks (offset, count) to ask for now, if any."""
        if self.asked >= self.size:
            return None
        in_flight = -(-(self.asked - self.have) // self.chunk)
        if in_flight > self.window // 2:
            return None
        offset = self.asked
        count = min(self.window - in_flight, -(-(self.size - offset) // self.chunk))
        self.asked = min(self.size, offset + count * self.chunk)
        return offset, count

    def take(self, offset: int, length: int, now: float) -> bool:
        """A chunk arrived: True if it is the next one (then it is taken), else it is
        dropped (a duplicate, or out of order after a loss)."""
        expected = min(self.chunk, self.size - self.have)
        if offset != self.have or length != expected:
            return False
        self.have += length
        self.last_word = now
        return True

    def stalled(self, now: float) -> bool:
        return not self.done and now - self.last_word > self.stall_s

    def resume(self, have: int, now: float) -> None:
        """Ask again from ``have`` (a multiple of the chunk size): after a stall, a
        restart of either side, or a blob that failed its checks (``have`` = 0)."""
        self.have = self.asked = have
        self.last_word = now
