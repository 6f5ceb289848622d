"""The worker's engine jobs: which engines this node fronts, how many jobs each holds
at once (``[engines.NAME] max_jobs``), and why a dispatch naming one is refused. An
engine attempt runs as a job of the engine, outside the node's shell slots."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping


class EngineJobs:
    def __init__(self) -> None:
        self.held: Counter[str] = Counter()  # engine -> its attempts held here

    def refusal(
        self, limits: Mapping[str, int], kind: str, engine: object, allow_shell: bool
    ) -> str | None:
        """Why a dispatch naming ``engine`` is refused (None: it is taken)."""
        limit = limits.get(engine) if isinstance(engine, str) else None
        if limit is None:
            return f"no engine {engine!r} on this node"
        if kind != "shell":
            return f"engines run shell subtasks only, not {kind}"
        if not allow_shell:
            return "shell subtasks are disabled on this node (allow_shell = false)"
        if self.held[str(engine)] >= limit:
            return f"engine {engine}: {limit} jobs held (max_jobs)"
        return None
