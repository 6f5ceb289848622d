"""Power policy with real daemons: a laptop whose battery reads 22 % (the
``[node] battery_override`` test hook) under ``on_battery = "below:30"`` (the default)
is paused; pricing refuses it with the reason in ``explain``, the other node takes the
work, and ``peers`` shows its power and why it is paused."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.harness import Daemon, free_port, new_secret, swarmctl, wait_until
from tests.test_metrics import scrape, value

JOB = """
name = "on-battery"
[[subtask]]
id = "anywhere"
kind = "shell"
run = ["echo", "hi"]

[[subtask]]
id = "pinned"
kind = "shell"
run = ["echo", "laptop"]
node = "laptop"
"""


def test_a_laptop_under_its_battery_threshold_is_paused_and_said_why(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    secret = new_secret()
    port = free_port()
    config = LAPTOP_CONFIG + f"metrics_port = {port}\n"
    laptop = Daemon(tmp_path, "laptop", secret=secret, args=("--no-mdns",), config=config)
    desk = Daemon(tmp_path, "desk", secret=secret, args=("--no-mdns", "--join", laptop.address))
    daemons += [laptop, desk]
    laptop.start().wait_ready()
    desk.start().wait_ready()

    def laptop_row() -> dict[str, Any] | None:
        rows = {p["name"]: p for p in desk.peers()}
        row = rows.get("laptop")
        return row if row is not None and row["paused"] == "battery" else None

    row = wait_until(laptop_row, 20, what="desk to see the laptop paused on battery")
    assert row["power"] == {"on_ac": False, "battery_percent": 22.0}
    assert row["pause_detail"] == "battery 22 % < 30 %"
    assert row["draining"] is False  # paused by its policy, not drained

    # The laptop coordinates: its own subtask goes to the desk, the pinned one waits.
    job = tmp_path / "job.toml"
    job.write_text(JOB)
    out = swarmctl("--json", "submit", "-f", str(job), state_dir=laptop.state_dir)
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)["task"]

    def status() -> dict[str, Any] | None:
        got = swarmctl("--json", "status", task, state_dir=laptop.state_dir)
        body: dict[str, Any] = json.loads(got.stdout)
        subs = {s["id"]: s for s in body["subtasks"]}
        return body if subs["anywhere"]["state"] == "done" else None

    body = wait_until(status, 30, interval=0.2, what="the unpinned subtask to finish")
    subs = {s["id"]: s for s in body["subtasks"]}
    assert subs["anywhere"]["peer"] == "desk"
    assert subs["pinned"]["state"] in ("pending", "ready") and subs["pinned"]["attempts"] == 0

    explain = json.loads(swarmctl("--json", "explain", task, state_dir=laptop.state_dir).stdout)
    rows = {s["id"]: s for s in explain["subtasks"]}
    why = {c["peer"]: c.get("why_not") for c in rows["anywhere"]["candidates"]}
    assert why["laptop"] == "paused: battery 22 % < 30 %", why
    assert "paused: battery 22 % < 30 %" in (rows["pinned"]["reason"] or ""), rows["pinned"]
    text = swarmctl("explain", task, state_dir=laptop.state_dir).stdout
    assert "paused: battery 22 % < 30 %" in text, text

    table = swarmctl("peers", state_dir=desk.state_dir).stdout
    line = next(x for x in table.splitlines() if x.startswith("laptop"))
    assert "alive (paused: battery)" in line and "🔋 22 %" in line, table
    assert "laptop takes no new work: battery 22 % < 30 %" in table, table
    mine = json.loads(swarmctl("--json", "peers", state_dir=desk.state_dir).stdout)
    me = next(p for p in mine if p["self"])
    assert me["paused"] is None and set(me["power"]) == {"on_ac", "battery_percent"}
    assert "paused: battery 22 % < 30 %: no new work" in laptop.log()
    metrics = scrape(port)
    assert value(metrics, "swarmd_paused", reason="battery") == 1.0
    assert value(metrics, "swarmd_paused", reason="user-active") == 0.0
    for d in (laptop, desk):
        assert "Traceback" not in d.log()


LAPTOP_CONFIG = """
[node]
battery_override = "22"   # test hook: on battery at 22 %; on_battery is below:30
"""


# ---------------------------------------------------------------- the owner at the keyboard

INTERRUPTS = "           CPU0\n  1:  {count}  IO-APIC   1-edge      i8042\n"


class Keyboard:
    """A file in /proc/interrupts format that a daemon reads as its input interrupts
    ($SWARMD_TEST_INPUT_INTERRUPTS): each press moves the count."""

    def __init__(self, path: Path) -> None:
        self.path, self.count = path, 100
        self.path.write_text(INTERRUPTS.format(count=self.count))

    def press(self) -> None:
        self.count += 1
        self.path.write_text(INTERRUPTS.format(count=self.count))


def nice_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19: nice


def work_of(daemon: Daemon) -> dict[int, list[str]]:
    """The process groups the daemon leads below it (shell subtasks, python workers)."""
    assert daemon.proc is not None
    groups = {}
    for child in psutil.Process(daemon.proc.pid).children(recursive=True):
        try:
            if os.getpgid(child.pid) == child.pid:
                groups[child.pid] = child.cmdline()
        except (OSError, psutil.Error):
            continue
    return groups


def user_node(
    tmp_path: Path, name: str, mode: str, secret: str, seed: Daemon, mp: pytest.MonkeyPatch
) -> tuple[Daemon, Keyboard]:
    keyboard = Keyboard(tmp_path / f"{name}.interrupts")
    idle = IDLE_S[mode]
    config = f'[node]\nwhen_user_active = "{mode}"\nuser_idle = "{idle}s"\n'
    daemon = Daemon(
        tmp_path, name, secret=secret, args=("--no-mdns", "--join", seed.address), config=config
    )
    mp.setenv("SWARMD_TEST_INPUT_INTERRUPTS", str(keyboard.path))
    daemon.start()  # it reads the hook from its environment
    mp.delenv("SWARMD_TEST_INPUT_INTERRUPTS")
    return daemon.wait_ready(), keyboard


# Input within this long is activity. The pause test types between swarmctl calls (a
# process each, slow on a loaded machine): a gap in typing must not look like leaving.
IDLE_S = {"nice": 1, "pause": 3}

NAPS = """
name = "naps"
[[subtask]]
id = "sh"
kind = "shell"
run = ["sleep", "30.25"]
node = "nicer"

