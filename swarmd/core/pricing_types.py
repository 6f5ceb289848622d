"""What pricing reads and writes besides the peers: the demand, the settings and one
peer's estimate (shared by :mod:`swarmd.core.pricing` and :mod:`swarmd.core.pricing_llm`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from .capacity import GiB, Kind

__all__ = ["Demand", "Estimate", "PricingConfig", "gib", "names"]


@dataclass(frozen=True, slots=True)
class Demand:
    """What one ready subtask needs, reduced to what pricing looks at."""

    kind: Kind
    capability: str | None = None
    model: str | None = None  # a model profile name (or the served model's name)
    min_vram: int = 0  # bytes, on one GPU
    min_ram: int = 0  # bytes
    node: str | None = None  # pin: node name or id
    engine: str | None = None  # shell: run as a job of this engine (a node fronting it)
    est_tokens: int = 0  # llm: prompt + max_tokens estimate (see estimate_llm_tokens)
    est_seconds: float | None = None  # shell/python: a hint; None = unknown
    # (node id, seconds until this subtask's inputs would be on that node); a node not
    # listed has them at once. Added to the score: data locality.
    input_s: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class PricingConfig:
    cost_weight: float = 0.0  # seconds of estimated finish per unit of cost
    default_shell_s: float = 1.0  # run estimate for shell/python without est_seconds
    queue_slot_wait_s: float = 5.0  # how long each shell/python subtask ahead holds a slot
    max_queue: int = 64  # more subtasks ahead than this: "queue full", not a candidate
    default_tokens_per_s: float = 20.0  # llm, when the peer advertises no hardware at all
    gpu_tokens_per_s_per_gib: float = 2.5  # x the largest GPU's total VRAM in GiB
    cpu_tokens_per_s_per_core: float = 1.0  # x cores / max(1, load), when no GPU
    min_tokens_per_s: float = 1.0  # clamp for hardware estimates
    max_tokens_per_s: float = 200.0
    # Look-ahead (swarmd.core.pricing_eft): a shell/python subtask may wait in the
    # coordinator for a node whose queue is full when it would finish sooner there, if
    # that node frees within this many seconds (0: never wait; the subtask is then held
    # at most this long in all) and it beats the best node free now by this fraction.
    lookahead_max_s: float = 0.0
    lookahead_margin: float = 0.0
    # A shell/python subtask with a run estimate goes to a busy worker's queue only if a
    # slot there frees within this many seconds (by ``free_in_s``); else it waits here.
    queue_ahead_s: float = math.inf


@dataclass(frozen=True, slots=True)
class Estimate:
    """One peer's estimate for one demand (the best model profile, for llm)."""

    wait_s: float
    run_s: float
    cost: float
    score: float
    model: str | None
    basis: str


def gib(size: int) -> str:
    return f"{size / GiB:.1f} GiB"


def names(items: Iterable[str]) -> str:
    found = sorted(set(items))
    return ", ".join(found) if found else "none"
