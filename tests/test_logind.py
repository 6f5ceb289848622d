"""swarmd/logind.py against the real dbus-daemon with a stand-in for logind
(tests/fake_logind.py): the delay inhibitor is a file descriptor that crosses the bus
and whose release the other side sees; PrepareForSleep reaches the callback only from a
root sender; the idle hint; and no bus, or a bus without logind, is None (not an error).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmd.logind import Logind
from tests.fake_logind import FakeLogind, available

LOG = logging.getLogger("test-logind")
EMIT = Path(__file__).parent / "emit_sleep.py"


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeLogind]:
    reason = available()
    if reason:
        pytest.skip(reason)
    logind = FakeLogind(tmp_path).start()
    try:
        yield logind
    finally:
        logind.close()


async def _until(predicate: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_no_bus_is_none_not_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        caplog.set_level(logging.DEBUG, logger=LOG.name)
        address = f"unix:path={tmp_path / 'nobody-listens'}"
        assert await Logind.connect(LOG, address) is None

    asyncio.run(scenario())
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert "no logind sleep inhibitor" in caplog.records[0].getMessage()


def test_a_bus_without_logind_is_none(tmp_path: Path) -> None:
    if available():
        pytest.skip(available())
    bus = FakeLogind(tmp_path).start(own_name=False)
    try:
        assert asyncio.run(Logind.connect(LOG, bus.address)) is None
    finally:
        bus.close()


def test_inhibitor_crosses_the_bus_and_its_release_is_seen(fake: FakeLogind) -> None:
    async def scenario() -> None:
        logind = await Logind.connect(LOG, fake.address)
        assert logind is not None
        inhibitor = await logind.inhibit_sleep("swarmd", "hand back running work")
        assert inhibitor.held
        [held] = fake.held
        assert (held.who, held.why, held.mode) == ("swarmd", "hand back running work", "delay")
        fake.settle()  # only our copy is left now
        assert not held.released()
        inhibitor.release()
        await _until(held.released)
        assert not inhibitor.held
        inhibitor.release()  # twice is harmless
        logind.close()

    asyncio.run(scenario())


def test_prepare_for_sleep_reaches_the_callback_in_order(fake: FakeLogind) -> None:
    async def scenario() -> None:
        logind = await Logind.connect(LOG, fake.address)
        assert logind is not None
        got: list[bool] = []
        logind.on_prepare_for_sleep(got.append)
        await asyncio.to_thread(fake.emit, True)
        await asyncio.to_thread(fake.emit, False)
        await _until(lambda: len(got) == 2)
        assert got == [True, False]
        assert logind.rejected == 0
        logind.close()

    asyncio.run(scenario())


def test_prepare_for_sleep_only_from_logind_or_root(fake: FakeLogind) -> None:
    """Another user's signal is ignored; a root process's (still connected) is taken."""
    if os.geteuid() != 0 or not shutil.which("runuser") or not shutil.which("busctl"):
        pytest.skip("needs root, runuser and busctl")

    async def scenario() -> None:
        logind = await Logind.connect(LOG, fake.address)
        assert logind is not None
        got: list[bool] = []
        logind.on_prepare_for_sleep(got.append)
        emit = ["busctl", f"--address={fake.address}", "emit", "/org/freedesktop/login1"]
        emit += ["org.freedesktop.login1.Manager", "PrepareForSleep", "b", "true"]
        proc = await asyncio.to_thread(
            subprocess.run, ["runuser", "-u", "nobody", "--", *emit], capture_output=True
        )
        assert proc.returncode == 0, proc.stderr
        await _until(lambda: logind.rejected == 1)
        assert got == []
        helper = [sys.executable, str(EMIT), "false", f"--address={fake.address}", "--hold=5"]
        root = await asyncio.create_subprocess_exec(*helper)
        await _until(lambda: got == [False])
        assert logind.rejected == 1
        root.kill()
        await root.wait()
        logind.close()

    asyncio.run(scenario())


def test_idle_hint(fake: FakeLogind) -> None:
    async def scenario() -> None:
        logind = await Logind.connect(LOG, fake.address)
        assert logind is not None
        assert await logind.idle_hint() == (False, None)
        fake.manager.idle, fake.manager.idle_since_us = True, 1_700_000_000_500_000
        assert await logind.idle_hint() == (True, 1_700_000_000.5)
        logind.close()

    asyncio.run(scenario())
