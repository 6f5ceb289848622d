"""The engine framework without a cluster: the Slurm command-line parsers, the job
script, [engines.NAME] config, engine pricing, the worker core's admission of engine
attempts, and the engine executor against a scripted adapter (a fake engine: the real
Slurm runs in tests/test_engine_slurm.py)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from datetime import datetime
from pathlib import Path

import msgspec
import pytest

from protocol.messages import Dispatch, NodeRef
from protocol.state import EngineState
from swarmd.config import load
from swarmd.config_engines import EngineConfig
from swarmd.config_table import ConfigError
from swarmd.core.capacity import EngineOffer, peer_from_gossip
from swarmd.core.engine_pricing import ENGINE_START_S, OVERFLOW_WHY
from swarmd.core.jobspec import parse_job
from swarmd.core.jobspec.single import single_command_job
from swarmd.core.pricing import Demand, PricingConfig, price
from swarmd.core.worker import WorkerConfig, WorkerCore
from swarmd.core.worker_effects import Start
from swarmd.engine_host import EngineHost
from swarmd.engines import EngineCapacity, EngineError, JobSpec, JobStatus
from swarmd.engines.slurm import (
    JobRow,
    Nodes,
    SlurmEngine,
    estimate_wait,
    gpu_count,
    parse_sacct,
    parse_sbatch,
    parse_sinfo,
    parse_squeue,
    parse_start_times,
    phase_of,
    script,
)
from swarmd.executors import ExecRequest, Limits
from swarmd.executors import engine as engine_executor
from swarmd.executors.output import LiveOutput

# ---------------------------------------------------------------- Slurm output parsing


def test_sbatch_parsable_id() -> None:
    assert parse_sbatch("1234\n") == "1234"
    assert parse_sbatch("77;cluster2\n") == "77"
    with pytest.raises(EngineError, match="no job id"):
        parse_sbatch("sbatch: error: Batch job submission failed\n")
    with pytest.raises(EngineError):
        parse_sbatch("")


def test_squeue_rows_and_raw_exit_status() -> None:
    out = "1|FAILED|NonZeroExitCode|768|/w/1|\n2|PENDING|Priority|0|/w/2|\n\nbad\n"
    rows = parse_squeue(out)
    assert rows == [
        JobRow("1", "FAILED", "NonZeroExitCode", 3, "/w/1"),
        JobRow("2", "PENDING", "Priority", 0, "/w/2"),
    ]


def test_sacct_rows() -> None:
    out = "5|COMPLETED|0:0|/w\n6|CANCELLED by 0|0:15|/x\n7|FAILED|3:0|\n"
    assert parse_sacct(out) == [
        JobRow("5", "COMPLETED", "", 0, "/w"),
        JobRow("6", "CANCELLED by 0", "", 0, "/x"),
        JobRow("7", "FAILED", "", 3, ""),
    ]


@pytest.mark.parametrize(
    ("row", "exit_file", "expected"),
    [
        (JobRow("1", "PENDING", "Resources"), None, JobStatus("queued", "Resources")),
        (JobRow("1", "PENDING", "None"), None, JobStatus("queued", "")),
        (JobRow("1", "RUNNING", "None"), None, JobStatus("running", "")),
        (JobRow("1", "COMPLETING", "None"), None, JobStatus("running", "")),
        (JobRow("1", "COMPLETED", "None", 0), 0, JobStatus("succeeded", "", 0)),
        # the wrapper's exit file is the truth (sacct --json says 0 for exit 3 in 22.05)
        (JobRow("1", "FAILED", "NonZeroExitCode", 0), 3, JobStatus("failed", "", 3)),
        # FAILED without an exit file: the command never ran: the engine failed it
        (JobRow("1", "FAILED", "NonZeroExitCode", 1), None, None),
        (JobRow("1", "NODE_FAIL", "None"), None, None),
        (JobRow("1", "PREEMPTED", "None"), None, None),
        (JobRow("1", "CANCELLED by 0", ""), None, JobStatus("cancelled", "cancelled by 0")),
        (JobRow("1", "TIMEOUT", ""), None, JobStatus("failed", "Slurm's time limit", None)),
        (JobRow("1", "WEIRD", ""), None, JobStatus("unknown", "WEIRD")),
    ],
)
def test_phase_of(row: JobRow, exit_file: int | None, expected: JobStatus | None) -> None:
    status = phase_of(row, exit_file)
    if expected is None:
        assert status.phase == "engine_failed" and status.reason.startswith(row.state)
    else:
        assert status == expected


def test_sinfo_counts_nodes_that_take_work_once() -> None:
    out = (
        "a|1/3/0/4|8000|2000|gpu:2|gpu:1|mixed|\n"
        "a|1/3/0/4|8000|2000|gpu:2|gpu:1|mixed|\n"  # in a second partition
        "b|0/8/0/8|16000|0|gpu:a100:4(S:0-1)|gpu:a100:0(IDX:N/A)|idle|\n"
        "c|0/0/4/4|8000|0|(null)|(null)|down*|\n"
        "d|0/2/0/2|4000|0|(null)|(null)|drained|\n"
    )
    assert parse_sinfo(out) == Nodes(cpus_idle=11, cpus_total=18, gpus_idle=5, mem_idle_mb=22000)
    assert gpu_count("gpu:a100:2(S:0-1),gpu:v100:1,license:3") == 3


def test_wait_estimate() -> None:
    idle = Nodes(2, 2, 0, 100)
    full = Nodes(0, 2, 0, 0)
    assert estimate_wait(idle, 0, 0, []) == 0.0
    assert estimate_wait(idle, 0, 1, []) == 0.0  # one waits, but two CPUs are idle
    assert estimate_wait(full, 2, 1, [30.0, 90.0]) == 90.0
    assert estimate_wait(full, 2, 1, []) == 60.0  # (1 ahead + this one) x 60 s / 2 CPUs
    now = 1893456000.0
    start = datetime.fromtimestamp(now + 60).isoformat(timespec="seconds")  # local time
    assert parse_start_times(f"{start}\nN/A\nUnknown\n", now=now) == [60.0]


def test_job_script_runs_the_argv_with_its_env_and_writes_the_exit_code(tmp_path: Path) -> None:
    job = JobSpec(
        name="t",
        workdir=tmp_path,
        argv=("sh", "-c", 'echo "$GREETING $1"; echo err >&2; exit 3', "x", "it's"),
        env={"GREETING": "hello 'world'"},
    )
    (tmp_path / "job.sh").write_text(script(job))
    done = subprocess.run(["sh", str(tmp_path / "job.sh")], cwd="/")
    assert done.returncode == 3
    assert (tmp_path / "stdout").read_text() == "hello 'world' it's\n"
    assert (tmp_path / "stderr").read_text() == "err\n"
    assert (tmp_path / "exit").read_text().strip() == "3"


def test_sbatch_options() -> None:
    engine = SlurmEngine("hpc", partition="gpu", account="lab", qos="hi", sbatch_args=("--x=1",))
    job = JobSpec("n", Path("/s/w"), ("true",), {}, cpus=2, gpus=1, mem_mb=512, timeout_s=30)
    argv = engine.sbatch_argv(job)
    assert argv[:3] == ["sbatch", "--parsable", "--no-requeue"]
    for option in ("--chdir=/s/w", "--cpus-per-task=2", "--mem=512M", "--gres=gpu:1"):
        assert option in argv
    assert "--time=3" in argv  # 30 s + the 120 s margin, in minutes, rounded up
    assert argv[-5:] == ["--partition=gpu", "--account=lab", "--qos=hi", "--x=1", "/s/w/job.sh"]


def test_a_missing_slurm_is_an_engine_error(tmp_path: Path) -> None:
    engine = SlurmEngine("hpc")

    async def go() -> None:
        with pytest.raises(EngineError, match="cannot run"):
            await engine.run(str(tmp_path / "no-such-sbatch"))

    asyncio.run(go())


def test_status_of_many_jobs_shares_one_squeue() -> None:
    engine = SlurmEngine("hpc")
    calls: list[tuple[str, ...]] = []

    async def fake_run(*argv: str, ok_codes: tuple[int, ...] = (0,)) -> tuple[int, str, str]:
        calls.append(argv)
        await asyncio.sleep(0.01)
        ids = argv[argv.index("-j") + 1].split(",")
        return 0, "".join(f"{i}|RUNNING|None|0|/w/{i}|\n" for i in ids if i != "99"), ""

    engine.run = fake_run  # type: ignore[method-assign]

    async def go() -> list[JobStatus]:
        return await asyncio.gather(*(engine.status(str(i)) for i in range(1, 11)))

    statuses = asyncio.run(go())
    assert all(s.phase == "running" for s in statuses)
    # one squeue for all ten (each registered itself before waiting for the query)
    assert len(calls) == 1 and calls[0][calls[0].index("-j") + 1] == "1,2,3,4,5,6,7,8,9,10"
    asyncio.run(go())  # again at once: the rows are still fresh
    assert len(calls) == 1


def test_engine_host_gossips_capacity_and_survives_a_broken_adapter(tmp_path: Path) -> None:
    class Broken(ScriptedEngine):
        async def capacity(self) -> EngineCapacity:
            raise RuntimeError("adapter bug")

    configs = [EngineConfig("good", "slurm"), EngineConfig("bad", "slurm", overflow_only=True)]
    adapters = {"good": ScriptedEngine([]), "bad": Broken([])}
    host = EngineHost(configs, tmp_path, logging.getLogger("t"), engines=adapters)  # type: ignore[arg-type]
    published: list[object] = []

    async def go() -> None:
        loop = asyncio.ensure_future(host.loop(lambda key, value: published.append((key, value))))
        await asyncio.sleep(0.2)
        loop.cancel()

    asyncio.run(go())
    key, values = published[0]  # type: ignore[misc]
    assert key == "engines"
    good, bad = values
    assert good["ok"] and good["cpus_idle"] == 1 and "error" not in good
    assert not bad["ok"] and bad["error"] == "adapter bug" and bad["overflow_only"]
    assert host.workdirs["good"] == tmp_path / "engines" / "good"
    for entry in values:
        msgspec.convert(entry, EngineState)  # what it gossips passes the schema


# ---------------------------------------------------------------- config


def test_engines_config(tmp_path: Path) -> None:
    path = tmp_path / "swarmd.toml"
    path.write_text(
        '[engines.hpc]\nkind = "slurm"\npartition = "gpu"\nworkdir = "/shared/s"\n'
        'sbatch_args = ["--account=lab"]\noverflow_only = true\npoll = "2s"\n'
        '[engines.r]\nkind = "ray"\naddress = "http://127.0.0.1:8265/"\n'
    )
    cfg = load(path, {}, state_dir=tmp_path)
    hpc, ray = cfg.engines
    assert (hpc.name, hpc.kind, hpc.partition, hpc.sbatch_args) == (
        "hpc",
        "slurm",
        "gpu",
        ("--account=lab",),
    )
    assert hpc.overflow_only and hpc.poll_s == 2.0 and hpc.workdir == Path("/shared/s")
    assert ray.address == "http://127.0.0.1:8265" and ray.workdir_in(tmp_path).name == "r"


CONTRACT_ENGINES = """\
[engines.hpc]
kind = "slurm"                 # slurm | ray
partition = "gpu"
workdir = "/shared/swarmd"     # visible to the compute nodes
sbatch_args = ["--account=lab"]
overflow_only = false

