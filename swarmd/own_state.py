"""What this node gossips about itself: its hardware, its model endpoints (configured
and found on local servers, with what was measured of the requests they served and
those running now), its policy (slots, shell, cost), whether it is draining, what it runs
on (``power``) and why it takes no new work (``paused``, :mod:`swarmd.presence`).

:meth:`OwnState.values` is the full set, published when the gossip state is (re)built;
the probe loops re-measure hardware and model endpoints and publish what changed, and
:meth:`OwnState.models_loop` re-publishes the model profiles while their measurements
or requests in flight change (at most every MODEL_STATS_PUBLISH_S).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec

from protocol.messages import Hardware, ModelProfile

from .config import Config, ModelConfig
from .core.presence import Decision, PausedReason, Power, paused_reason
from .core.throughput import HERE, ThroughputTracker
from .hardware import HardwareProbe

MODEL_PROBE_INTERVAL_S = 15.0
MODEL_PROBE_TIMEOUT_S = 10.0
HARDWARE_PROBE_TIMEOUT_S = 30.0
MODEL_STATS_PUBLISH_S = 1.0  # measurements and requests in flight go out this often

Publish = Callable[[str, Any], object]  # (key, value): set this node's gossiped key


class Serving(Protocol):
    """The worker, as far as the gossiped model profiles need it."""

    measured: ThroughputTracker

    def model_use_by(self) -> dict[str, dict[str, int]]: ...
    def set_models(self, models: dict[str, tuple[str, str, int]]) -> None: ...


class OwnState:
    def __init__(self, config: Config, probe: HardwareProbe, log: logging.Logger) -> None:
        self.config = config
        self.probe = probe
        self.log = log
        self.hardware: Hardware | None = None  # measured by measure_hardware()
        self.model_latency_ms: dict[str, float | None] = {}
        self.draining = False  # swarmctl drain, or SIGTERM: no new work
        self.refusing: str | None = None  # why no new work besides (the disk is full)
        self.sleeping = False  # the machine suspends (swarmd/sleep.py): no new work
        self.power: Power | None = None  # as last gossiped (swarmd.presence); None: unread
        self.presence = Decision()  # what the power/presence policy says now
        self.probed: tuple[ModelConfig, ...] = ()  # found on local servers (model_probe)
        self.serving: Serving | None = None  # the worker, once built

    async def measure_hardware(self) -> None:
        self.hardware = await asyncio.to_thread(self.probe.probe)

    def resources(self) -> tuple[int | None, int | None]:
        """This node's RAM and its largest GPU's VRAM (0: none), bytes: what its worker
        checks each dispatch against. None for what was not measured."""
        hw = self.hardware
        if hw is None:
            return None, None
        return hw.memory.total, max((g.vram_total for g in hw.gpus), default=0)

    def paused(self) -> tuple[PausedReason | None, str | None]:
        """Why this node takes no new work now (and the reason in full), or None."""
        return paused_reason(self.draining, self.refusing, self.presence)

    def values(self) -> dict[str, Any]:
        """Every key-value this node publishes about itself, as of now."""
        cfg = self.config
        paused, detail = self.paused()
        return {
            "name": cfg.name,
            "hw": msgspec.to_builtins(self.hardware),
            "models": self._models(),
            "draining": self.draining or self.refusing is not None,
            "refusing": self.refusing,
            "sleeping": self.sleeping,
            "queue": 0,
            "slots": cfg.max_concurrency if cfg.allow_shell else 0,
            "busy": 0,
            "allow_shell": cfg.allow_shell,
            "cost_per_hour": float(cfg.cost_per_hour),
            "power": None if self.power is None else msgspec.to_builtins(self.power),
            "paused": paused,
            "pause_detail": detail,
            "speed": float(cfg.speed),
        }

    def models(self) -> list[ModelConfig]:
        """The profiles served: ``[models.NAME]``, then those found by probing."""
        return [*self.config.models, *self.probed]

    def model_profiles(self) -> list[ModelProfile]:
        latency = self.model_latency_ms
        serving = self.serving
        measured = serving.measured if serving is not None else ThroughputTracker()
        use = serving.model_use_by() if serving is not None else {}
        profiles = []
        for m in self.models():
            tps = measured.tokens_per_s(HERE, m.name)
            ttft = measured.latency_s(HERE, m.name)
            profiles.append(
                ModelProfile(
                    name=m.name,
                    model=m.model,
                    endpoint=m.endpoint,
                    capabilities=list(m.capabilities),
                    max_concurrency=m.max_concurrency,
                    cost_per_mtok=m.cost_per_mtok,
                    latency_ms=latency.get(m.name),
                    ttft_ms=None if ttft is None else round(ttft * 1000.0, 1),
                    tokens_per_s=None if tps is None else round(tps, 1),
                    in_flight=dict(sorted(use[m.name].items())) if use.get(m.name) else None,
                )
            )
        return profiles

    def _models(self) -> list[Any]:
        return [msgspec.to_builtins(p) for p in self.model_profiles()]

    def set_probed(self, found: Sequence[ModelConfig], publish: Publish) -> None:
        """The profiles found on local servers changed: serve and gossip them."""
        self.probed = tuple(found)
        if self.serving is not None:
            self.serving.set_models(
                {m.name: (m.endpoint, m.model, m.max_concurrency) for m in self.models()}
            )
        publish("models", self._models())

    async def models_loop(self, publish: Publish) -> None:
        """Re-publish the model profiles (a no-op while unchanged): what was measured
        and what runs now reach every coordinator within about a second."""
        while True:
            await asyncio.sleep(MODEL_STATS_PUBLISH_S)
            publish("models", self._models())

    async def hardware_loop(self, publish: Publish) -> None:
        """Re-measure the hardware every ``hardware_interval_s`` and publish it."""
        while True:
            await asyncio.sleep(self.config.hardware_interval_s)
            try:
                self.hardware = await asyncio.wait_for(
                    asyncio.to_thread(self.probe.probe), HARDWARE_PROBE_TIMEOUT_S
                )
            except TimeoutError:
                self.log.warning("hardware probe took over 30 s; keeping the last values")
                continue
            publish("hw", msgspec.to_builtins(self.hardware))

    async def model_loop(self, publish: Publish) -> None:
        """Measure each local model endpoint (a 1-token completion) and publish it."""
        from .executors.llm import measure_latency

        while True:
            for m in self.config.models:
                seconds = await measure_latency(m.endpoint, m.model, timeout=MODEL_PROBE_TIMEOUT_S)
                if seconds is None and self.model_latency_ms.get(m.name) is not None:
                    self.log.warning("model %s at %s is not answering", m.name, m.endpoint)
                self.model_latency_ms[m.name] = (
                    None if seconds is None else round(seconds * 1000, 1)
                )
            publish("models", self._models())
            await asyncio.sleep(MODEL_PROBE_INTERVAL_S)