[[subtask]]
id = "py"
kind = "python"
call = "tests.pyfuncs:nap"
args = [30]
node = "nicer"
"""


LATER = """
name = "later"
[[subtask]]
id = "later"
kind = "shell"
run = ["echo", "later"]
node = "pauser"
"""


def desk_and(
    tmp_path: Path, daemons: list[Daemon], name: str, mode: str, mp: pytest.MonkeyPatch
) -> tuple[Daemon, Daemon, Keyboard]:
    secret = new_secret()
    desk = Daemon(tmp_path, "desk", secret=secret, args=("--no-mdns",))
    daemons.append(desk.start().wait_ready())
    node, keyboard = user_node(tmp_path, name, mode, secret, desk, mp)
    daemons.append(node)
    wait_until(lambda: len(desk.peers()) == 2, 20, what=f"desk and {name} to meet")
    return desk, node, keyboard


def test_the_owner_typing_nices_running_work(
    tmp_path: Path, daemons: list[Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    """when_user_active = "nice": a shell subtask's group and a python pool worker go
    to nice 19 while the owner types, and back (as root) once they stop."""
    desk, nicer, nicer_keys = desk_and(tmp_path, daemons, "nicer", "nice", monkeypatch)

    # nice: a shell subtask and a python one run on "nicer"; its owner types
    job = tmp_path / "naps.toml"
    job.write_text(NAPS)
    out = swarmctl("--json", "submit", "-f", str(job), state_dir=desk.state_dir)
    assert out.returncode == 0, out.stderr

    def both_running() -> dict[int, list[str]] | None:
        groups = work_of(nicer)
        return groups if len(groups) >= 2 and ["sleep", "30.25"] in groups.values() else None

    groups = wait_until(both_running, 20, what="the shell subtask and a python worker on nicer")
    assert nicer.proc is not None
    base = nice_of(nicer.proc.pid)  # the daemon's own: its work starts there
    assert all(nice_of(pid) == base for pid in groups), {p: nice_of(p) for p in groups}

    def typed_and_niced() -> bool:
        nicer_keys.press()
        return all(nice_of(pid) in (19, None) for pid in groups)

    wait_until(typed_and_niced, 15, interval=0.2, what="nicer's work to be reniced")
    sleeper = next(pid for pid, cmd in groups.items() if cmd == ["sleep", "30.25"])
    assert nice_of(sleeper) == 19
    row = next(p for p in desk.peers() if p["name"] == "nicer")
    assert row["paused"] is None  # nice takes new work still
    if os.geteuid() == 0:  # the owner stops typing: restored (it takes privilege)
        wait_until(lambda: nice_of(sleeper) == base, 15, what="the priority restored")
    swarmctl("cancel", json.loads(out.stdout)["task"], state_dir=desk.state_dir)
    for d in daemons:
        assert "Traceback" not in d.log()


def test_the_owner_typing_pauses_new_work(
    tmp_path: Path, daemons: list[Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    """when_user_active = "pause": while the owner types the node is paused
    (user-active), explain says so, work pinned there waits, and runs once they stop."""
    desk, pauser, pauser_keys = desk_and(tmp_path, daemons, "pauser", "pause", monkeypatch)
    job = tmp_path / "later.toml"

    def seen_paused() -> dict[str, Any] | None:
        pauser_keys.press()
        row = next(p for p in desk.peers() if p["name"] == "pauser")
        return row if row["paused"] == "user-active" else None

    row = wait_until(seen_paused, 15, interval=0.2, what="desk to see pauser paused")
    assert row["pause_detail"].startswith("user active (input ") and "< 3 s" in row["pause_detail"]
    job.write_text(LATER)
    out = swarmctl("--json", "submit", "-f", str(job), state_dir=desk.state_dir)
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)["task"]

    def refused_for_the_user() -> str | None:
        pauser_keys.press()
        got = json.loads(swarmctl("--json", "explain", task, state_dir=desk.state_dir).stdout)
        reason = got["subtasks"][0]["reason"] or ""
        return reason if "pauser: paused: user active" in reason else None

    wait_until(refused_for_the_user, 15, interval=0.2, what="explain to say the user is active")

    # the owner leaves: within user_idle (3 s) and a sample, the work runs there
    def done() -> dict[str, Any] | None:
        body = json.loads(swarmctl("--json", "status", task, state_dir=desk.state_dir).stdout)
        return body if body["state"] == "done" else None

    body = wait_until(done, 20, interval=0.3, what="the pinned task to run once idle")
    assert body["subtasks"][0]["peer"] == "pauser"
    assert "paused: user active" in pauser.log() and "resumed: taking work" in pauser.log()
    for d in daemons:
        assert "Traceback" not in d.log()
