"""The power and presence shell: psutil's battery (monkeypatched), the user's activity
from logind's output or input interrupts (injected), the sampling loop with injected
sources, and `nice` renicing a real shell subtask (its nice value read from /proc)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections import namedtuple
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from swarmd.config import Config
from swarmd.core.presence import BatteryRule, Power, PresencePolicy, Readings
from swarmd.executors import ExecRequest, Limits
from swarmd.executors import shell as shell_executor
from swarmd.hardware import HardwareProbe
from swarmd.own_state import OwnState
from swarmd.power import read_power
from swarmd.presence import Presence
from swarmd.renice import NICE_WHILE_ACTIVE, Renicer, work_groups
from swarmd.user_activity import UserActivity, idle_from_sessions, input_counts, parse_sessions

LOG = logging.getLogger("test-presence")
Sbattery = namedtuple("Sbattery", "percent secsleft power_plugged")


# ---------------------------------------------------------------- the battery


@pytest.mark.parametrize(
    ("reading", "expected"),
    [
        (None, Power()),
        (Sbattery(54.26, 3600, False), Power(on_ac=False, battery_percent=54.3)),
        (Sbattery(100, psutil.POWER_TIME_UNLIMITED, True), Power(True, 100.0)),
        (Sbattery(50, psutil.POWER_TIME_UNLIMITED, None), Power(True, 50.0)),
        (Sbattery(50, 1200, None), Power(False, 50.0)),
        (Sbattery(50, psutil.POWER_TIME_UNKNOWN, None), Power(None, 50.0)),
        (Sbattery(104.0, 10, True), Power(True, 100.0)),
    ],
)
def test_read_power_from_psutil(
    monkeypatch: pytest.MonkeyPatch, reading: Any, expected: Power
) -> None:
    monkeypatch.setattr(psutil, "sensors_battery", lambda: reading)
    assert read_power() == expected


def test_read_power_without_a_sensor_is_mains(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise RuntimeError("no sensor")

    monkeypatch.setattr(psutil, "sensors_battery", boom)
    assert read_power() == Power()
    monkeypatch.delattr(psutil, "sensors_battery")
    assert read_power() == Power()


# ---------------------------------------------------------------- the user's activity

NOW = 1_800_000_000.0
SESSIONS = """Id=2
Type=wayland
Class=user
Remote=no
IdleHint=yes
IdleSinceHint={idle_since}

Id=5
Type=tty
Class=user
Remote=no
IdleHint=no
IdleSinceHint={tty_since}

Id=7
Type=tty
Class=user
Remote=yes
IdleHint=no
IdleSinceHint={now}

Id=c1
Type=x11
Class=greeter
Remote=no
IdleHint=no
IdleSinceHint=0
"""


def sessions(idle_since: float, tty_since: float) -> str:
    return SESSIONS.format(
        idle_since=int(idle_since * 1e6), tty_since=int(tty_since * 1e6), now=int(NOW * 1e6)
    )


def test_idle_from_logind_sessions() -> None:
    # the desktop idle for 10 min, the local tty typed on 40 s ago; remote and greeter
    # sessions do not count
    parsed = parse_sessions(sessions(NOW - 600, NOW - 40))
    assert [s["Id"] for s in parsed] == ["2", "5", "7", "c1"]
    assert idle_from_sessions(parsed, NOW) == pytest.approx(40.0)
    # the desktop says its user is active now
    active = [dict(s, IdleHint="no") if s["Id"] == "2" else s for s in parsed]
    assert idle_from_sessions(active, NOW) == 0.0
    # only a remote session: nobody at this machine
    assert idle_from_sessions([s for s in parsed if s["Remote"] == "yes"], NOW) == math.inf


class FakeLoginctl:
    def __init__(self, listing: str | None, shown: str | None) -> None:
        self.listing, self.shown = listing, shown
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> str | None:
        self.calls.append(list(argv))
        return self.listing if argv[0] == "list-sessions" else self.shown


def test_user_activity_from_logind() -> None:
    listing = "      2 1000 ann seat0 tty2\n      5 1000 ann seat0 tty3\n      7 1000 ann\n"
    run = FakeLoginctl(listing, sessions(NOW - 600, NOW - 40))
    activity = UserActivity(LOG, run=run, interrupts=Path("/nonexistent"), clock=lambda: NOW)
    assert activity.idle_s() == pytest.approx(40.0)
    assert activity.source == "logind"
    assert run.calls[1][0] == "show-session" and run.calls[1][-3:] == ["2", "5", "7"]
    nobody = UserActivity(LOG, run=FakeLoginctl("", None), clock=lambda: NOW)
    assert nobody.idle_s() == math.inf


INTERRUPTS = """           CPU0       CPU1
  1:        {kbd}          3  IO-APIC    1-edge      i8042
  8:          0          0  IO-APIC    8-edge      rtc0
 12:          {mouse}        0  IO-APIC   12-edge      i8042
 51:          7        {pad}  intel-gpio  3  ELAN0676:00
 16:       9999      99999  IO-APIC   16-fasteoi   xhci_hcd