[engines.ray]
kind = "ray"
address = "http://127.0.0.1:8265"
"""


def test_the_contract_engines_example(tmp_path: Path) -> None:
    path = tmp_path / "swarmd.toml"
    path.write_text(CONTRACT_ENGINES)
    hpc, ray = load(path, {}, state_dir=tmp_path).engines
    assert (hpc.kind, hpc.partition, hpc.workdir, hpc.overflow_only) == (
        "slurm",
        "gpu",
        Path("/shared/swarmd"),
        False,
    )
    assert (ray.kind, ray.address, ray.max_jobs, ray.poll_s) == (
        "ray",
        "http://127.0.0.1:8265",
        64,
        5.0,
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('kind = "k8s"', "kind: expected one of slurm, ray"),
        ('kind = "slurm"\nworkdir = "rel"', "workdir: expected an absolute path"),
        ('kind = "slurm"\nsbatch_args = ["x"]', "sbatch_args: expected a list of sbatch"),
        ('kind = "slurm"\npartiton = "x"', "unknown key(s) partiton"),
        ('kind = "ray"', "address: missing"),
        ('kind = "slurm"\nmax_jobs = 0', "max_jobs: expected 1 to"),
        (
            'kind = "ray"\naddress = "http://h:8265"\nruntime_env = { working_dir = "." }',
            "runtime_env: ",
        ),
    ],
)
def test_bad_engines_config(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "swarmd.toml"
    path.write_text(f"[engines.e]\n{body}\n")
    with pytest.raises(ConfigError, match=r"engines\.e") as err:
        load(path, {}, state_dir=tmp_path)
    assert message in str(err.value)


def test_submit_engine_flag_makes_an_engine_subtask() -> None:
    job = single_command_job(["nvidia-smi"], engine="hpc")
    assert job.subtasks[0].engine == "hpc" and job.subtasks[0].run == ("nvidia-smi",)
    with pytest.raises(ValueError, match="--engine"):
        single_command_job(["x"], engine="")


def test_engine_key_in_a_job() -> None:
    job = parse_job({"subtask": [{"id": "a", "kind": "shell", "run": ["x"], "engine": "hpc"}]})
    assert job.subtasks[0].engine == "hpc"
    with pytest.raises(ValueError, match="engine"):
        parse_job({"subtask": [{"id": "a", "kind": "llm", "prompt": "x", "engine": "hpc"}]})


# ---------------------------------------------------------------- pricing


def _peer(node: str, engines: list[dict[str, object]] | None = None, busy: int = 0) -> object:
    values = {
        "name": node,
        "hw": {"cpu": {"cores": 2, "load": 0.0}, "memory": {"available": 1 << 30}},
        "slots": 2,
        "busy": busy,
        "queue": 0,
        "engines": engines or [],
    }
    return peer_from_gossip(node, values, alive=True, rtt_s=0.001)


HPC = {"name": "hpc", "kind": "slurm", "ok": True, "cpus_idle": 8, "queue": 3, "est_wait_s": 12.0}


def test_gossip_engines_read_and_malformed_skipped() -> None:
    peer = _peer("a", [HPC, {"kind": "x"}, "junk"])  # type: ignore[list-item]
    assert peer.engines == (  # type: ignore[attr-defined]
        EngineOffer("hpc", "slurm", True, cpus_idle=8, queue=3, est_wait_s=12.0),
    )


def test_a_subtask_naming_an_engine_goes_to_its_front_node() -> None:
    peers = [_peer("lan"), _peer("login", [HPC])]
    placement = price(Demand("shell", engine="hpc"), peers, PricingConfig())  # type: ignore[arg-type]
    assert placement.winner is not None and placement.winner.name == "login"
    assert placement.winner.engine == "hpc"
    assert placement.winner.wait_s == 12.0 + ENGINE_START_S
    assert "engine hpc (slurm): queue 3" in (placement.winner.basis or "")
    lan = next(c for c in placement.candidates if c.name == "lan")
    assert not lan.feasible and 'fronts no engine "hpc"' in (lan.why_not or "")
    down = [_peer("login", [{**HPC, "ok": False}])]
    none = price(Demand("shell", engine="hpc"), down, PricingConfig())  # type: ignore[arg-type]
    assert none.winner is None and "not answering" in (none.reason or "")


def test_pricing_picks_the_engine_when_it_finishes_first() -> None:
    idle = {**HPC, "queue": 0, "est_wait_s": 0.0}
    free = [_peer("lan"), _peer("login", [idle], busy=2)]
    placement = price(Demand("shell", est_seconds=10.0), free, PricingConfig())  # type: ignore[arg-type]
    assert placement.winner is not None and placement.winner.name == "lan"  # no queue there
    assert placement.winner.engine is None
    full = [_peer("lan", busy=6), _peer("login", [idle], busy=6)]
    placement = price(Demand("shell", est_seconds=10.0), full, PricingConfig())  # type: ignore[arg-type]
    assert placement.winner is not None and placement.winner.engine == "hpc"
    # python subtasks never go to an engine
    placement = price(Demand("python"), full, PricingConfig())  # type: ignore[arg-type]
    assert placement.winner is None or placement.winner.engine is None


def test_overflow_only_waits_for_the_lan_to_fill() -> None:
    cheap = {**HPC, "queue": 0, "est_wait_s": 0.0, "overflow_only": True}
    config = PricingConfig(default_shell_s=100.0)  # the engine would win on score alone
    lan_free = [_peer("lan", busy=1), _peer("login", [cheap], busy=2)]
    placement = price(Demand("shell"), lan_free, config)  # type: ignore[arg-type]
    assert placement.winner is not None and placement.winner.name == "lan"
    login = next(c for c in placement.candidates if c.name == "login")
    assert login.why_not == OVERFLOW_WHY
    lan_full = [_peer("lan", busy=2), _peer("login", [cheap], busy=2)]
    placement = price(Demand("shell"), lan_full, config)  # type: ignore[arg-type]
    assert placement.winner is not None and placement.winner.engine == "hpc"
    # a subtask that names the engine is not held back
    placement = price(Demand("shell", engine="hpc"), lan_free, config)  # type: ignore[arg-type]
    assert placement.winner is not None and placement.winner.engine == "hpc"


# ---------------------------------------------------------------- worker admission


def _dispatch(n: int, engine: str | None = "hpc", kind: str = "shell") -> Dispatch:
    spec: dict[str, object] = {"kind": kind, "run": ["true"]}
    if engine is not None:
        spec["engine"] = engine
    return Dispatch(
        task="t1",
        subtask=f"s{n}",
        attempt=1,
        coordinator=NodeRef("c", 0, 0, "127.0.0.1:1"),
        lease_s=9.0,
        spec=spec,
    )


def test_engine_attempts_run_outside_the_slots_up_to_max_jobs() -> None:
    core = WorkerCore("w", WorkerConfig(slots=1, queue=0, engines={"hpc": 2}))
    assert any(isinstance(e, Start) for e in core.on_dispatch(_dispatch(1), 0.0))
    assert any(isinstance(e, Start) for e in core.on_dispatch(_dispatch(2), 0.0))
    refused = core.on_dispatch(_dispatch(3), 0.0)
    assert "2 jobs held (max_jobs)" in refused[0].message.reason  # type: ignore[attr-defined]
    assert core.busy == 0  # the local slot is still free
    assert any(isinstance(e, Start) for e in core.on_dispatch(_dispatch(4, None), 0.0))
    other = core.on_dispatch(_dispatch(5, "ray"), 0.0)
    assert "no engine 'ray'" in other[0].message.reason  # type: ignore[attr-defined]
    core.on_finished(("t1", "s1", 1), core.ended_early(("t1", "s1", 1), "x"), 1.0)
    assert any(isinstance(e, Start) for e in core.on_dispatch(_dispatch(6), 1.0))


# ---------------------------------------------------------------- the executor


class ScriptedEngine:
    """An engine that runs the job script locally and reports the phases it is told."""

    kind = "fake"

    def __init__(self, phases: list[JobStatus], run_script: bool = True) -> None:
        self.name = "fake"
        self.phases = phases
        self.run_script = run_script
        self.cancelled: list[str] = []
        self.jobs: list[JobSpec] = []

    async def capacity(self) -> EngineCapacity:
        return EngineCapacity(1, 0, 100, 0, 0, 0.0)

    async def submit(self, job: JobSpec) -> str:
        self.jobs.append(job)
        if self.run_script:
            (job.workdir / "job.sh").write_text(script(job))
            proc = await asyncio.create_subprocess_exec("sh", str(job.workdir / "job.sh"))
            await proc.wait()
        return "42"

    async def status(self, job_id: str) -> JobStatus:
        return self.phases.pop(0) if len(self.phases) > 1 else self.phases[0]

    async def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)

    async def close(self) -> None:
        return None


def _request(**kw: object) -> ExecRequest:
    base: dict[str, object] = {
        "task_id": "t1",
        "subtask_id": "s",
        "attempt": 1,
        "kind": "shell",
        "run": ("sh", "-c", "cat in.txt; echo made > out.txt; echo $SWARMD_SUBTASK_ID"),
        "inputs": {"in.txt": b"shipped\n"},
        "outputs": ("out.txt",),
    }
    base.update(kw)
    return ExecRequest(**base)  # type: ignore[arg-type]


def test_executor_runs_a_job_and_collects_output_and_artifacts(tmp_path: Path) -> None:
    engine = ScriptedEngine(
        [JobStatus("queued", "Resources"), JobStatus("running"), JobStatus("succeeded", "", 0)]
    )
    notes: list[str] = []
    result = asyncio.run(
        engine_executor.run(
            _request(), engine, workdir_root=tmp_path, limits=Limits(), progress=notes.append
        )
    )
    assert result.ok, result.error
    assert result.stdout == "shipped\ns\n" and result.artifacts == {"out.txt": b"made\n"}
    assert notes == ["queued on fake (job 42, reason Resources)", "running on fake (job 42)"]
    assert result.usage == {"engine": "fake", "engine_job": "42"}
    assert not any(tmp_path.iterdir())  # the attempt's directory is gone


def test_executor_follows_the_output_files_while_the_job_runs(tmp_path: Path) -> None:
    engine = ScriptedEngine([JobStatus("running"), JobStatus("running"), JobStatus("succeeded")])
    live = LiveOutput()
    req = _request(run=("sh", "-c", "echo out-line; echo err-line >&2"), outputs=())
    result = asyncio.run(
        engine_executor.run(req, engine, workdir_root=tmp_path, limits=Limits(), live=live)
    )
    assert result.ok and result.stdout == "out-line\n"
    assert live.out is not None and live.out.since(0) == (0, b"out-line\n")
    assert live.err is not None and live.err.since(0) == (0, b"err-line\n")


def test_executor_failures(tmp_path: Path) -> None:
    def go(phases: list[JobStatus], **kw: object) -> object:
        engine = ScriptedEngine(phases)
        req = _request(**kw)
        return asyncio.run(engine_executor.run(req, engine, workdir_root=tmp_path, limits=Limits()))

    app = go([JobStatus("failed", "", 3)], run=("sh", "-c", "exit 3"), outputs=())
    assert app.app_failed and app.exit_code == 3 and "exit code 3" in app.error  # type: ignore[attr-defined]
    lost = go([JobStatus("engine_failed", "NODE_FAIL")])
    assert not lost.app_failed and "NODE_FAIL" in lost.error  # type: ignore[attr-defined]
    outside = go([JobStatus("cancelled", "cancelled by 0")])
    assert not outside.app_failed and "cancelled outside swarmd" in outside.error  # type: ignore[attr-defined]
    gone = go([JobStatus("unknown")])
    assert not gone.app_failed  # type: ignore[attr-defined]


def test_executor_timeout_and_cancel_cancel_the_job(tmp_path: Path) -> None:
    engine = ScriptedEngine([JobStatus("running")], run_script=False)
    req = _request(timeout_s=0.3)
    result = asyncio.run(engine_executor.run(req, engine, workdir_root=tmp_path, limits=Limits()))
    assert result.app_failed and "timed out after 0.3s" in (result.error or "")
    assert engine.cancelled == ["42"]

    async def cancel_it() -> None:
        task = asyncio.ensure_future(
            engine_executor.run(_request(), engine, workdir_root=tmp_path, limits=Limits())
        )
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    engine.cancelled.clear()
    asyncio.run(cancel_it())
    assert engine.cancelled == ["42"]


def test_executor_submit_refused_is_an_attempt_lost(tmp_path: Path) -> None:
    class Refusing(ScriptedEngine):
        async def submit(self, job: JobSpec) -> str:
            raise EngineError("sbatch exited 1: Invalid partition")

    result = asyncio.run(
        engine_executor.run(_request(), Refusing([]), workdir_root=tmp_path, limits=Limits())
    )
    assert not result.app_failed and "Invalid partition" in (result.error or "")
