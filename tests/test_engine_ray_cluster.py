"""A node fronting a real Ray cluster (issue 15): subtasks run as Ray jobs.

One real Ray head on loopback (tests/ray_cluster.py: Ray 2.60 from PyPI, 2 CPUs) and
two real daemons: ``login`` fronts it as ``[engines.ray]`` (the Jobs API over HTTP),
``lan`` is a plain peer and coordinates. Shown: a subtask naming the engine runs as a
Ray job (its stdout shows the ``RAY_ADDRESS`` Ray gives a job's driver) with an input
shipped in (rendered from an upstream subtask's result) and an output collected back;
``peers`` shows the engine; while Ray holds the job PENDING ``status`` says ``queued
on ray (job ..., reason PENDING)``; a cancel leaves no job running in Ray; a job Ray
loses (stopped outside swarmd, or its supervisor process killed as when its node dies)
is an attempt lost and is retried.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import pytest

from tests.engine_swarm import EngineSwarm, login_and_lan
from tests.harness import swarmctl, wait_until
from tests.ray_cluster import CPUS, RayHead, job_supervisor

pytestmark = pytest.mark.slow


@dataclass
class Swarm(EngineSwarm):
    ray: RayHead
    finish_s: ClassVar[float] = 90.0

    def ray_jobs(self, *states: str) -> list[str]:
        jobs = self.ray.get_json("/api/jobs/")
        assert isinstance(jobs, list)
        return [str(j["submission_id"]) for j in jobs if j["status"] in states]


@pytest.fixture(scope="module")
def swarm(ray_cluster: RayHead, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    root = tmp_path_factory.mktemp("ray-swarm")
    engine = (
        f'[engines.ray]\nkind = "ray"\naddress = "{ray_cluster.address}"\n'
        f'workdir = "{root / "work"}"\npoll = "1s"\n'
    )
    with login_and_lan(root, engine) as (login, lan):
        yield Swarm(login=login, lan=lan, root=root, ray=ray_cluster)


def test_subtasks_run_as_ray_jobs_with_inputs_in_and_outputs_back(swarm: Swarm) -> None:
    engines = wait_until(swarm.engines_seen, 30, what="login's engine in gossip")
    assert engines[0]["name"] == "ray" and engines[0]["kind"] == "ray"
    assert engines[0]["cpus_idle"] == CPUS and engines[0]["queue"] == 0
    table = swarmctl("peers", state_dir=swarm.lan.state_dir).stdout
    assert 'login fronts ray "ray":' in table

    (swarm.root / "j1").mkdir()
    (swarm.root / "j1" / "data.txt").write_text("upstream said: {{ make.stdout }}\n")
    task = swarm.submit(
        """
name = "on-ray"
[[subtask]]
id = "make"
kind = "shell"
run = ["sh", "-c", "echo hello-from-make; printf weights > model.bin"]
outputs = ["model.bin"]

[[subtask]]
id = "crunch"
kind = "shell"
engine = "ray"
after = ["make"]
inputs = ["data.txt"]
upstream_inputs = ["make/model.bin"]
outputs = ["size.txt"]
run = ["sh", "-c", '''
echo ray=$RAY_ADDRESS; cat data.txt
echo model=$(cat model.bin); wc -c < data.txt > size.txt''']
""",
        "j1",
    )
    status = swarm.finished(task)
    assert status["state"] == "done", (status, swarm.logs())
    crunch = next(s for s in status["subtasks"] if s["id"] == "crunch")
    assert crunch["peer"] == "login" and crunch["engine"] == "ray"
    result = swarm.ctl("result", task)["subtasks"]["crunch"]
    assert f"ray={swarm.ray.gcs_address}\n" in result["stdout"], result
    assert "upstream said: hello-from-make" in result["stdout"]
    assert "model=weights" in result["stdout"]  # make's artifact, shipped in
    assert result["artifacts"] == ["size.txt"] and result["exit_code"] == 0
    out = swarm.root / "out"
    got = swarmctl("result", task, "--out", str(out), state_dir=swarm.lan.state_dir)
    assert got.returncode == 0, got.stderr
    assert (out / "crunch" / "size.txt").read_text().strip() == "31"  # len of data.txt
    explain = swarm.ctl("explain", task)
    rows = next(s for s in explain["subtasks"] if s["id"] == "crunch")["candidates"]
    chosen = next(r for r in rows if r["chosen"])
    assert chosen["engine"] == "ray" and chosen["basis"].startswith("engine ray (ray)")
    ran = [j for j in swarm.ray.get_json("/api/jobs/") if "crunch" in j["submission_id"]]  # type: ignore[union-attr]
    assert [j["status"] for j in ran] == ["SUCCEEDED"], ran


def _block_ray(swarm: Swarm) -> str:
    """A job outside swarmd that takes every CPU of the cluster."""
    body = json.dumps({"entrypoint": "sleep 300", "entrypoint_num_cpus": CPUS}).encode()
    request = urllib.request.Request(
        swarm.ray.address + "/api/jobs/", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        job_id = str(json.loads(reply.read())["submission_id"])
    wait_until(lambda: job_id in swarm.ray_jobs("RUNNING"), 60, what="the blocker running")
    return job_id


def _stop_ray_job(swarm: Swarm, job_id: str) -> None:
    request = urllib.request.Request(swarm.ray.address + f"/api/jobs/{job_id}/stop", b"", {})
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.status == 200


def _ray_job_of(swarm: Swarm, task: str, sid: str, state: str) -> str | None:
    note = swarm.subtask(task, sid).get("engine_note") or ""
    found = re.match(rf"{state} on ray \(job (\S+?)[,)]", note)
    return found.group(1) if found else None


def test_status_shows_the_queue_and_cancel_leaves_no_job(swarm: Swarm) -> None:
    blocker = _block_ray(swarm)
    task = swarm.submit(
        """
