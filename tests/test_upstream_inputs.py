"""``upstream_inputs``: an upstream subtask's artifacts shipped into a downstream
subtask's directory, through real daemons (the artifact travels from the worker that
made it to the coordinator with the result, then out with the next dispatch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from swarmd.core.jobspec import JobError, parse_job
from tests.harness import Daemon, new_secret, swarmctl, wait_until

JOB = """
name = "pipeline"

[[subtask]]
id = "make"
kind = "shell"
run = [
    "sh", "-c",
    "mkdir -p d && printf 'model bytes' >model.bin && echo x >d/y && head -c 204800 /dev/zero >d/w",
]
outputs = ["model.bin", "d"]

[[subtask]]
id = "use"
kind = "shell"
after = ["make"]
upstream_inputs = ["make/model.bin", "make/d/"]
run = ["sh", "-c", "cat model.bin; echo; cat d/y"]

[[subtask]]
id = "missing"
kind = "shell"
after = ["make"]
upstream_inputs = ["make/nope.txt"]
run = ["true"]
"""


def _final(node: Daemon, task: str) -> dict[str, Any] | None:
    out = swarmctl("--json", "result", task, state_dir=node.state_dir)
    if out.returncode != 0:
        return None
    body: dict[str, Any] = json.loads(out.stdout)
    return body if body["state"] in ("done", "failed", "cancelled") else None


def test_an_upstream_artifact_is_shipped_in(tmp_path: Path, daemons: list[Daemon]) -> None:
    secret = new_secret()
    coord = Daemon(tmp_path, "c", secret=secret, config="[node]\nallow_shell = false\n")
    worker = Daemon(tmp_path, "w", secret=secret)
    daemons += [coord, worker]
    for d in daemons:
        d.start()
    for d in daemons:
        d.wait_ready()
    wait_until(lambda: coord.states() == {"c": "alive", "w": "alive"}, 15, what="two nodes")
    job = tmp_path / "job.toml"
    job.write_text(JOB)
    submitted = swarmctl("--json", "submit", "-f", str(job), state_dir=coord.state_dir)
    assert submitted.returncode == 0, submitted
    task = json.loads(submitted.stdout)["task"]
    result = wait_until(lambda: _final(coord, task), 60, 0.2, "the task to end")
    use = result["subtasks"]["use"]
    assert (use["state"], use["stdout"]) == ("done", "model bytes\nx\n"), use
    assert use["peer"] == "w"
    # What it took in (200 KiB and more) was priced as inputs moving from c to w.
    explained = json.loads(swarmctl("--json", "explain", task, state_dir=coord.state_dir).stdout)
    [row] = [s for s in explained["subtasks"] if s["id"] == "use"]
    basis = {c["peer"]: c["basis"] for c in row["candidates"]}
    assert ", inputs " in basis["w"], basis
    missing = result["subtasks"]["missing"]
    assert missing["state"] == "failed", missing
    status = json.loads(swarmctl("--json", "status", task, state_dir=coord.state_dir).stdout)
    [row] = [s for s in status["subtasks"] if s["id"] == "missing"]
    assert "subtask make left no artifact nope.txt" in row["error"], row


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("make", "expected SUBTASK/PATH"),
        ("other/x", 'unknown subtask "other"'),
        ("use/x", "cannot use its own artifacts"),
        ("late/x", 'subtask "late" is not upstream of "use"; add it to "after"'),
        ("make/../x", 'no ".." parts'),
    ],
)
def test_bad_upstream_inputs_are_refused(entry: str, message: str) -> None:
    subtasks = [
        {"id": "make", "kind": "shell", "run": ["true"]},
        {"id": "late", "kind": "shell", "run": ["true"]},
        {"id": "use", "kind": "shell", "run": ["true"], "after": ["make"]},
    ]
    subtasks[2]["upstream_inputs"] = [entry]
    with pytest.raises(JobError) as err:
        parse_job({"name": "j", "subtasks": subtasks})
    assert message in str(err.value) and "upstream_inputs" in str(err.value)


def test_two_entries_landing_at_one_path_are_refused() -> None:
    subtasks = [
        {"id": "a", "kind": "shell", "run": ["true"]},
        {"id": "b", "kind": "shell", "run": ["true"]},
        {
            "id": "c",
            "kind": "shell",
            "run": ["true"],
            "after": ["a", "b"],
            "upstream_inputs": ["a/out.txt", "b/out.txt"],
        },
    ]
    with pytest.raises(JobError, match="lands at"):
        parse_job({"name": "j", "subtasks": subtasks})
