"""The Slurm engine: subtasks as batch jobs, through the Slurm command line.

``sbatch --parsable`` submits a wrapper script written into the attempt's directory
(on the shared working directory the compute nodes see); the script runs the command
there with stdout/stderr redirected to ``stdout``/``stderr`` and writes its exit code
to ``exit``. Jobs are submitted with ``--no-requeue``: a job the engine loses comes
back as an engine failure and swarmd retries it (Slurm re-running it behind swarmd's
back would run it twice).

What became of a job: ``squeue -t all`` while Slurm remembers it (``MinJobAge``), then
``sacct -P -o State,ExitCode,WorkDir`` when accounting is on. The exit code is taken
from the ``exit`` file the wrapper wrote (``sacct --json`` in 22.05 reports 0 for a job
that exited 3); a job that ended FAILED without one never ran its command: the engine
failed it. Capacity: ``sinfo`` (idle CPUs, memory and GPUs of the nodes that take
work) and ``squeue`` (jobs running and pending, and the pending jobs' expected starts).

Every command runs as an asyncio subprocess with a timeout; one that cannot be run,
times out or fails (the controller down, a refused option) raises
:class:`~swarmd.engines.EngineError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from . import EngineCapacity, EngineError, JobPhase, JobSpec, JobStatus

COMMAND_TIMEOUT_S: Final = 30.0
TIME_MARGIN_S: Final = 120.0  # Slurm's own time limit: swarmd's timeout + this
SCRIPT: Final = "job.sh"
EXIT_FILE: Final = "exit"
SLURM_OUT: Final = "slurm.out"  # Slurm's own output of the wrapper (errors before the command)
UNKNOWN_JOB: Final = "Invalid job id"
BATCH_S: Final = 0.25  # a job's squeue row is this fresh at most when shared
FOLLOWED_S: Final = 120.0  # a job not asked about this long is not queried any more
MAX_BATCH: Final = 500  # job ids in one squeue

# squeue/sacct states -> phases (squeue -O State gives the long names).
_QUEUED: Final = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
)
_RUNNING: Final = frozenset(
    {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "SUSPENDED", "STOPPED", "RESIZING"}
)
_ENGINE_FAILED: Final = frozenset(
    {"NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
)
_SQUEUE_FORMAT: Final = "JobID:|,State:|,Reason:|,exit_code:|,WorkDir:|"
_SINFO_FORMAT: Final = "NodeList:|,CPUsState:|,Memory:|,AllocMem:|,Gres:|,GresUsed:|,StateLong:|"
_TAKES_WORK: Final = ("idle", "mixed", "allocated", "completing")


# ---------------------------------------------------------------- parsing (pure)


def parse_sbatch(out: str) -> str:
    """The job id from ``sbatch --parsable`` ("1234" or "1234;cluster")."""
    line = out.strip().splitlines()[-1] if out.strip() else ""
    job_id = line.split(";", 1)[0].strip()
    if not job_id.isdigit():
        raise EngineError(f"sbatch printed no job id: {out.strip()[:200]!r}")
    return job_id


@dataclass(frozen=True)
class JobRow:
    """One job as squeue or sacct describes it."""

    job_id: str
    state: str  # e.g. PENDING, RUNNING, COMPLETED, "CANCELLED by 0" (sacct)
    reason: str = ""
    exit_code: int | None = None  # the batch script's, as Slurm saw it
    workdir: str = ""


def parse_squeue(out: str) -> list[JobRow]:
    """``squeue -h -O 'JobID:|,State:|,Reason:|,exit_code:|,WorkDir:|'``: exit_code
    is the raw wait status (768 for exit 3)."""
    rows = []
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 4 or not parts[0].strip():
            continue
        raw = parts[3].strip()
        code = int(raw) >> 8 if raw.isdigit() else None
        workdir = parts[4].strip() if len(parts) > 4 else ""
        rows.append(JobRow(parts[0].strip(), parts[1].strip(), parts[2].strip(), code, workdir))
    return rows


def parse_sacct(out: str) -> list[JobRow]:
    """``sacct -P -n -X -o JobID,State,ExitCode,WorkDir`` (ExitCode "3:0": code:signal)."""
    rows = []
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 3 or not parts[0].strip():
            continue
        code_text = parts[2].split(":", 1)[0].strip()
        code = int(code_text) if code_text.isdigit() else None
        workdir = parts[3].strip() if len(parts) > 3 else ""
        rows.append(JobRow(parts[0].strip(), parts[1].strip(), "", code, workdir))
    return rows


def phase_of(row: JobRow, exit_file: int | None) -> JobStatus:
    """What a job row means for swarmd. ``exit_file``: the code the wrapper wrote (None:
    the wrapper wrote none: the command never ran to its end)."""
    state = row.state.split()[0].rstrip("+") if row.state else ""
    reason = "" if row.reason in ("None", "(null)") else row.reason
    phase: JobPhase
    if state in _QUEUED:
        return JobStatus("queued", reason)
    if state in _RUNNING:
        return JobStatus("running", reason)
    if state == "COMPLETED":
        code = exit_file if exit_file is not None else row.exit_code or 0
        phase = "succeeded" if code == 0 else "failed"
        return JobStatus(phase, "", code)
    if state == "CANCELLED":
        return JobStatus("cancelled", row.state.lower())
    if state in ("FAILED", "OUT_OF_MEMORY") and exit_file is not None:
        why = "out of memory" if state == "OUT_OF_MEMORY" else ""
        return JobStatus("failed", why, exit_file)
    if state == "OUT_OF_MEMORY":
        return JobStatus("failed", "out of memory", row.exit_code)
    if state == "TIMEOUT":
        return JobStatus("failed", "Slurm's time limit", exit_file)
    if state == "FAILED" or state in _ENGINE_FAILED:
        return JobStatus("engine_failed", f"{state}{f' ({reason})' if reason else ''}")
    return JobStatus("unknown", row.state)


def parse_cpus(text: str) -> tuple[int, int]:
    """``A/I/O/T`` (allocated/idle/other/total) -> (idle, total)."""
    parts = text.split("/")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return 0, 0
    return int(parts[1]), int(parts[3])


def gpu_count(gres: str) -> int:
    """GPUs in a GRES string: "gpu:4", "gpu:a100:2(S:0-1),gpu:v100:1", "(null)"."""
    total = 0
    for item in gres.split(","):
        item = item.split("(", 1)[0].strip()
        fields = item.split(":")
        if fields[0] != "gpu" or len(fields) < 2:
            continue
        count = fields[-1].split("(")[0]
        total += int(count) if count.isdigit() else 0
    return total


@dataclass(frozen=True)
class Nodes:
    cpus_idle: int
    cpus_total: int
    gpus_idle: int
    mem_idle_mb: int


def parse_sinfo(out: str) -> Nodes:
    """``sinfo -h -N -O 'NodeList:|,CPUsState:|,Memory:|,AllocMem:|,Gres:|,GresUsed:|,
    StateLong:|'``: the idle resources of the nodes that take work (not down, drained,
    reserved for maintenance). A node in several partitions is listed once per
    partition: counted once."""
    seen: set[str] = set()
    cpus_idle = cpus_total = gpus_idle = mem_idle = 0
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 7 or parts[0].strip() in seen or not parts[0].strip():
            continue
        seen.add(parts[0].strip())
        state = parts[6].strip().rstrip("*~#!%$@^-+").lower()
        idle, total = parse_cpus(parts[1].strip())
        cpus_total += total
        if state not in _TAKES_WORK:
            continue
        cpus_idle += idle
        memory, alloc = parts[2].strip(), parts[3].strip()
        if memory.isdigit() and alloc.isdigit():
            mem_idle += max(0, int(memory) - int(alloc))
        gpus_idle += max(0, gpu_count(parts[4]) - gpu_count(parts[5]))
    return Nodes(cpus_idle, cpus_total, gpus_idle, mem_idle)


def parse_start_times(out: str, now: float) -> list[float]:
    """``squeue --start -h -o '%S'``: seconds from ``now`` until each pending job's
    expected start (those Slurm has estimated; "N/A" skipped)."""
    waits = []
    for line in out.splitlines():
        text = line.strip()
        if not text or text in ("N/A", "Unknown"):
            continue
        try:
            start = datetime.fromisoformat(text).timestamp()
        except ValueError:
            continue
        waits.append(max(0.0, start - now))
    return waits


def estimate_wait(nodes: Nodes, running: int, pending: int, starts: Sequence[float]) -> float:
    """The queue wait of a new one-CPU job: none while more CPUs are idle than jobs wait;
    else the last expected start of the jobs ahead, or without Slurm's estimates a
    minute per job ahead per CPU."""
    if nodes.cpus_idle > pending:  # the jobs ahead (and this one) fit in idle CPUs
        return 0.0
    if starts:
        return max(starts)
    return 60.0 * (pending + 1) / max(1, nodes.cpus_total or running or 1)


def script(job: JobSpec) -> str:
    """The wrapper the job runs: the env, the command in the attempt's directory with
    its output redirected, its exit code written to ``exit`` (atomically)."""
    lines = ["#!/bin/sh", f"# swarmd engine job {job.name}"]
    for name, value in sorted(job.env.items()):
        lines.append(f"export {name}={shlex.quote(value)}")
    workdir = shlex.quote(str(job.workdir))
    command = " ".join(shlex.quote(a) for a in job.argv)
    lines += [
        f"cd {workdir} || exit 111",
        f"{command} >stdout 2>stderr </dev/null",
        "code=$?",
        f'echo "$code" >{EXIT_FILE}.tmp && mv {EXIT_FILE}.tmp {EXIT_FILE}',
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"


def read_exit_file(workdir: str | Path) -> int | None:
    """The exit code the wrapper wrote into ``workdir``, or None."""
    if not workdir:
        return None
    try:
        text = (Path(workdir) / EXIT_FILE).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


# ---------------------------------------------------------------- the engine


class SlurmEngine:
    kind = "slurm"

    def __init__(
        self,
        name: str,
        *,
        partition: str | None = None,
        account: str | None = None,
        qos: str | None = None,
        sbatch_args: Sequence[str] = (),
        slurm_conf: str | None = None,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.partition = partition
        self.account = account
        self.qos = qos
        self.sbatch_args = tuple(sbatch_args)
        self.command_timeout_s = command_timeout_s
        self.env: Mapping[str, str] | None = None
        if slurm_conf:
            self.env = dict(os.environ, SLURM_CONF=slurm_conf)
        self._workdirs: dict[str, Path] = {}  # job id -> workdir, for jobs submitted here
        self._followed: dict[str, float] = {}  # job id -> when its status was last asked
        self._rows: dict[str, JobRow | None] = {}  # the last squeue of them all
        self._rows_at = -math.inf
        self._query_lock = asyncio.Lock()

    async def run(self, *argv: str, ok_codes: tuple[int, ...] = (0,)) -> tuple[int, str, str]:
        """Run a Slurm command; (rc, stdout, stderr). EngineError when it cannot be run,
        times out, or exits with a code not in ``ok_codes``."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
            )
        except OSError as exc:
            raise EngineError(f"{argv[0]}: cannot run: {exc.strerror or exc}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.command_timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5)
            raise EngineError(f"{argv[0]}: no answer in {self.command_timeout_s:g} s") from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        rc = proc.returncode if proc.returncode is not None else -1
        stdout = out.decode("utf-8", "replace")
        stderr = err.decode("utf-8", "replace")
        if rc not in ok_codes:
            said = (stderr.strip() or stdout.strip())[-300:]
            raise EngineError(f"{argv[0]} exited {rc}: {said}")
        return rc, stdout, stderr

    def sbatch_argv(self, job: JobSpec) -> list[str]:
        argv = ["sbatch", "--parsable", "--no-requeue", f"--job-name={job.name}"]
        argv += [f"--chdir={job.workdir}", f"--output={job.workdir / SLURM_OUT}"]
        argv += ["--ntasks=1", f"--cpus-per-task={max(1, job.cpus)}"]
        if job.mem_mb > 0:
            argv.append(f"--mem={job.mem_mb}M")
        if job.gpus > 0:
            argv.append(f"--gres=gpu:{job.gpus}")
        if job.timeout_s is not None:
            argv.append(f"--time={math.ceil((job.timeout_s + TIME_MARGIN_S) / 60.0)}")
        for flag, value in (("partition", self.partition), ("account", self.account)):
            if value:
                argv.append(f"--{flag}={value}")
        if self.qos:
            argv.append(f"--qos={self.qos}")
        return [*argv, *self.sbatch_args, str(job.workdir / SCRIPT)]

    async def submit(self, job: JobSpec) -> str:
        path = job.workdir / SCRIPT
        try:
            path.write_text(script(job))
            path.chmod(0o700)
        except OSError as exc:
            raise EngineError(f"cannot write the job script {path}: {exc}") from None
        _, out, _ = await self.run(*self.sbatch_argv(job))
        job_id = parse_sbatch(out)
        self._workdirs[job_id] = job.workdir
        self._followed[job_id] = time.monotonic()
        while len(self._workdirs) > 10_000:
            del self._workdirs[next(iter(self._workdirs))]
        return job_id

    async def status(self, job_id: str) -> JobStatus:
        if not job_id.isdigit():
            return JobStatus("unknown", f"not a Slurm job id: {job_id!r}")
        row = await self._squeue_row(job_id)
        rows = [row] if row is not None else []
        if not rows:
            rows = await self._sacct(job_id)
        if not rows:
            known = self._workdirs.get(job_id)
            code = read_exit_file(known) if known is not None else None
            if code is not None:  # Slurm forgot it, but the wrapper left its exit code
                return JobStatus("succeeded" if code == 0 else "failed", "", code)
            return JobStatus("unknown", "Slurm does not know the job (any more)")
        row = rows[0]
        workdir = row.workdir or str(self._workdirs.get(job_id, ""))
        status = phase_of(row, read_exit_file(workdir))
        if status.terminal:
            self._followed.pop(job_id, None)
        return status

    async def _squeue_row(self, job_id: str) -> JobRow | None:
        """The job as squeue shows it. One squeue asks for every job followed lately:
        the attempts that poll at about the same time share it (at most one query every
        BATCH_S, however many jobs are followed)."""
        self._followed[job_id] = time.monotonic()  # before the wait: the next query has it
        async with self._query_lock:
            now = time.monotonic()
            if job_id in self._rows and now - self._rows_at < BATCH_S:
                return self._rows[job_id]
            await asyncio.sleep(0)  # the attempts polling now register first
            for old in [j for j, at in self._followed.items() if now - at > FOLLOWED_S]:
                del self._followed[old]
            asked = sorted(self._followed, key=int)[-MAX_BATCH:]
            if job_id not in asked:
                asked.append(job_id)
            rc, out, err = await self.run(
                "squeue",
                "-h",
                "-t",
                "all",
                "-j",
                ",".join(asked),
                "-O",
                _SQUEUE_FORMAT,
                ok_codes=(0, 1),
            )
            if rc != 0 and UNKNOWN_JOB not in err:
                raise EngineError(f"squeue exited {rc}: {err.strip()[-300:]}")
            rows = {r.job_id: r for r in parse_squeue(out)}
            self._rows = {j: rows.get(j) for j in asked}
            self._rows_at = time.monotonic()
            return self._rows.get(job_id)

    async def _sacct(self, job_id: str) -> list[JobRow]:
        """The job from accounting; [] when accounting is off or does not know it."""
        try:
            _, out, _ = await self.run(
                "sacct", "-P", "-n", "-X", "-j", job_id, "-o", "JobID,State,ExitCode,WorkDir"
            )
        except EngineError:
            return []
        return [r for r in parse_sacct(out) if r.job_id == job_id]

    async def cancel(self, job_id: str) -> None:
        if not job_id.isdigit():
            return
        rc, _, err = await self.run("scancel", job_id, ok_codes=(0, 1))
        if rc != 0 and UNKNOWN_JOB not in err:
            raise EngineError(f"scancel exited {rc}: {err.strip()[-300:]}")

    async def capacity(self) -> EngineCapacity:
        part = [f"--partition={self.partition}"] if self.partition else []
        _, nodes_out, _ = await self.run("sinfo", "-h", "-N", *part, "-O", _SINFO_FORMAT)
        _, jobs_out, _ = await self.run("squeue", "-h", *part, "-t", "PENDING,RUNNING", "-o", "%T")
        states = [line.strip() for line in jobs_out.splitlines() if line.strip()]
        running, pending = states.count("RUNNING"), states.count("PENDING")
        nodes = parse_sinfo(nodes_out)
        starts: list[float] = []
        if pending:
            _, start_out, _ = await self.run("squeue", "-h", "--start", *part, "-o", "%S")
            starts = parse_start_times(start_out, time.time())
        return EngineCapacity(
            cpus_idle=nodes.cpus_idle,
            gpus_idle=nodes.gpus_idle,
            mem_idle_mb=nodes.mem_idle_mb,
            running=running,
            queued=pending,
            est_wait_s=estimate_wait(nodes, running, pending, starts),
        )

    async def close(self) -> None:
        return None
