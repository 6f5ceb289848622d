"""A node fronting a real Slurm cluster (issue 15): subtasks run as Slurm jobs.

One real one-node Slurm 22.05 cluster (tests/slurm_cluster.py: munged, slurmctld,
slurmd) and two real daemons: ``login`` fronts it as ``[engines.slurm]``, ``lan`` is a
plain peer and coordinates. Shown: a subtask naming the engine runs under Slurm (its
stdout shows ``SLURM_JOB_ID``) with an input shipped in (rendered from an upstream
subtask's result) and an output collected back; ``peers`` shows the engine; while
Slurm holds a job ``status`` says ``queued on slurm (job N, reason Resources)``; a
cancel leaves no job in ``squeue``; a job Slurm loses (cancelled outside swarmd, or its
node set DOWN) is an attempt lost and is retried.

Skipped unless root with slurm-wlm and munge installed (.ci/run installs them).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.engine_swarm import EngineSwarm, login_and_lan
from tests.harness import swarmctl, wait_until
from tests.slurm_cluster import SlurmCluster, slurm_cluster, unavailable

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(unavailable() is not None, reason=unavailable() or ""),
]


@dataclass
class Swarm(EngineSwarm):
    cluster: SlurmCluster


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    root = tmp_path_factory.mktemp("slurm-swarm")
    with slurm_cluster() as cluster:
        engine = (
            '[engines.slurm]\nkind = "slurm"\n'
            f'slurm_conf = "{cluster.conf}"\nworkdir = "{cluster.root / "work"}"\n'
            'poll = "1s"\n'
        )
        with login_and_lan(root, engine) as (login, lan):
            yield Swarm(login=login, lan=lan, root=root, cluster=cluster)


def test_subtasks_run_as_slurm_jobs_with_inputs_in_and_outputs_back(swarm: Swarm) -> None:
    engines = wait_until(swarm.engines_seen, 20, what="login's engine in gossip")
    assert engines[0]["name"] == "slurm" and engines[0]["kind"] == "slurm"
    assert engines[0]["cpus_idle"] >= 1 and engines[0]["queue"] == 0
    table = swarmctl("peers", state_dir=swarm.lan.state_dir).stdout
    assert 'login fronts slurm "slurm":' in table and "CPUs" in table

    (swarm.root / "j1").mkdir()
    (swarm.root / "j1" / "data.txt").write_text("upstream said: {{ make.stdout }}\n")
    task = swarm.submit(
        """
name = "hpc"
[[subtask]]
id = "make"
kind = "shell"
run = ["sh", "-c", "echo hello-from-make; printf weights > model.bin"]
outputs = ["model.bin"]

[[subtask]]
id = "crunch"
kind = "shell"
engine = "slurm"
after = ["make"]
inputs = ["data.txt"]
upstream_inputs = ["make/model.bin"]
outputs = ["size.txt"]
run = ["sh", "-c", '''
echo job=$SLURM_JOB_ID; cat data.txt
echo model=$(cat model.bin); wc -c < data.txt > size.txt''']
""",
        "j1",
    )
    status = swarm.finished(task)
    assert status["state"] == "done", (status, swarm.logs())
    crunch = next(s for s in status["subtasks"] if s["id"] == "crunch")
    assert crunch["peer"] == "login" and crunch["engine"] == "slurm"
    result = swarm.ctl("result", task)["subtasks"]["crunch"]
    assert re.search(r"^job=\d+$", result["stdout"], re.M), result
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
    assert chosen["engine"] == "slurm" and chosen["basis"].startswith("engine slurm (slurm)")
    lan_row = next(r for r in rows if r["peer"] == "lan")
    assert 'fronts no engine "slurm"' in lan_row["why_not"]
    assert swarm.cluster.jobs() == []


def _slurm_job_of(swarm: Swarm, task: str, sid: str, state: str) -> str | None:
    note = swarm.subtask(task, sid).get("engine_note") or ""
    found = re.match(rf"{state} on slurm \(job (\d+)", note)
    return found.group(1) if found else None


def test_submit_wait_runs_one_command_on_slurm_like_ssh(swarm: Swarm) -> None:
    cmd = ["submit", "--wait", "--engine", "slurm", "--", "sh", "-c", "echo $SLURM_JOB_ID; exit 3"]
    done = swarmctl(*cmd, state_dir=swarm.lan.state_dir)
    assert done.returncode == 3, done.stderr
    assert re.fullmatch(r"\d+\n", done.stdout), done.stdout
    bad = swarmctl("submit", "--engine", "nope", "--", "true", state_dir=swarm.lan.state_dir)
    assert bad.returncode == 2 and 'no live peer fronts an engine "nope"' in bad.stderr


def test_status_shows_the_queue_and_cancel_leaves_no_job(swarm: Swarm) -> None:
    cpus = swarm.cluster.run("sinfo", "-h", "-o", "%c").stdout.strip()
    blocker = swarm.cluster.run(
        "sbatch",
        "--parsable",
        f"--cpus-per-task={cpus}",
        "--output=/dev/null",
        "--wrap",
        "sleep 300",
    ).stdout.strip()
    wait_until(lambda: (blocker, "RUNNING") in swarm.cluster.jobs(), 30, what="the blocker")
    task = swarm.submit(
        """
