"""Measured LLM throughput and latency per node and model profile (EWMAs), fed by
finished requests and read by pricing."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class _Ewma:
    tokens_per_s: float | None = None
    latency_s: float | None = None
    samples: int = 0


class ThroughputTracker:
    """Measured LLM throughput and latency per (node id, model profile), as EWMAs.

    ``observe`` one finished request: ``tokens`` generated (or prompt + generated, as
    long as it matches how ``Demand.est_tokens`` is counted) in ``seconds`` of wall time.
    Pass ``latency_s`` (time to the first token) when known: it is tracked on its own and
    taken out of the throughput, so pricing does not count it twice. The first sample
    sets the value; each later one moves it by ``alpha``.
    """

    def __init__(self, alpha: float = 0.3) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self.alpha = alpha
        self._stats: dict[tuple[str, str], _Ewma] = {}

    def _mix(self, old: float | None, sample: float) -> float:
        return sample if old is None else old + self.alpha * (sample - old)

    def observe(
        self,
        node_id: str,
        model: str,
        tokens: int,
        seconds: float,
        *,
        latency_s: float | None = None,
    ) -> None:
        stats = self._stats.setdefault((node_id, model), _Ewma())
        generating = seconds
        if latency_s is not None and math.isfinite(latency_s) and latency_s >= 0.0:
            stats.latency_s = self._mix(stats.latency_s, latency_s)
            generating = seconds - latency_s
        if tokens > 0 and math.isfinite(generating) and generating > 0.0:
            stats.tokens_per_s = self._mix(stats.tokens_per_s, tokens / generating)
            stats.samples += 1

    def tokens_per_s(self, node_id: str, model: str) -> float | None:
        stats = self._stats.get((node_id, model))
        return None if stats is None else stats.tokens_per_s

    def latency_s(self, node_id: str, model: str) -> float | None:
        stats = self._stats.get((node_id, model))
        return None if stats is None else stats.latency_s

    def samples(self, node_id: str, model: str) -> int:
        stats = self._stats.get((node_id, model))
        return 0 if stats is None else stats.samples

    def forget(self, node_id: str) -> None:
        """Drop everything measured on a node (it left, or restarted as a new generation)."""
        for key in [k for k in self._stats if k[0] == node_id]:
            del self._stats[key]
