"""The power and presence loop: every few seconds read the battery (psutil) and the
user's activity (logind, else input interrupts), ask the policy
(:mod:`swarmd.core.presence`), and apply the answer: gossip ``power`` when it moved,
pause or resume new work (the node's ``paused``), renice running work.

The readings come from functions (``power``, ``idle``) so tests inject their own;
``[node] battery_override`` replaces psutil's battery (a test and demo hook),
``$SWARMD_TEST_INPUT_INTERRUPTS`` names a file in the format of ``/proc/interrupts`` read
instead of logind and ``/proc/interrupts`` (a test hook: a test writes input into it),
and with ``when_user_active = "run"`` the user's activity is not read at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from .config import Config
from .core.presence import Decision, Power, PresencePolicy, Readings, decide, power_moved
from .own_state import OwnState
from .power import read_power
from .renice import Renicer
from .user_activity import UserActivity

__all__ = ["PRESENCE_INTERVAL_S", "Presence", "build"]

PRESENCE_INTERVAL_S = 2.0
TEST_INTERRUPTS_ENV = "SWARMD_TEST_INPUT_INTERRUPTS"
READ_TIMEOUT_S = 10.0

Publish = Callable[[str, Any], object]


class Presence:
    def __init__(
        self,
        own: OwnState,
        policy: PresencePolicy,
        *,
        power: Callable[[], Power],
        idle: Callable[[], float | None] | None,
        renicer: Renicer | None,
        log: logging.Logger,
        interval_s: float = PRESENCE_INTERVAL_S,
    ) -> None:
        self.own = own
        self.policy = policy
        self.power = power
        self.idle = idle  # None: the user's activity is not read (when_user_active = run)
        self.renicer = renicer
        self.log = log
        self.interval_s = interval_s
        self.readings = Readings()
        self.errors = 0  # samples that failed (logged)

    async def read(self) -> Readings:
        """The readings now, taken in a thread (a subprocess, sysfs reads)."""

        def take() -> Readings:
            return Readings(self.power(), None if self.idle is None else self.idle())

        try:
            return await asyncio.wait_for(asyncio.to_thread(take), READ_TIMEOUT_S)
        except TimeoutError:
            self.log.warning("power/activity readings took over %gs; keeping the last", 10)
            return self.readings

    def apply(
        self,
        readings: Readings,
        publish: Publish | None = None,
        changed: Callable[[], None] | None = None,
    ) -> Decision:
        """Take ``readings``: gossip the power when it moved (``publish``), and when the
        policy's answer changed tell the node (``changed``: pause or resume new work)."""
        self.readings = readings
        own = self.own
        if power_moved(own.power, readings.power):
            own.power = readings.power
            if publish is not None:
                publish("power", msgspec.to_builtins(readings.power))
        decision = decide(readings, self.policy)
        before = own.presence
        own.presence = decision
        if decision.paused != before.paused:
            if decision.paused is not None:
                self.log.info("paused: %s: no new work; running work finishes", decision.detail)
            else:
                self.log.info("resumed: taking work (was paused: %s)", before.detail)
        if (decision.paused, decision.detail) != (before.paused, before.detail) and changed:
            changed()
        if self.renicer is not None and (decision.nice or self.renicer.niced):
            self.renicer.apply(decision.nice)
        return decision

    async def loop(self, publish: Publish, changed: Callable[[], None]) -> None:
        """Sample and apply every ``interval_s``. A reading or a renice that fails is
        logged (the first time, with its traceback) and counted; the loop goes on with
        the last readings: the node never stops for its battery sensor."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.apply(await self.read(), publish, changed)
            except Exception as exc:
                self.errors += 1
                self.log.warning(
                    "power/presence sample failed (%d so far): %s",
                    self.errors,
                    exc,
                    exc_info=self.errors == 1,
                )

    def counters(self) -> dict[str, int]:
        renicer = {} if self.renicer is None else dict(self.renicer.counters)
        return {"errors": self.errors, **renicer}


def build(config: Config, own: OwnState, log: logging.Logger) -> Presence:
    policy = config.presence
    override = config.battery_override
    power = read_power if override is None else (lambda: override)
    idle = None
    if policy.when_user_active != "run":
        idle = _user_activity(log).idle_s
    renicer = Renicer(log) if policy.when_user_active == "nice" else None
    return Presence(own, policy, power=power, idle=idle, renicer=renicer, log=log)


def _user_activity(log: logging.Logger) -> UserActivity:
    fake = os.environ.get(TEST_INTERRUPTS_ENV)
    if not fake:
        return UserActivity(log)
    log.warning("user activity read from %s (%s, a test hook)", fake, TEST_INTERRUPTS_ENV)
    return UserActivity(log, run=lambda _argv: None, interrupts=Path(fake))
