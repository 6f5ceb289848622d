"""Data locality (sans-I/O): how long a subtask's inputs would take to reach each node,
from their size and the bandwidth measured on real transfers.

A subtask's inputs are held by one node: the coordinator, which keeps the job's input
files and receives every result's artifacts (:mod:`swarmd.transfers`), and ships the
inputs inside the dispatch. Moving ``n`` bytes to node ``p`` takes ``n / bandwidth`` of
the link between them; on the holder itself it takes nothing. :func:`input_s` turns that
into ``Demand.input_s`` (node id -> seconds), which pricing adds where it exceeds the
wait for a slot: a subtask with big inputs stays where they are unless moving them
costs less than what another node saves.

:class:`Bandwidth` keeps, per peer, an exponentially weighted mean of the bytes/s of
the real transfers between this node and that peer (the coordinator's chunked pulls of
big results, see :mod:`swarmd.transfers`). Transfers smaller than ``min_bytes`` are not
counted (they measure round trips, not bandwidth). A peer never measured is taken at
``default_bytes_per_s``. Between two other nodes the slower of their links to this node
stands for the link between them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["DEFAULT_BYTES_PER_S", "Bandwidth", "input_s"]

DEFAULT_BYTES_PER_S: Final = 100e6  # about a gigabit Ethernet link, until measured
MIN_BYTES: Final = 256 * 1024  # smaller transfers are round trips, not bandwidth
ALPHA: Final = 0.3  # weight of the newest measurement
MIN_INPUT_BYTES: Final = 64 * 1024  # inputs smaller than this cost nothing to price


@dataclass(slots=True)
class Bandwidth:
    """Measured bytes/s between this node and each peer."""

    default_bytes_per_s: float = DEFAULT_BYTES_PER_S
    min_bytes: int = MIN_BYTES
    alpha: float = ALPHA
    _rate: dict[str, float] = field(default_factory=dict)
    _count: dict[str, int] = field(default_factory=dict)

    def observe(self, node_id: str, nbytes: int, seconds: float) -> bool:
        """A transfer of ``nbytes`` with ``node_id`` took ``seconds``: True if counted."""
        if nbytes < self.min_bytes or not math.isfinite(seconds) or seconds <= 0.0:
            return False
        rate = nbytes / seconds
        old = self._rate.get(node_id)
        self._rate[node_id] = rate if old is None else old + self.alpha * (rate - old)
        self._count[node_id] = self._count.get(node_id, 0) + 1
        return True

    def measured(self, node_id: str) -> float | None:
        return self._rate.get(node_id)

    def bytes_per_s(self, a: str, b: str, me: str) -> float:
        """The bandwidth between ``a`` and ``b`` as this node (``me``) knows it."""
        rates = [self._rate.get(n, self.default_bytes_per_s) for n in (a, b) if n != me]
        return min(rates) if rates else math.inf

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Per peer: the mean bytes/s and how many transfers it is from (stats)."""
        return {n: {"bytes_per_s": r, "transfers": self._count[n]} for n, r in self._rate.items()}


def input_s(
    nbytes: int, holder: str, nodes: Iterable[str], bandwidth: Bandwidth, me: str
) -> tuple[tuple[str, float], ...]:
    """``Demand.input_s``: for each node but the holder, seconds to move ``nbytes`` there
    (empty when the inputs are too small to matter)."""
    if nbytes < MIN_INPUT_BYTES:
        return ()
    out = []
    for node in nodes:
        if node != holder:
            out.append((node, nbytes / bandwidth.bytes_per_s(holder, node, me)))
    return tuple(out)