"""


def test_input_interrupts_are_summed() -> None:
    assert input_counts(INTERRUPTS.format(kbd=10, mouse=5, pad=1)) == 10 + 3 + 5 + 7 + 1
    assert input_counts("  CPU0\n  8:   0   IO-APIC 8-edge rtc0\n") is None


def test_user_activity_from_input_interrupts(tmp_path: Path) -> None:
    """No logind (loginctl fails): the count of the input lines moving is input."""
    now = [NOW]
    interrupts = tmp_path / "interrupts"
    interrupts.write_text(INTERRUPTS.format(kbd=10, mouse=5, pad=1))
    activity = UserActivity(
        LOG, run=FakeLoginctl(None, None), interrupts=interrupts, clock=lambda: now[0]
    )
    assert activity.idle_s() == math.inf  # no input seen yet
    assert activity.source == "input interrupts"
    now[0] += 5
    interrupts.write_text(INTERRUPTS.format(kbd=11, mouse=5, pad=1))  # a key
    assert activity.idle_s() == 0.0
    now[0] += 30
    assert activity.idle_s() == pytest.approx(30.0)  # nothing since
    interrupts.write_text("  CPU0\n  8:   0   IO-APIC 8-edge rtc0\n")
    assert activity.idle_s() is None and activity.source == "none"  # unknown


# ---------------------------------------------------------------- the loop


def own_state(tmp_path: Path) -> OwnState:
    return OwnState(Config(state_dir=tmp_path), HardwareProbe(), LOG)


def test_apply_gossips_power_on_moves_and_pauses_on_the_policy(tmp_path: Path) -> None:
    own = own_state(tmp_path)
    policy = PresencePolicy(BatteryRule("below", 30.0), "pause", 60.0)
    presence = Presence(own, policy, power=Power, idle=None, renicer=None, log=LOG)
    published: list[tuple[str, Any]] = []
    changes: list[tuple[Any, Any]] = []

    def publish(key: str, value: Any) -> None:
        published.append((key, value))

    def changed() -> None:
        changes.append(own.paused())

    def take(power: Power, idle: float | None = None) -> None:
        presence.apply(Readings(power, idle), publish, changed)

    take(Power(False, 54.0))
    take(Power(False, 53.6))  # under a point: not gossiped
    take(Power(False, 22.0))
    take(Power(False, 21.0), idle=5.0)  # the level moved: the detail changes too
    take(Power(True, 21.0), idle=5.0)  # plugged in, but the user types
    take(Power(True, 21.0), idle=600.0)
    assert [v for k, v in published if k == "power"] == [
        {"on_ac": False, "battery_percent": 54.0},
        {"on_ac": False, "battery_percent": 22.0},
        {"on_ac": False, "battery_percent": 21.0},
        {"on_ac": True, "battery_percent": 21.0},
    ]
    assert changes == [
        ("battery", "battery 22 % < 30 %"),
        ("battery", "battery 21 % < 30 %"),
        ("user-active", "user active (input 5 s ago < 60 s)"),
        (None, None),
    ]
    own.draining = True
    take(Power(False, 10.0))
    assert own.paused() == ("draining", "draining")
    assert own.values()["paused"] == "draining"
    assert own.values()["power"] == {"on_ac": False, "battery_percent": 10.0}


def nice_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19: nice


def test_nice_renices_a_running_shell_subtask_while_the_user_is_active(
    tmp_path: Path,
) -> None:
    """The loop with an injected activity source: while it says "input 3 s ago" the
    running shell subtask (a real process group started by the shell executor) is at
    nice 19; when the user goes idle its priority is restored (root) or the refusal is
    counted (unprivileged)."""

    async def scenario() -> None:
        idle: list[float | None] = [None]
        policy = PresencePolicy(BatteryRule("run"), "nice", 60.0)
        renicer = Renicer(LOG)
        presence = Presence(
            own_state(tmp_path),
            policy,
            power=Power,
            idle=lambda: idle[0],
            renicer=renicer,
            log=LOG,
            interval_s=0.05,
        )
        request = ExecRequest("t1", "s1", 1, "shell", run=("sleep", "30.5"), timeout_s=60)
        run = asyncio.create_task(
            shell_executor.run(request, workdir_root=tmp_path / "work", limits=Limits())
        )
        loop = asyncio.create_task(presence.loop(lambda _k, _v: None, lambda: None))
        try:
            pid = await until(lambda: subtask_pid("30.5"), "the subtask to start")
            base = renicer.base
            assert nice_of(pid) == base and pid in work_groups(os.getpid())
            idle[0] = 3.0  # the owner types
            await until(lambda: nice_of(pid) == NICE_WHILE_ACTIVE, "the subtask to be niced")
            assert renicer.counters["reniced"] >= 1
            idle[0] = math.inf  # and leaves
            if os.geteuid() == 0:
                await until(lambda: nice_of(pid) == base, "the priority to be restored")
            else:
                await until(lambda: renicer.counters["restore_refused"] > 0, "a refusal")
            assert not renicer.niced
        finally:
            loop.cancel()
            for proc in psutil.Process().children(recursive=True):
                if proc.cmdline()[-1:] == ["30.5"]:
                    proc.kill()
            result = await run
        assert result.exit_code != 0  # killed by the test, after the checks

    asyncio.run(scenario())


def subtask_pid(marker: str) -> int | None:
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.cmdline()[-1:] == [marker]:
                return int(proc.pid)
        except psutil.Error:
            continue
    return None


async def until(fn: Any, what: str, timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := fn()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
    return value


def test_a_failing_reading_is_counted_and_the_loop_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    readings: list[Power | Exception] = [OSError("sensor gone"), Power(False, 10.0)]

    def power() -> Power:
        value = readings.pop(0) if len(readings) > 1 else readings[0]
        if isinstance(value, Exception):
            raise value
        return value

    async def scenario() -> tuple[Presence, OwnState]:
        own = own_state(tmp_path)
        presence = Presence(
            own, PresencePolicy(), power=power, idle=None, renicer=None, log=LOG, interval_s=0.01
        )
        loop = asyncio.create_task(presence.loop(lambda _k, _v: None, lambda: None))
        try:
            await until(lambda: own.paused()[0] == "battery", "the next reading to be applied")
        finally:
            loop.cancel()
        return presence, own

    presence, own = asyncio.run(scenario())
    assert presence.counters()["errors"] == 1
    assert own.paused() == ("battery", "battery 10 % < 30 %")
    assert "power/presence sample failed (1 so far): sensor gone" in caplog.text
