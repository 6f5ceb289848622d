"""The Ray engine's translation to and from the Jobs API (swarmd/engines/ray_jobs.py),
with no Ray: the wrapper runs under a real ``sh``; the documents are the shapes Ray
2.60 answers (tests/test_engine_ray.py runs the same against a real head). And the
engine (swarmd/engines/ray.py) with no Ray to reach."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest

from swarmd.engines import EngineError, JobSpec, JobStatus
from swarmd.engines.ray import RayEngine
from swarmd.engines.ray_jobs import (
    CD_FAILED,
    NO_HISTORY_WAIT_S,
    Resources,
    capacity_of,
    entrypoint,
    estimate_wait,
    exit_from_log,
    job_lengths,
    parse_cluster_status,
    parse_state_nodes,
    phase_of,
    runtime_env_problem,
    script,
    submission_id,
    submit_body,
)
from tests.harness import free_port


def _job(workdir: Path, *argv: str, **env: str) -> JobSpec:
    return JobSpec(name="swarmd-t1-s/1-0", workdir=workdir, argv=argv, env=env)


def _run_wrapper(job: JobSpec) -> subprocess.CompletedProcess[str]:
    path = job.workdir / "job.sh"
    path.write_text(script(job))
    return subprocess.run(["sh", str(path)], capture_output=True, text=True, timeout=30)


def test_wrapper_runs_the_command_in_its_directory_with_the_env(tmp_path: Path) -> None:
    odd = 'it\'s $HOME `x` "q" \\ ;'
    job = _job(
        tmp_path, "sh", "-c", 'echo "v=$ODD"; pwd; echo oops >&2; echo made >out.txt', ODD=odd
    )
    done = _run_wrapper(job)
    assert done.returncode == 0
    assert (tmp_path / "stdout").read_text() == f"v={odd}\n{tmp_path}\n"
    assert (tmp_path / "stderr").read_text() == "oops\n"
    assert (tmp_path / "out.txt").read_text() == "made\n"
    assert (tmp_path / "exit").read_text().strip() == "0"
    assert exit_from_log(done.stdout) == 0


def test_wrapper_keeps_a_non_zero_exit_code(tmp_path: Path) -> None:
    done = _run_wrapper(_job(tmp_path, "sh", "-c", "exit 3"))
    assert done.returncode == 3
    assert (tmp_path / "exit").read_text().strip() == "3"
    assert exit_from_log("Running entrypoint ...\n" + done.stdout) == 3


def test_wrapper_that_cannot_enter_its_directory_leaves_no_exit_code(tmp_path: Path) -> None:
    job = _job(tmp_path / "gone", "true")
    path = tmp_path / "job.sh"
    path.write_text(script(job))
    done = subprocess.run(["sh", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == CD_FAILED
    assert exit_from_log(done.stdout) is None
    assert "cannot enter" in done.stdout


def test_entrypoint_runs_the_wrapper_or_says_the_directory_is_not_visible(
    tmp_path: Path,
) -> None:
    job = _job(tmp_path, "sh", "-c", "exit 4")
    (tmp_path / "job.sh").write_text(script(job))
    ran = subprocess.run(["sh", "-c", entrypoint(job)], capture_output=True, text=True)
    assert ran.returncode == 4 and exit_from_log(ran.stdout) == 4
    elsewhere = _job(tmp_path / "not-here", "true")
    ran = subprocess.run(["sh", "-c", entrypoint(elsewhere)], capture_output=True, text=True)
    assert ran.returncode == CD_FAILED and "is not visible on" in ran.stdout
    info = {"status": "FAILED", "driver_exit_code": CD_FAILED, "message": ran.stdout}
    assert "does not see the attempt's directory" in phase_of(info, None).reason


def _ray_stop(proc: subprocess.Popen[bytes]) -> None:
    """What Ray 2.60's job supervisor does on a stop: SIGTERM to the entrypoint and the
    descendants it has at that moment (not its process group), SIGKILL 3 s later."""
    try:
        victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 3
    while any(_alive(v) for v in victims) and time.monotonic() < deadline:
        time.sleep(0.02)
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()


@pytest.mark.parametrize("delay_ms", [0, 1, 2, 4, 8, 16, 50])
def test_a_stop_as_the_job_starts_leaves_no_command_running(tmp_path: Path, delay_ms: int) -> None:
    """Ray stops a job that was queued at the moment its turn comes: it signals only the
    processes already there. The wrapper must take its command down with it whenever the
    signal lands (seen in CI: the command's ``sleep`` outlived a cancelled job)."""
    marker = f"300.{uuid.uuid4().int % 10**9:09d}"  # in both the shell's and sleep's argv
    job = _job(tmp_path, "sh", "-c", f"sleep {marker}; :")
    (tmp_path / "job.sh").write_text(script(job))
    proc = subprocess.Popen(
        entrypoint(job), shell=True, start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        time.sleep(delay_ms / 1000)  # where in the start the stop lands, not a wait
        _ray_stop(proc)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while _with_marker(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _with_marker(marker) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _with_marker(marker: str) -> list[psutil.Process]:
    return [
        p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or ())
    ]


def test_submission_id_is_the_same_for_the_same_attempt_only(tmp_path: Path) -> None:
    a = _job(tmp_path / "a", "true")
    b = _job(tmp_path / "b", "true")
    assert submission_id(a) == submission_id(_job(tmp_path / "a", "false"))
    assert submission_id(a) != submission_id(b)
    assert submission_id(a).startswith("swarmd-t1-s_1-0-")  # "/" is not in a URL path


def test_submit_body_asks_for_the_job_resources(tmp_path: Path) -> None:
    job = JobSpec("j", tmp_path, ("true",), {"SECRET": "x"}, cpus=2, gpus=1, mem_mb=512)
    body = submit_body(job, {"env_vars": {"A": "1"}})
    assert body["entrypoint"].endswith(f"exec sh {tmp_path / 'job.sh'}")
    assert body["entrypoint_num_cpus"] == 2
    assert body["entrypoint_num_gpus"] == 1
    assert body["entrypoint_memory"] == 512 * 1024 * 1024
    assert body["runtime_env"] == {"env_vars": {"A": "1"}}
    assert body["metadata"]["swarmd_workdir"] == str(tmp_path)
    assert body["metadata"]["swarmd_cpus"] == "2" and body["metadata"]["swarmd_mem_mb"] == "512"
    assert all(isinstance(v, str) for v in body["metadata"].values())  # Ray wants strings
    assert "SECRET" not in repr(body)  # the env stays in the 0700 script
    plain = submit_body(JobSpec("j", tmp_path, ("true",)), {})
    assert "entrypoint_num_gpus" not in plain and "runtime_env" not in plain


@pytest.mark.parametrize(
    ("info", "code", "want"),
    [
        ({"status": "PENDING"}, None, JobStatus("queued", "PENDING")),
        ({"status": "RUNNING"}, None, JobStatus("running")),
        ({"status": "SUCCEEDED", "driver_exit_code": 0}, 0, JobStatus("succeeded", "", 0)),
        ({"status": "SUCCEEDED"}, None, JobStatus("succeeded", "", 0)),
        ({"status": "FAILED", "driver_exit_code": 3}, 3, JobStatus("failed", "", 3)),
        ({"status": "STOPPED"}, None, JobStatus("cancelled", "stopped")),
        ({"status": "what"}, None, JobStatus("unknown", "what")),
    ],
)
def test_phase_of(info: dict[str, object], code: int | None, want: JobStatus) -> None:
    assert phase_of(info, code) == want


def test_a_job_ray_failed_before_the_command_ended_is_an_engine_failure() -> None:
    died = {
        "status": "FAILED",
        "error_type": "JOB_SUPERVISOR_ACTOR_DIED",
        "message": "Job supervisor actor died\nmore",
    }
    status = phase_of(died, None)
    assert status.phase == "engine_failed"
    assert status.reason == "JOB_SUPERVISOR_ACTOR_DIED: Job supervisor actor died"
    no_dir = {"status": "FAILED", "driver_exit_code": CD_FAILED, "message": "exit code 111"}
    assert "does not see" in phase_of(no_dir, None).reason


CLUSTER = {
    "data": {
        "clusterStatus": {
            "loadMetricsReport": {
                "usage": {
                    "CPU": [1.5, 4.0],
                    "GPU": [1.0, 2.0],
                    "memory": [1024.0 * 1024 * 1024, 3072.0 * 1024 * 1024],
                    "node:127.0.0.1": [0.0, 1.0],
                }
            }
        }
    }
}


def test_cluster_status_gives_idle_resources() -> None:
    assert parse_cluster_status(CLUSTER) == Resources(
        cpus_idle=2, cpus_total=4, gpus_idle=1, mem_idle_mb=2048, gpus_total=2, mem_total_mb=3072
    )
    no_gpu = {"data": {"clusterStatus": {"loadMetricsReport": {"usage": {"CPU": [0, 2]}}}}}
    assert parse_cluster_status(no_gpu) == Resources(2, 2, 0, 0)
    with pytest.raises(ValueError):
        parse_cluster_status({"result": False, "msg": "boom"})


def test_state_api_nodes_give_the_alive_totals() -> None:
    node = {"state": "ALIVE", "resources_total": {"CPU": 2.0, "memory": 2048.0 * 2**20}}
    gpu_node = {"state": "ALIVE", "resources_total": {"CPU": 8.0, "GPU": 1.0}}
    dead = {"state": "DEAD", "resources_total": {"CPU": 64.0}}
    doc = {"data": {"result": {"result": [node, gpu_node, dead]}}}
    assert parse_state_nodes(doc) == Resources(10, 10, 1, 2048, gpus_total=1, mem_total_mb=2048)
    with pytest.raises(ValueError):
        parse_state_nodes({"data": {}})


def _finished(start_s: float, length_s: float) -> dict[str, object]:
    start = int(start_s * 1000)
    return {"status": "SUCCEEDED", "start_time": start, "end_time": start + int(length_s * 1000)}


def test_wait_is_zero_with_an_idle_cpu_and_grows_with_the_queue() -> None:
    idle = Resources(cpus_idle=1, cpus_total=2, gpus_idle=0, mem_idle_mb=0)
    full = Resources(cpus_idle=0, cpus_total=2, gpus_idle=0, mem_idle_mb=0)
    lengths = job_lengths([_finished(10, 4), _finished(20, 8), _finished(5, 6), {"status": "x"}])
    assert lengths == [6.0, 4.0, 8.0]  # by end time: 11, 14, 28 s
    assert estimate_wait(idle, running=1, pending=0, lengths=lengths) == 0.0
    assert estimate_wait(full, running=2, pending=0, lengths=lengths) == 6.0 / 2
    assert estimate_wait(full, running=2, pending=3, lengths=lengths) == 6.0 * 4 / 2
    assert estimate_wait(full, running=2, pending=0, lengths=[]) == NO_HISTORY_WAIT_S / 2


def test_capacity_counts_running_and_pending_jobs() -> None:
    jobs = [{"status": "RUNNING"}, {"status": "PENDING"}, _finished(0, 10), "junk"]
    cap = capacity_of(parse_cluster_status(CLUSTER), jobs)
    assert (cap.cpus_idle, cap.gpus_idle, cap.mem_idle_mb) == (2, 1, 2048)
    assert (cap.running, cap.queued) == (1, 1)
    assert cap.est_wait_s == 10.0 * 2 / 4
    with pytest.raises(ValueError):
        capacity_of(parse_cluster_status(CLUSTER), {"not": "a list"})


def test_capacity_counts_what_running_jobs_reserved_before_ray_reports_it() -> None:
    """Ray's usage report lags: it says 2.5 CPUs idle, but swarmd's running jobs reserved
    3 of the 4 (and all the GPUs, 2.5 GiB of the 3), as their metadata says."""

    def job(status: str, cpus: int, gpus: int = 0, mem_mb: int = 0) -> dict[str, object]:
        spec = JobSpec("j", Path("/w"), ("true",), cpus=cpus, gpus=gpus, mem_mb=mem_mb)
        return {"status": status, "metadata": submit_body(spec, {})["metadata"]}

    jobs = [
        job("RUNNING", 2, gpus=2),
        job("RUNNING", 1, mem_mb=2560),
        job("PENDING", 4),
        job("SUCCEEDED", 4),
        {"status": "RUNNING", "metadata": {"swarmd_cpus": "junk"}},  # not counted
        {"status": "RUNNING", "metadata": None},
    ]
    cap = capacity_of(parse_cluster_status(CLUSTER), jobs)
    assert (cap.cpus_idle, cap.gpus_idle, cap.mem_idle_mb) == (1, 0, 512)


def test_runtime_env_that_needs_an_upload_is_refused() -> None:
    assert runtime_env_problem({"pip": ["numpy"], "env_vars": {"A": "1"}}) is None
    assert runtime_env_problem({"working_dir": "s3://bucket/x.zip"}) is None
    assert "local path" in (runtime_env_problem({"working_dir": "./src"}) or "")
    assert "local path" in (runtime_env_problem({"py_modules": ["s3://a.zip", "lib"]}) or "")
    assert "table" in (runtime_env_problem(["pip"]) or "")


def test_unreachable_ray_is_an_engine_error(tmp_path: Path) -> None:
    job = _job(tmp_path, "true")

    async def go() -> list[str]:
        engine = RayEngine("ray", address=f"http://127.0.0.1:{free_port()}")
        errors = []
        try:
            for call in (engine.capacity(), engine.submit(job), engine.status("x")):
                try:
                    await call
                except EngineError as exc:
                    errors.append(str(exc))
            return errors
        finally:
            await engine.close()

    errors = asyncio.run(go())
    assert len(errors) == 3 and all("ConnectError" in e for e in errors), errors


def test_bad_address_or_runtime_env_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        RayEngine("ray", address="127.0.0.1:8265")
    with pytest.raises(ValueError, match="local path"):
        RayEngine("ray", address="http://127.0.0.1:8265", runtime_env={"working_dir": "."})
