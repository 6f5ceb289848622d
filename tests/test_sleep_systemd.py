"""Sleep under the real logind: systemd boots in systemd-nspawn (tests/test_systemd.py's
Container), swarmd runs as the unit ships (DynamicUser, sandboxed), and logind, polkit
and the system bus are the real ones.

The container cannot suspend (logind's CanSuspend is "na" there, and a suspend that
worked would put the test machine to sleep), so the test emits logind's signal itself:
PrepareForSleep(true) from a root process inside the container (tests/emit_sleep.py,
which stays connected so swarmd can ask the bus who sent it; swarmd ignores the signal
from other users), then freezes the sleeper (SIGSTOP, as a suspend freezes every
process), then thaws it and emits PrepareForSleep(false).

The sleeper ("laptop") is a root service (systemd-run); the unit as shipped is its peer
and coordinates. Under the shipped unit's DynamicUser= the container's dbus-daemon hangs
up on the node (it resolves users with SYSTEMD_NSS_DYNAMIC_BYPASS=1, which finds no
dynamic user), so that node runs without an inhibitor and says so in its log.

Shown: logind lists the laptop's delay inhibitor; on the signal the laptop releases it,
its running work completes on the peer exactly once, the peer lists it `sleeping` (never
`dead`) while it is frozen; after the wake it holds a new inhibitor, is alive for the
peer at once and takes work.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.harness import ROOT, wait_until
from tests.test_systemd import (  # noqa: F401 - container: the fixture
    CONTAINER_PATH,
    Container,
    _install,
    container,
)

EMIT = ROOT / "tests" / "emit_sleep.py"
LAPTOP = "/run/swarmd-laptop"  # the sleeper's state dir
STATE = "/var/lib/swarmd"
PRIVATE = "/var/lib/private/swarmd"
JOB = "\n".join(
    f'[[subtask]]\nid = "s{i}"\nkind = "shell"\nrun = ["sh", "-c", "sleep 4; echo ok"]\n'
    for i in range(2)
)
ENV = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8"}
NO_BUS = "DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent"


def _inhibitors(box: Container) -> list[str]:
    out = box.run("systemd-inhibit", "--list", "--no-pager", "--no-legend").stdout
    return [line for line in out.splitlines() if "swarmd" in line]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sleep_under_real_logind(container: Container) -> None:  # noqa: F811
    box = container
    swarmd, swarmctl = _install(box, None)

    def ctl(state: str, *args: str) -> str:
        return box.run(swarmctl, "--state-dir", state, *args, check=True, timeout=60).stdout

    def seen_by_unit() -> dict[str, str]:
        out = box.run(swarmctl, "--state-dir", STATE, "--json", "peers").stdout
        return {p["name"]: p["state"] for p in json.loads(out)} if out.strip() else {}

    def emit(start: bool) -> subprocess.Popen[bytes]:
        """PrepareForSleep(start) from a root process in the container (in the
        background: it stays connected for a moment after the signal)."""
        argv = [sys.executable, str(EMIT), "true" if start else "false", "--hold=1.5"]
        return subprocess.Popen(["nsenter", "-t", str(box.pid1), "-a", *argv], env=ENV)

    # The unit as shipped coordinates; it must not take the signal meant for the laptop
    # (one machine here, two nodes): its bus address leads nowhere.
    box.write(
        "/etc/systemd/system/swarmd.service.d/no-bus.conf", f"[Service]\nEnvironment={NO_BUS}\n"
    )
    box.run("systemctl", "daemon-reload", check=True)
    box.run("systemctl", "start", "swarmd", check=True, timeout=60)
    unit_name = json.loads(ctl(STATE, "--json", "peers"))[0]["name"]
    ctl(STATE, "drain")  # for now: the work goes to the laptop

    # The laptop: a root service on the real system bus, with the real logind.
    box.path(LAPTOP).mkdir(mode=0o700)
    box.path(f"{LAPTOP}/cluster.secret").write_text(
        box.path(f"{PRIVATE}/cluster.secret").read_text()
    )
    box.path(f"{LAPTOP}/cluster.secret").chmod(0o600)
    box.run(
        "systemd-run",
        "--unit=swarmd-laptop",
        f"--setenv=SWARMD_STATE_DIR={LAPTOP}",
        swarmd,
        "run",
        "--bind=127.0.0.1",
        "--port=7947",
        "--join=127.0.0.1:7946",
        "--no-mdns",
        "--name=laptop",
        check=True,
    )
    wait_until(lambda: seen_by_unit().get("laptop") == "alive", 20, what="the laptop joined")
    try:
        wait_until(lambda: _inhibitors(box), 15, interval=0.2, what="swarmd's inhibitor")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{box.journal('swarmd-laptop')[-3000:]}") from None
    [held] = _inhibitors(box)
    assert "sleep" in held and "delay" in held, held

    box.write("/tmp/job.toml", JOB)
    task = json.loads(ctl(STATE, "--json", "submit", "-f", "/tmp/job.toml"))["task"]

    def subtasks() -> list[dict[str, object]]:
        return list(json.loads(ctl(STATE, "--json", "status", task))["subtasks"])

    wait_until(
        lambda: all(s["state"] == "running" and s["peer"] == "laptop" for s in subtasks()),
        20,
        interval=0.2,
        what="both subtasks running on the laptop",
    )
    ctl(STATE, "undrain")

    # -- PrepareForSleep(true), the real signal on the real bus
    t = time.monotonic()
    emitter = emit(True)
    wait_until(lambda: "ready to sleep" in box.journal("swarmd-laptop"), 10, what="ready")
    wait_until(lambda: not _inhibitors(box), 5, what="the inhibitor released")
    box.run("systemctl", "kill", "--signal=SIGSTOP", "swarmd-laptop")  # suspended
    assert seen_by_unit().get("laptop") == "sleeping", seen_by_unit()
    seen: set[str | None] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen.add(seen_by_unit().get("laptop"))
        subs = subtasks()
        if all(s["state"] == "done" for s in subs) and time.monotonic() - t > 5:
            break
        time.sleep(0.3)
    assert emitter.wait(10) == 0
    assert seen == {"sleeping"}, seen  # ~1.7 s of silence would make it dead
    for s in subs:  # handed back, and run once more: on the unit's node
        assert s["state"] == "done" and s["peer"] == unit_name and s["attempts"] == 2, s
    assert "2 attempt(s) handed back" in box.journal("swarmd-laptop")

    # -- resume: thawed, PrepareForSleep(false)
    box.run("systemctl", "kill", "--signal=SIGCONT", "swarmd-laptop")
    t = time.monotonic()
    emitter = emit(False)
    wait_until(lambda: seen_by_unit().get("laptop") == "alive", 10, interval=0.05, what="awake")
    print(
        f"PrepareForSleep(false) -> alive for the peer in {time.monotonic() - t:.2f} s "
        "(from the emitter's start: a Python process, entering the container)"
    )
    assert emitter.wait(10) == 0
    wait_until(lambda: _inhibitors(box), 10, interval=0.2, what="a new inhibitor")
    pinned = '[[subtask]]\nid = "p"\nkind = "shell"\nrun = ["echo", "awake"]\nnode = "laptop"\n'
    box.write("/tmp/pinned.toml", pinned)
    status = json.loads(ctl(STATE, "--json", "submit", "--wait", "-f", "/tmp/pinned.toml"))
    assert status["state"] == "done" and status["subtasks"][0]["peer"] == "laptop", status
    box.run("systemctl", "stop", "swarmd-laptop", check=False)
