"""Deadlines as a contract, end to end: a real daemon, swarmctl as a user runs it.

An unmeetable deadline is refused at submit (exit 2, with the estimate); with
``--deadline-best-effort`` it runs, and ``status`` (and ``--json``) says the deadline
is unreachable; a meetable one is taken and shown reachable.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.harness import Daemon, new_secret, swarmctl, wait_until


def _job(path: Path, estimate: str, deadline: str, seconds: int) -> Path:
    path.write_text(
        f'name = "due"\ndeadline = "{deadline}"\n\n[[subtask]]\nid = "work"\nkind = "shell"\n'
        f'run = ["sleep", "{seconds}"]\nestimate = "{estimate}"\n'
    )
    return path


def _deadline(node: Daemon, task: str) -> dict[str, Any] | None:
    out = swarmctl("--json", "status", task, state_dir=node.state_dir)
    if out.returncode != 0:
        return None
    deadline: dict[str, Any] | None = json.loads(out.stdout)["deadline"]
    return deadline if deadline and deadline["reachable"] is not None else None


def test_unmeetable_deadline_refused_or_reported(tmp_path: Path, daemons: list[Daemon]) -> None:
    node = Daemon(tmp_path, "solo", secret=new_secret(), args=("--no-mdns",))
    daemons.append(node)
    node.start().wait_ready()
    late = _job(tmp_path / "late.toml", estimate="10m", deadline="20s", seconds=30)

    refused = swarmctl("submit", "-f", str(late), state_dir=node.state_dir)
    assert refused.returncode == 2, refused
    found = re.search(
        r"deadline 20 s cannot be met: estimated finish in ([0-9.]+) s", refused.stderr
    )
    assert found and float(found.group(1)) >= 600.0, refused.stderr
    assert "--deadline-best-effort" in refused.stderr and not refused.stdout

    taken = swarmctl(
        "--json", "submit", "--deadline-best-effort", "-f", str(late), state_dir=node.state_dir
    )
    assert taken.returncode == 0, taken
    task = json.loads(taken.stdout)["task"]
    deadline = wait_until(lambda: _deadline(node, task), 10.0, 0.2, "an outlook for the task")
    assert deadline["reachable"] is False and deadline["best_effort"] is True
    assert deadline["estimated_finish"] > deadline["at"]
    shown = swarmctl("status", task, state_dir=node.state_dir)
    assert "UNREACHABLE" in shown.stdout, shown
    listed = swarmctl("--json", "tasks", state_dir=node.state_dir)
    row = next(r for r in json.loads(listed.stdout) if r["id"] == task)
    assert row["deadline"]["reachable"] is False
    assert swarmctl("cancel", task, state_dir=node.state_dir).returncode == 0

    fine = _job(tmp_path / "fine.toml", estimate="1s", deadline="1h", seconds=0)
    ok = swarmctl("--json", "submit", "-f", str(fine), state_dir=node.state_dir)
    assert ok.returncode == 0, ok
    task = json.loads(ok.stdout)["task"]
    done = swarmctl("--json", "status", "--wait", task, state_dir=node.state_dir)
    assert json.loads(done.stdout)["deadline"]["reachable"] is True  # met
    assert node.counters().get("tasks_deadline_refused") == 1
