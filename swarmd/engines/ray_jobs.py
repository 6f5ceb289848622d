"""What the Ray engine says to Ray's Jobs API and what it makes of the answers (pure:
no I/O here; :mod:`.ray` does the HTTP).

A swarmd job becomes a Ray job whose entrypoint runs a wrapper script, ``job.sh``, that
:func:`script` writes into the attempt's directory (on the working directory the Ray
nodes share with this node). The wrapper exports the job's env, runs the command there
with stdout/stderr redirected to ``stdout``/``stderr`` and writes its exit code to
``exit`` (atomically); it also prints that code as the last line of Ray's own log of
the job (``swarmd-exit-code N``), which this node reads when the file is not (yet)
visible to it. The env stays in the script (mode 0700), out of Ray's job table, which
anyone with the dashboard can read.

The job's metadata carries the attempt's directory, so what became of a job can be
told from its id alone (after a restart of this node too). The submission id is made
from the job's name and directory: a submit sent twice (an answer lost on the way) is
recognised by Ray's "already exists" and not run twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import shlex
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from . import EngineCapacity, JobSpec, JobStatus

SCRIPT: Final = "job.sh"
EXIT_FILE: Final = "exit"
EXIT_MARK: Final = "swarmd-exit-code"
WORKDIR_KEY: Final = "swarmd_workdir"
NAME_KEY: Final = "swarmd_job"
RESERVED_KEYS: Final = ("swarmd_cpus", "swarmd_gpus", "swarmd_mem_mb")  # in metadata
CD_FAILED: Final = 111  # the job's node does not see the attempt's directory
NO_HISTORY_WAIT_S: Final = 60.0  # a job's length when Ray has no finished job to go by
HISTORY: Final = 50  # finished jobs whose lengths make the estimate
# runtime_env keys that name local files, which only Ray's Python SDK uploads
_UPLOADED: Final = ("working_dir", "py_modules", "excludes")


_STOP_TRAP: Final = (
    "trap - TERM INT HUP; "
    'if [ "$(cut -d" " -f5 /proc/$$/stat 2>/dev/null)" = "$$" ]; '
    'then kill -TERM 0; else kill -TERM "$!"; fi 2>/dev/null; exit 143'
)


def script(job: JobSpec) -> str:
    """The wrapper the Ray job runs (``exec sh job.sh``)."""
    lines = ["#!/bin/sh", f"# swarmd engine job {job.name}"]
    for name, value in sorted(job.env.items()):
        lines.append(f"export {name}={shlex.quote(value)}")
    workdir = shlex.quote(str(job.workdir))
    command = " ".join(shlex.quote(a) for a in job.argv)
    lines += [
        f'cd {workdir} || {{ echo "swarmd: cannot enter it on $(hostname)"; exit {CD_FAILED}; }}',
        # A stop signals only the processes there at that moment (Ray 2.60's supervisor
        # does not signal the process group): a job stopped as it starts could leave
        # its command behind. So the command runs in the background while the wrapper
        # waits, and a stop takes the whole group (the wrapper leads it: Ray starts the
        # entrypoint in a session of its own) or, failing that, the command, with
        # SIGTERM (a background command ignores SIGINT, Ray's other stop signal).
        f"trap {shlex.quote(_STOP_TRAP)} TERM INT HUP",
        f"{command} >stdout 2>stderr </dev/null &",
        'wait "$!"',
        "code=$?",
        f'echo "$code" >{EXIT_FILE}.tmp && mv -f {EXIT_FILE}.tmp {EXIT_FILE}',
        f'echo "{EXIT_MARK} $code"',
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"


def entrypoint(job: JobSpec) -> str:
    """The Ray job's entrypoint: the wrapper, or exit ``CD_FAILED`` (with a word in Ray's
    log) where the node it runs on does not see the attempt's directory."""
    path = shlex.quote(str(job.workdir / SCRIPT))
    missing = f"swarmd: {path} is not visible on $(hostname)"
    return f'test -r {path} || {{ echo "{missing}"; exit {CD_FAILED}; }}; exec sh {path}'


