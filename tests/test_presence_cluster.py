"""Power policy with real daemons: a laptop whose battery reads 22 % (the
``[node] battery_override`` test hook) under ``on_battery = "below:30"`` (the default)
is paused; pricing refuses it with the reason in ``explain``, the other node takes the
work, and ``peers`` shows its power and why it is paused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.harness import Daemon, new_secret, swarmctl, wait_until

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
    laptop = Daemon(tmp_path, "laptop", secret=secret, args=("--no-mdns",), config=LAPTOP_CONFIG)
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
    for d in (laptop, desk):
        assert "Traceback" not in d.log()


LAPTOP_CONFIG = """
[node]
battery_override = "22"   # test hook: on battery at 22 %; on_battery is below:30
"""
