"""The engines this node fronts (``[engines.NAME]``): their adapters, their capacity
read every ``poll`` and gossiped as ``engines``, and where their attempts run (a
directory per attempt under the engine's shared working directory)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config_engines import EngineConfig
from .engines import Engine, EngineCapacity, EngineError
from .engines.registry import build

CAPACITY_TIMEOUT_S = 30.0
Publish = Callable[[str, Any], object]


def _build(cfg: EngineConfig) -> Engine:
    try:
        return build(cfg)
    except ImportError as exc:
        raise ValueError(f"engine {cfg.name}: kind {cfg.kind!r} is not available: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"engine {cfg.name}: {exc}") from None


class EngineHost:
    def __init__(
        self,
        configs: Sequence[EngineConfig],
        state_dir: Path,
        log: logging.Logger,
        engines: dict[str, Engine] | None = None,  # tests: adapters given
    ) -> None:
        self.configs = {c.name: c for c in configs}
        self.log = log
        # A ValueError names the engine whose settings its adapter refused.
        self.engines: dict[str, Engine] = engines or {c.name: _build(c) for c in configs}
        self.workdirs = {c.name: c.workdir_in(state_dir) for c in configs}
        self.capacity: dict[str, EngineCapacity | None] = {c.name: None for c in configs}
        self.errors: dict[str, str | None] = {c.name: None for c in configs}

    @property
    def max_jobs(self) -> dict[str, int]:
        return {name: c.max_jobs for name, c in self.configs.items()}

    def values(self) -> list[dict[str, Any]]:
        """The gossiped ``engines``: one entry per engine (``ok`` false while its
        capacity cannot be read; ``error`` says why)."""
        out = []
        for name, cfg in self.configs.items():
            cap = self.capacity.get(name)
            entry: dict[str, Any] = {
                "name": name,
                "kind": cfg.kind,
                "ok": cap is not None,
                "overflow_only": cfg.overflow_only,
                "cpus_idle": 0 if cap is None else cap.cpus_idle,
                "gpus_idle": 0 if cap is None else cap.gpus_idle,
                "mem_idle_mb": 0 if cap is None else cap.mem_idle_mb,
                "running": 0 if cap is None else cap.running,
                "queue": 0 if cap is None else cap.queued,
                "est_wait_s": 0.0 if cap is None else round(max(0.0, cap.est_wait_s), 3),
            }
            if self.errors.get(name):
                entry["error"] = str(self.errors[name])[:200]
            out.append(entry)
        return out

    async def poll(self, name: str) -> None:
        engine = self.engines[name]
        try:
            cap = await asyncio.wait_for(engine.capacity(), CAPACITY_TIMEOUT_S)
        except Exception as exc:  # an adapter's bug too: the engine shows as not answering
            why = str(exc) or type(exc).__name__
            if self.errors.get(name) != why:
                unexpected = not isinstance(exc, EngineError | TimeoutError | OSError)
                self.log.warning(
                    "engine %s: cannot read its capacity: %s", name, why, exc_info=unexpected
                )
            self.capacity[name], self.errors[name] = None, why
            return
        if self.errors.get(name) is not None:
            self.log.info("engine %s answers again", name)
        self.capacity[name], self.errors[name] = cap, None

    async def loop(self, publish: Publish) -> None:
        """Read every engine's capacity (each at its ``poll``) and gossip the lot."""
        due = {name: 0.0 for name in self.configs}
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            ready = [name for name, at in due.items() if at <= now]
            if ready:
                await asyncio.gather(*(self.poll(name) for name in ready))
                for name in ready:
                    due[name] = loop.time() + self.configs[name].poll_s
                publish("engines", self.values())
            await asyncio.sleep(max(0.05, min(due.values()) - loop.time()))

    async def close(self) -> None:
        for engine in self.engines.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(engine.close(), 5)
