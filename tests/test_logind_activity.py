"""The user's activity from a real logind: a systemd booted in systemd-nspawn (as in
tests/test_systemd.py), a real login session (``su -l`` on a pseudo-terminal, so
pam_systemd registers it) and real input on its terminal, read by
:class:`swarmd.user_activity.UserActivity` through ``loginctl`` inside the container."""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from swarmd.user_activity import UserActivity
from tests.harness import wait_until
from tests.test_systemd import CONTAINER_PATH, Container, _boot_unavailable

# The kernel moves a terminal's access time only when the seconds differ above bit 3:
# input is seen with 8 s granularity (logind's IdleSinceHint of a text session).
TTY_GRANULARITY_S = 8.0


@pytest.fixture
def box() -> Iterator[Container]:
    reason = _boot_unavailable()
    if reason is not None:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="swarmd-logind-"))
    container = Container(workdir)
    try:
        container.boot()
        yield container
    finally:
        container.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_logind_sees_a_local_session_and_its_input(box: Container) -> None:
    def loginctl(argv: Sequence[str]) -> str | None:
        done = box.run("loginctl", *argv)
        return done.stdout if done.returncode == 0 else None

    activity = UserActivity(
        logging.getLogger("test"), run=loginctl, interrupts=Path("/nonexistent")
    )
    assert activity.idle_s() == math.inf  # booted, nobody logged in
    assert activity.source == "logind"

    # A login on a terminal: `script` gives `su -l` a pty; cat reads what is typed.
    session = subprocess.Popen(
        ["nsenter", "-t", str(box.pid1), "-a", "script", "-qfc", "su -l root -c cat", "/dev/null"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": CONTAINER_PATH},
        cwd="/",
    )
    assert session.stdin is not None
    try:

        def idle() -> float:
            value = activity.idle_s()
            assert value is not None
            return value

        def listed() -> tuple[float] | None:
            value = idle()
            return (value,) if value < math.inf else None  # a tuple: 0.0 s is an answer

        (started,) = wait_until(listed, 20, what="logind to list the session")
        assert started < 2 * TTY_GRANULARITY_S  # its terminal was opened just now
        wait_until(
            lambda: idle() > TTY_GRANULARITY_S + 1,
            40,
            interval=0.5,
            what="the session to be idle past the terminal's granularity",
        )
        session.stdin.write(b"typed\n")  # the owner types
        session.stdin.flush()
        wait_until(lambda: idle() < 5, 20, interval=0.2, what="the input to be seen")
        sessions = loginctl(["list-sessions", "--no-legend"]) or ""
        assert sessions.split(), sessions
    finally:
        session.kill()
        session.wait(10)