def submission_id(job: JobSpec) -> str:
    """A Ray submission id for ``job``: its name (letters, digits, ``_.-``) and a hash of
    its per-attempt directory, so that the same attempt always gets the same id."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", job.name)[:80] or "job"
    digest = hashlib.sha256(str(job.workdir).encode()).hexdigest()[:10]
    return f"{name}-{digest}"


def submit_body(job: JobSpec, runtime_env: Mapping[str, Any]) -> dict[str, Any]:
    """The ``POST /api/jobs/`` body for ``job``."""
    body: dict[str, Any] = {
        "entrypoint": entrypoint(job),
        "submission_id": submission_id(job),
        "metadata": {
            WORKDIR_KEY: str(job.workdir),
            NAME_KEY: job.name,
            # Ray's job list leaves out the entrypoint resources: kept here for capacity
            RESERVED_KEYS[0]: str(max(0, job.cpus)),
            RESERVED_KEYS[1]: str(max(0, job.gpus)),
            RESERVED_KEYS[2]: str(max(0, job.mem_mb)),
        },
        "entrypoint_num_cpus": max(0, job.cpus),
    }
    if runtime_env:
        body["runtime_env"] = dict(runtime_env)
    if job.gpus > 0:
        body["entrypoint_num_gpus"] = job.gpus
    if job.mem_mb > 0:
        body["entrypoint_memory"] = job.mem_mb * 1024 * 1024
    return body


def runtime_env_problem(runtime_env: Any) -> str | None:
    """Why ``runtime_env`` cannot go with a job submitted over HTTP, or None."""
    if not isinstance(runtime_env, dict):
        return f"expected a table, got {runtime_env!r}"
    try:
        json.dumps(runtime_env)
    except (TypeError, ValueError) as exc:
        return f"not expressible as JSON: {exc}"
    for key in _UPLOADED:
        value = runtime_env.get(key)
        paths = value if isinstance(value, list) else [value]
        if key != "excludes" and any(isinstance(p, str) and "://" not in p for p in paths):
            return (
                f"{key}: a local path needs an upload that the Jobs API over HTTP does "
                'not do; give a URI ("s3://...", "https://.../x.zip") or leave it out'
            )
    return None


def exit_from_log(log: str) -> int | None:
    """The exit code the wrapper printed as its last ``swarmd-exit-code N`` line."""
    for line in reversed(log.splitlines()):
        parts = line.split()
        if len(parts) == 2 and parts[0] == EXIT_MARK and parts[1].lstrip("-").isdigit():
            return int(parts[1])
    return None


def _first_line(text: Any, limit: int = 200) -> str:
    line = str(text or "").strip().splitlines()
    return line[0][:limit] if line else ""


def phase_of(info: Mapping[str, Any], exit_code: int | None) -> JobStatus:
    """What a Ray job (``GET /api/jobs/ID``) means for swarmd. ``exit_code``: the code
    the wrapper left (file or log line), None where it left none: then the command never
    ran to its end, and a FAILED job was failed by Ray, not by the command."""
    status = str(info.get("status", ""))
    if status == "PENDING":
        return JobStatus("queued", "PENDING")
    if status == "RUNNING":
        return JobStatus("running")
    if status == "STOPPED":
        return JobStatus("cancelled", "stopped")
    if status in ("SUCCEEDED", "FAILED") and exit_code is not None:
        return JobStatus("succeeded" if exit_code == 0 else "failed", "", exit_code)
    if status == "SUCCEEDED":  # the wrapper exits with the command's code
        return JobStatus("succeeded", "", 0)
    if status == "FAILED":
        kind = str(info.get("error_type") or "")
        said = _first_line(info.get("message"))
        if info.get("driver_exit_code") == CD_FAILED:
            said = f"the job's node does not see the attempt's directory ({said})"
        return JobStatus("engine_failed", ": ".join(p for p in (kind, said) if p) or "FAILED")
    return JobStatus("unknown", status or "no status")


@dataclass(frozen=True)
class Resources:
    cpus_idle: int
    cpus_total: int
    gpus_idle: int
    mem_idle_mb: int
    gpus_total: int = 0
    mem_total_mb: int = 0


def parse_cluster_status(doc: Any) -> Resources:
    """``GET /api/cluster_status``: ``loadMetricsReport.usage`` maps each resource to
    [used, total] (memory in bytes)."""
    try:
        usage = doc["data"]["clusterStatus"]["loadMetricsReport"]["usage"]
    except (KeyError, TypeError):
        raise ValueError("no data.clusterStatus.loadMetricsReport.usage in the answer") from None
    if not isinstance(usage, dict):
        raise ValueError("loadMetricsReport.usage is not an object")

    def pair(key: str) -> tuple[float, float]:
        value = usage.get(key)
        if isinstance(value, list) and len(value) == 2:
            used, total = value
            if isinstance(used, int | float) and isinstance(total, int | float):
                return float(used), float(total)
        return 0.0, 0.0

    cpu_used, cpu_total = pair("CPU")
    gpu_used, gpu_total = pair("GPU")
    mem_used, mem_total = pair("memory")
    return Resources(
        cpus_idle=max(0, math.floor(cpu_total - cpu_used + 1e-9)),
        cpus_total=max(0, math.floor(cpu_total + 1e-9)),
        gpus_idle=max(0, math.floor(gpu_total - gpu_used + 1e-9)),
        mem_idle_mb=max(0, int((mem_total - mem_used) // (1024 * 1024))),
        gpus_total=max(0, math.floor(gpu_total + 1e-9)),
        mem_total_mb=max(0, int(mem_total // (1024 * 1024))),
    )


def parse_state_nodes(doc: Any) -> Resources:
    """``GET /api/v0/nodes`` (Ray's state API): the totals of the ALIVE nodes, as if
    idle; for a cluster whose autoscaler writes no ``cluster_status`` (autoscaler v2).
    :func:`capacity_of` then takes off what the running jobs reserved."""
    try:
        nodes = doc["data"]["result"]["result"]
    except (KeyError, TypeError):
        raise ValueError("no data.result.result in the /api/v0/nodes answer") from None
    cpus = gpus = mem = 0.0
    for node in nodes if isinstance(nodes, list) else ():
        if not isinstance(node, dict) or node.get("state") != "ALIVE":
            continue
        total = node.get("resources_total") or {}
        if isinstance(total, dict):
            cpus += float(total.get("CPU", 0) or 0)
            gpus += float(total.get("GPU", 0) or 0)
            mem += float(total.get("memory", 0) or 0)
    mem_mb = int(mem // (1024 * 1024))
    cpus_i, gpus_i = math.floor(cpus + 1e-9), math.floor(gpus + 1e-9)
    return Resources(cpus_i, cpus_i, gpus_i, mem_mb, gpus_total=gpus_i, mem_total_mb=mem_mb)


def job_lengths(jobs: Sequence[Mapping[str, Any]], last: int = HISTORY) -> list[float]:
    """How long the ``last`` finished jobs ran (seconds), newest last."""
    done = [
        j
        for j in jobs
        if j.get("status") in ("SUCCEEDED", "FAILED")
        and isinstance(j.get("start_time"), int)
        and isinstance(j.get("end_time"), int)
        and j["end_time"] >= j["start_time"]
    ]
    done.sort(key=lambda j: int(j["end_time"]))
    return [(int(j["end_time"]) - int(j["start_time"])) / 1000.0 for j in done[-last:]]


def estimate_wait(res: Resources, running: int, pending: int, lengths: Sequence[float]) -> float:
    """The queue wait of a new one-CPU job: none while a CPU is idle and nothing waits;
    else, with the median length of the jobs Ray finished (a minute without any), the
    time for the jobs ahead of it to go through the cluster's CPUs."""
    if res.cpus_idle > 0 and pending == 0:
        return 0.0
    length = statistics.median(lengths) if lengths else NO_HISTORY_WAIT_S
    slots = max(1, res.cpus_total or running)
    return length * (pending + 1) / slots


def _reserved(jobs: Sequence[Mapping[str, Any]]) -> tuple[float, float, float]:
    """The CPUs, GPUs and MiB that swarmd's running jobs reserved (from their metadata:
    Ray's job list leaves the entrypoint resources out)."""
    totals = [0.0, 0.0, 0.0]
    for job in jobs:
        meta = job.get("metadata")
        if job.get("status") != "RUNNING" or not isinstance(meta, dict):
            continue
        for i, key in enumerate(RESERVED_KEYS):
            with contextlib.suppress(TypeError, ValueError):
                totals[i] += max(0.0, float(meta.get(key, 0)))
    return totals[0], totals[1], totals[2]


def capacity_of(res: Resources, jobs: Any) -> EngineCapacity:
    """The engine's capacity from its resources (:func:`parse_cluster_status` or
    :func:`parse_state_nodes`) and ``/api/jobs/``. Ray's resource report lags the jobs
    by up to a few seconds (its monitor refreshes it every 5 s): what swarmd's running
    jobs reserved counts at once (others' jobs as Ray reports them)."""
    if not isinstance(jobs, list):
        raise ValueError("/api/jobs/ did not answer a list")
    rows = [j for j in jobs if isinstance(j, dict)]
    cpus, gpus, mem_mb = _reserved(rows)
    cpus_free = math.floor(res.cpus_total - cpus + 1e-9)
    gpus_free = math.floor(res.gpus_total - gpus + 1e-9)
    mem_free = math.floor(res.mem_total_mb - mem_mb + 1e-9)
    res = Resources(
        cpus_idle=max(0, min(res.cpus_idle, cpus_free)),
        cpus_total=res.cpus_total,
        gpus_idle=max(0, min(res.gpus_idle, gpus_free)),
        mem_idle_mb=max(0, min(res.mem_idle_mb, mem_free)),
        gpus_total=res.gpus_total,
        mem_total_mb=res.mem_total_mb,
    )
    running = sum(1 for j in rows if j.get("status") == "RUNNING")
    pending = sum(1 for j in rows if j.get("status") == "PENDING")
    return EngineCapacity(
        cpus_idle=res.cpus_idle,
        gpus_idle=res.gpus_idle,
        mem_idle_mb=res.mem_idle_mb,
        running=running,
        queued=pending,
        est_wait_s=estimate_wait(res, running, pending, job_lengths(rows)),
    )
