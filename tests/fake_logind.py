"""A private D-Bus daemon (the real dbus-daemon) with a stand-in for logind on it, for
tests of swarmd/logind.py and the sleep path on a machine without systemd as PID 1.

The stand-in owns ``org.freedesktop.login1`` and serves what swarmd uses of logind's
Manager: ``Inhibit`` (a pipe's write end as the inhibitor: the read end sees EOF once
every copy is closed, i.e. once the inhibitor is released), the ``PrepareForSleep``
signal and the ``IdleHint``/``IdleSinceHint`` properties. It runs on an event loop of
its own in a thread, so synchronous tests can drive it. The real logind is exercised
in the nspawn boot test (tests/test_systemd.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbus_fast import BusType, PropertyAccess
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusStr, DBusUInt64, DBusUnixFd
from dbus_fast.service import ServiceInterface, dbus_property, method, signal

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow send_type="signal"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


def available() -> str | None:
    """Why the fake cannot run here (None: it can)."""
    if not shutil.which("dbus-daemon"):
        return "dbus-daemon not installed"
    return None


@dataclass
class Held:
    who: str
    why: str
    mode: str
    read_end: int
    write_end: int | None  # our copy, until settle()

    def released(self) -> bool:
        """Whether every copy of the write end is closed (EOF on the read end)."""
        try:
            return os.read(self.read_end, 1) == b""
        except BlockingIOError:
            return False


class Manager(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.freedesktop.login1.Manager")
        self.held: list[Held] = []
        self.idle = False
        self.idle_since_us = 0

    @method()
    def Inhibit(self, what: DBusStr, who: DBusStr, why: DBusStr, mode: DBusStr) -> DBusUnixFd:
        assert what == "sleep", what
        r, w = os.pipe()
        os.set_blocking(r, False)
        self.held.append(Held(who, why, mode, r, w))
        return w

    @signal()
    def PrepareForSleep(self, start: bool) -> DBusBool:
        return start

    @dbus_property(access=PropertyAccess.READ)
    def IdleHint(self) -> DBusBool:
        return self.idle

    @dbus_property(access=PropertyAccess.READ)
    def IdleSinceHint(self) -> DBusUInt64:
        return self.idle_since_us


class FakeLogind:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        # Other users may connect (the non-root sender test): a directory every user can
        # pass through (pytest's tmp dirs are the owner's only).
        self.socket_dir = Path(tempfile.mkdtemp(prefix="swarmd-bus-"))
        self.socket_dir.chmod(0o755)
        self.socket = self.socket_dir / "bus"
        self.address = f"unix:path={self.socket}"
        self.manager = Manager()
        self._daemon: subprocess.Popen[bytes] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._bus: MessageBus | None = None

    def start(self, own_name: bool = True) -> FakeLogind:
        config = self.workdir / "bus.conf"
        config.write_text(BUS_CONFIG.format(socket=self.socket))
        self._daemon = subprocess.Popen(
            ["dbus-daemon", "--nofork", "--nopidfile", f"--config-file={config}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        from tests.harness import wait_until

        wait_until(self.socket.exists, 10, what="dbus-daemon's socket")
        self._thread.start()
        if own_name:
            self._run(self._serve())
        return self

    def _run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _serve(self) -> None:
        bus = MessageBus(bus_address=self.address, bus_type=BusType.SYSTEM, negotiate_unix_fd=True)
        self._bus = await bus.connect()
        self._bus.export("/org/freedesktop/login1", self.manager)
        await self._bus.request_name("org.freedesktop.login1")

    def emit(self, start: bool) -> None:
        """PrepareForSleep(start), from the stand-in (a root process here)."""

        async def emit() -> None:
            self.manager.PrepareForSleep(start)

        self._run(emit())

    def settle(self) -> None:
        """Close our copies of the write ends handed out (the client holds its own)."""
        for held in self.manager.held:
            if held.write_end is not None:
                os.close(held.write_end)
                held.write_end = None

    @property
    def held(self) -> list[Held]:
        return self.manager.held

    def close(self) -> None:
        if self._bus is not None:
            with contextlib.suppress(Exception):
                self._loop.call_soon_threadsafe(self._bus.disconnect)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5) if self._thread.is_alive() else None
        if self._daemon is not None:
            self._daemon.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._daemon.wait(5)
        for held in self.manager.held:
            for fd in (held.read_end, held.write_end):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
