"""Measured LLM throughput and latency per node and model profile (EWMAs), fed by
finished requests: a coordinator keeps one for the requests it sent (read first by
pricing), and each worker one for the requests its endpoints served (gossiped with its
model profiles, so every coordinator sees them)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

HERE = ""  # the node id a worker keeps the measurements of its own endpoints under


@dataclass(slots=True)
class _Ewma:
    tokens_per_s: float | None = None
    latency_s: float | None = None
    samples: int = 0


class ThroughputTracker:
    """Measured LLM throughput and latency per (node id, model profile), as EWMAs.

    ``observe`` one finished request: ``tokens`` generated (completion tokens: the
    number people call tokens/s) in ``seconds`` of wall time. Pass ``latency_s`` (time
    to the first token) when known: it is tracked on its own and taken out of the
    throughput, so pricing does not count it twice. The first sample sets the value;
    each later one moves it by ``alpha``. ``observe_usage`` takes an llm result's usage.
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

    def observe_usage(
        self,
        node_id: str,
        model: str,
        usage: Mapping[str, Any],
        seconds: float | None = None,
        latency_s: float | None = None,
    ) -> bool:
        """One finished llm request from its usage (``completion_tokens``, ``seconds``,
        ``ttft_s``, as the llm executor reports them; ``seconds``/``latency_s`` given
        here win). False if it says too little to learn from."""
        wall = _number(usage.get("seconds") if seconds is None else seconds)
        if wall is None:
            return False
        first = _number(usage.get("ttft_s") if latency_s is None else latency_s)
        tokens = _number(usage.get("completion_tokens")) or 0.0
        self.observe(node_id, model, int(tokens), wall, latency_s=first)
        return True

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


def _number(value: Any) -> float | None:
    """A finite number >= 0 as a float, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None
