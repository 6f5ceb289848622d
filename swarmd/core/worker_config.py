"""What a worker is configured with, and the check of a dispatch's resource needs
against this node (pure; :mod:`swarmd.core.worker` admits dispatches with them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .jobspec.wording import format_size

__all__ = ["SHELL_DISABLED", "WorkerConfig", "lacking_resources"]

SHELL_DISABLED: Final = "shell and python subtasks are disabled on this node (allow_shell = false)"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    slots: int = 4  # shell/python attempts running at once
    queue: int | None = None  # shell/python attempts held beyond the slots; None: adaptive
    queue_hold_s: float = 0.05  # adaptive: hold about this much run time per slot queued
    queue_depth_max: int = 4  # adaptive: at most this many queued per slot
    run_alpha: float = 0.2  # adaptive: weight of each finished attempt in the run time
    allow_shell: bool = True
    models: Mapping[str, int] = field(default_factory=dict)  # profile -> max_concurrency
    resend_first_s: float = 2.0
    resend_max_s: float = 30.0
    min_progress_s: float = 0.2
    start_notice_s: float = 0.05  # a start is told this long after it, if still running
    queued_notice_s: float = 1.0  # a queued attempt is first told of this soon
    # This node's resources (None: not measured, not checked): a dispatch that needs
    # more than the node has is refused, whatever its coordinator believed.
    ram_total: int | None = None  # bytes
    vram_max: int | None = None  # the largest GPU's memory, bytes (0: no GPU)
    # The engines this node fronts ([engines.NAME]) -> jobs held at once: a shell
    # attempt naming one runs as its job, outside the slots (swarmd/executors/engine.py).
    engines: Mapping[str, int] = field(default_factory=dict)

    @property
    def queue_limit(self) -> int:
        """The queue configured, or the adaptive queue's least (one per slot)."""
        return max(0, self.slots if self.queue is None else self.queue)


def lacking_resources(config: WorkerConfig, spec: Mapping[str, Any]) -> str | None:
    """What the subtask needs beyond this node's memory or GPUs, if anything."""
    checks = (
        ("min_ram", config.ram_total, "memory"),
        ("min_vram", config.vram_max, "GPU memory on its largest GPU"),
    )
    for key, have, what in checks:
        need = spec.get(key, 0)
        if have is not None and isinstance(need, int) and need > have:
            return f"{key} {format_size(need)}: this node has {format_size(have)} of {what}"
    return None
