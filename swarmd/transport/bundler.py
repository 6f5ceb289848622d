"""Work messages held per peer until the end of the event loop's turn, then sent as
bundles: one frame (and one wake-up of the peer) for all a turn had for that peer.

Shared by every transport: it calls ``send_frame(addr, frame) -> bool`` for each frame,
halving a bundle until its frame fits MAX_FRAME_BYTES, and hands what could not be sent
to ``undelivered(addr, items)``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from protocol import MAX_FRAME_BYTES, codec
from protocol.messages import Bundle, WorkItem

BUNDLE_MAX = 4096  # items in one Bundle (the protocol's limit)

SendFrame = Callable[[str, bytes], bool]
Undelivered = Callable[[str, list[WorkItem]], None]


class Bundler:
    def __init__(self, send_frame: SendFrame, undelivered: Undelivered, counters: Counter[str]):
        self._send_frame = send_frame
        self._undelivered = undelivered
        self._counters = counters
        self._pending: dict[str, list[WorkItem]] = {}
        self._flush_due = False

    def hold(self, addr: str, item: WorkItem) -> None:
        """Send ``item`` to ``addr`` at the end of this turn, with the turn's others."""
        items = self._pending.setdefault(addr, [])
        items.append(item)
        if len(items) >= BUNDLE_MAX:
            self._flush_addr(addr)
        elif not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send everything held now."""
        self._flush_due = False
        for addr in list(self._pending):
            self._flush_addr(addr)

    def _flush_addr(self, addr: str) -> None:
        items = self._pending.pop(addr, [])
        if items:
            undelivered = self._send_items(addr, items)
            if undelivered:
                self._undelivered(addr, undelivered)

    def _send_items(self, addr: str, items: list[WorkItem]) -> list[WorkItem]:
        """Send ``items`` in one frame (halved until each part fits); what did not go."""
        frame = codec.encode(items[0] if len(items) == 1 else Bundle(items=items))
        if len(frame) > MAX_FRAME_BYTES and len(items) > 1:
            half = len(items) // 2
            return self._send_items(addr, items[:half]) + self._send_items(addr, items[half:])
        if self._send_frame(addr, frame):
            self._counters["sent_items"] += len(items)
            return []
        return items