[[subtask]]
id = "long"
kind = "shell"
engine = "slurm"
run = ["sh", "-c", "echo started; sleep 120"]
""",
        "j2",
    )
    # Slurm says why once its scheduler has looked at the job (before: no reason)
    queued = r"queued on slurm \(job \d+, reason (Resources|Priority)\)"
    wait_until(
        lambda: re.fullmatch(queued, swarm.subtask(task, "long").get("engine_note") or ""),
        30,
        what="queued for Resources",
    )
    text = swarmctl("status", task, state_dir=swarm.lan.state_dir).stdout
    assert "queued on slurm (job" in text
    swarm.cluster.run("scancel", blocker)
    job = wait_until(lambda: _slurm_job_of(swarm, task, "long", "running"), 30, what="running")
    assert (job, "RUNNING") in swarm.cluster.jobs()

    def logged() -> bool:  # the job's output while it runs (swarmctl logs [-f])
        out = swarmctl("logs", task, "long", state_dir=swarm.lan.state_dir).stdout
        return out == "started\n"

    wait_until(logged, 30, 0.5, what="the running job's output in logs")
    swarm.ctl("cancel", task)
    assert swarm.finished(task)["state"] == "cancelled"
    wait_until(lambda: swarm.cluster.jobs() == [], 15, what="no job left in squeue")


def _retried(swarm: Swarm, name: str, lose: str) -> None:
    """A job whose first attempt Slurm loses (``lose``: how) finishes on its second."""
    task = swarm.submit(
        """
[[subtask]]
id = "flaky"
kind = "shell"
engine = "slurm"
retries = 2
run = ["sh", "-c", "if [ $SWARMD_ATTEMPT = 1 ]; then sleep 120; fi; echo attempt=$SWARMD_ATTEMPT"]
""",
        name,
    )
    job = wait_until(lambda: _slurm_job_of(swarm, task, "flaky", "running"), 30, what="running")
    if lose == "scancel":
        swarm.cluster.run("scancel", job)
    else:
        node = swarm.cluster.node
        swarm.cluster.run("scontrol", "update", f"nodename={node}", "state=down", "reason=test")
        wait_until(lambda: swarm.subtask(task, "flaky")["attempts"] == 2, 30, what="a retry")
        swarm.cluster.run("scontrol", "update", f"nodename={node}", "state=resume")
    status = swarm.finished(task, timeout=90)
    assert status["state"] == "done", (status, swarm.logs())
    result = swarm.ctl("result", task)["subtasks"]["flaky"]
    assert result["stdout"] == "attempt=2\n"
    reasons = next(s for s in swarm.ctl("explain", task)["subtasks"] if s["id"] == "flaky")
    assert any(f"job {job}" in r for r in reasons["reasons"]), reasons


def test_a_job_cancelled_outside_swarmd_is_retried(swarm: Swarm) -> None:
    _retried(swarm, "j3", "scancel")


def test_a_job_whose_node_goes_down_is_retried(swarm: Swarm) -> None:
    _retried(swarm, "j4", "node-down")


def test_a_restarted_worker_follows_its_job_again_without_submitting_twice(
    swarm: Swarm,
) -> None:
    task = swarm.submit(
        """
[[subtask]]
id = "steady"
kind = "shell"
engine = "slurm"
run = ["sh", "-c", "sleep 6; echo done-$SWARMD_ATTEMPT"]
""",
        "j5",
    )
    job = wait_until(lambda: _slurm_job_of(swarm, task, "steady", "running"), 30, what="running")
    swarm.login.kill()  # a crash: the job goes on in Slurm
    assert (job, "RUNNING") in swarm.cluster.jobs()
    swarm.login.start().wait_ready()
    status = swarm.finished(task, timeout=60)
    assert status["state"] == "done", (status, swarm.logs())
    assert status["subtasks"][0]["attempts"] == 1
    assert swarm.ctl("result", task)["subtasks"]["steady"]["stdout"] == "done-1\n"
    names = swarm.cluster.run("squeue", "-h", "-t", "all", "-o", "%j").stdout.split()
    assert sum(task[:12] in n for n in names) == 1, names  # one job for the task, ever
    assert "following" in swarm.login.log()


def test_a_timeout_cancels_the_job(swarm: Swarm) -> None:
    task = swarm.submit(
        """
[[subtask]]
id = "slow"
kind = "shell"
engine = "slurm"
timeout = "3s"
run = ["sleep", "120"]
""",
        "j6",
    )
    status = swarm.finished(task)
    slow = status["subtasks"][0]
    assert status["state"] == "failed" and "timed out after 3s" in slow["error"], status
    assert slow["attempts"] == 1  # the subtask's own failure: not retried
    wait_until(lambda: swarm.cluster.jobs() == [], 15, what="no job left in squeue")


def test_pricing_sends_work_to_the_engine_when_the_lan_is_full(swarm: Swarm) -> None:
    # 3 LAN slots (lan 2, login 1); subtasks of 4 s: past the third, a LAN slot is 5 s
    # away per subtask ahead, the idle engine 1 s: the later ones go to Slurm
    subtasks = "".join(
        f'[[subtask]]\nid = "w{i}"\nkind = "shell"\nestimate = "4s"\n'
        f'run = ["sh", "-c", "echo job=${{SLURM_JOB_ID:-none}}; sleep 4"]\n'
        for i in range(6)
    )
    task = swarm.submit(subtasks, "j7")
    status = swarm.finished(task, timeout=90)
    assert status["state"] == "done", (status, swarm.logs())
    on_engine = [s for s in status["subtasks"] if s.get("engine") == "slurm"]
    assert on_engine, status
    result = swarm.ctl("result", task)["subtasks"]
    for s in on_engine:
        assert re.match(r"job=\d+$", result[s["id"]]["stdout"].strip()), result[s["id"]]
    explain = swarm.ctl("explain", task)
    chosen = [
        next(r for r in s["candidates"] if r["chosen"])
        for s in explain["subtasks"]
        if s["id"] in {x["id"] for x in on_engine}
    ]
    assert all(r["basis"].startswith("engine slurm (slurm): queue") for r in chosen), chosen