[[subtask]]
id = "long"
kind = "shell"
engine = "ray"
run = ["sh", "-c", "echo started; sleep 120"]
""",
        "j2",
    )
    job = wait_until(lambda: _ray_job_of(swarm, task, "long", "queued"), 60, what="queued")
    note = swarm.subtask(task, "long")["engine_note"]
    assert note == f"queued on ray (job {job}, reason PENDING)"
    assert "queued on ray (job" in swarmctl("status", task, state_dir=swarm.lan.state_dir).stdout
    _stop_ray_job(swarm, blocker)
    wait_until(lambda: _ray_job_of(swarm, task, "long", "running"), 60, what="running")
    assert job in swarm.ray_jobs("RUNNING")
    swarm.ctl("cancel", task)
    assert swarm.finished(task)["state"] == "cancelled"
    wait_until(lambda: swarm.ray_jobs("RUNNING", "PENDING") == [], 30, what="no job left")


def _retried(swarm: Swarm, name: str, lose: str) -> None:
    """A job whose first attempt Ray loses (``lose``: how) finishes on its second."""
    task = swarm.submit(
        """
[[subtask]]
id = "flaky"
kind = "shell"
engine = "ray"
retries = 2
run = ["sh", "-c", "if [ $SWARMD_ATTEMPT = 1 ]; then sleep 120; fi; echo attempt=$SWARMD_ATTEMPT"]
""",
        name,
    )
    job = wait_until(lambda: _ray_job_of(swarm, task, "flaky", "running"), 60, what="running")
    if lose == "stop":
        _stop_ray_job(swarm, job)
    else:  # the Ray worker process that runs the job's entrypoint, as when its node dies
        work = str(swarm.root / "work")
        wait_until(lambda: job_supervisor(work), 30, what="the job's supervisor").kill()
    status = swarm.finished(task)
    assert status["state"] == "done", (status, swarm.logs())
    result = swarm.ctl("result", task)["subtasks"]["flaky"]
    assert result["stdout"] == "attempt=2\n"
    reasons = next(s for s in swarm.ctl("explain", task)["subtasks"] if s["id"] == "flaky")
    assert any(f"job {job}" in r for r in reasons["reasons"]), reasons


def test_a_job_stopped_outside_swarmd_is_retried(swarm: Swarm) -> None:
    _retried(swarm, "j3", "stop")


def test_a_job_whose_supervisor_dies_is_retried(swarm: Swarm) -> None:
    _retried(swarm, "j4", "kill")


def test_a_restarted_worker_follows_its_job_again_without_submitting_twice(
    swarm: Swarm,
) -> None:
    task = swarm.submit(
        """
[[subtask]]
id = "steady"
kind = "shell"
engine = "ray"
run = ["sh", "-c", "sleep 6; echo done-$SWARMD_ATTEMPT"]
""",
        "j5",
    )
    job = wait_until(lambda: _ray_job_of(swarm, task, "steady", "running"), 60, what="running")
    swarm.login.kill()  # a crash: the job goes on in Ray
    assert job in swarm.ray_jobs("RUNNING")
    swarm.login.start().wait_ready()
    status = swarm.finished(task)
    assert status["state"] == "done", (status, swarm.logs())
    assert status["subtasks"][0]["attempts"] == 1
    assert swarm.ctl("result", task)["subtasks"]["steady"]["stdout"] == "done-1\n"
    ids = swarm.ray_jobs("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED")
    assert sum(task[:12] in i for i in ids) == 1, ids  # one job for the task, ever


def test_a_timeout_stops_the_ray_job(swarm: Swarm) -> None:
    task = swarm.submit(
        """
[[subtask]]
id = "slow"
kind = "shell"
engine = "ray"
timeout = "6s"
run = ["sh", "-c", "echo started; sleep 120"]
""",
        "j6",
    )
    status = swarm.finished(task)
    assert status["state"] == "failed", (status, swarm.logs())
    assert status["subtasks"][0]["error"] == "timed out after 6s", status
    assert status["subtasks"][0]["attempts"] == 1  # the command's failure: not retried
    job = swarm.ctl("result", task)["subtasks"]["slow"]["usage"]["engine_job"]
    wait_until(lambda: job in swarm.ray_jobs("STOPPED"), 30, what=f"{job} STOPPED in Ray")
