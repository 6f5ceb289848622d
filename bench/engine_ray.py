"""The Ray engine's overhead: from deciding to submit to the job RUNNING in Ray (and to
its command started), for swarmd's adapter beside plain ``ray job submit``.

    python bench/engine_ray.py [--rounds 10]

A one-node Ray head on loopback (tests/ray_cluster.py: Ray 2.60 from PyPI in its own
venv, 2 CPUs). Each round runs, in turn (the order rotating each round):

- ``adapter``: ``RayEngine.submit`` (writes the wrapper into the attempt's directory,
  POSTs the job), then ``RayEngine.status`` until it is not queued;
- ``http``: one POST /api/jobs/ of the bare command, then GET /api/jobs/ID until it is
  not PENDING (Ray's own floor: what any client over HTTP pays);
- ``cli``: ``ray job submit --no-wait`` (a Python process importing Ray, as a user
  types it), then GET /api/jobs/ID until it is not PENDING;
- ``swarmd`` (with ``--swarmd``; needs the engine framework): two daemons on loopback,
  ``login`` fronting the head as ``[engines.ray]`` and ``lan`` coordinating;
  ``swarmctl submit`` of a job whose one subtask has ``engine = "ray"`` (a Python
  process, like ``cli``), then GET /api/jobs/ until that subtask's job is not PENDING:
  the whole path, swarmd's placement, lease and dispatch included.

Each job is ``sh -c 'date +%s.%N >started; sleep 1'`` in its own directory: "command"
is when that file's time says the command began. Every poll is 20 ms apart. One job
at a time: each round waits for the previous job to end. Prints JSON (seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary
from swarmd.engines import JobSpec
from swarmd.engines.ray import RayEngine
from tests.engine_swarm import login_and_lan
from tests.harness import Daemon, swarmctl
from tests.ray_cluster import RayHead, ray_head

POLL_S = 0.02
COMMAND = "date +%s.%N >started; sleep 1"


async def _until(fn: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await fn():
        if time.monotonic() > deadline:
            raise TimeoutError("no answer in time")
        await asyncio.sleep(POLL_S)


async def _ray_status(http: httpx.AsyncClient, job_id: str) -> str:
    reply = await http.get(f"/api/jobs/{job_id}")
    return str(reply.json()["status"]) if reply.status_code == 200 else "NONE"


def _command_started(workdir: Path, t0_wall: float) -> float | None:
    try:
        return float((workdir / "started").read_text()) - t0_wall
    except (OSError, ValueError):
        return None


async def adapter(engine: RayEngine, http: httpx.AsyncClient, workdir: Path) -> str:
    job = JobSpec(f"bench-{workdir.name}", workdir, ("sh", "-c", COMMAND), {"X": "1"})
    job_id = await engine.submit(job)

    async def started() -> bool:
        return (await engine.status(job_id)).phase != "queued"

    await _until(started)
    return job_id


async def plain_http(engine: RayEngine, http: httpx.AsyncClient, workdir: Path) -> str:
    body = {"entrypoint": f"cd {workdir} && sh -c '{COMMAND}'", "entrypoint_num_cpus": 1}
    reply = await http.post("/api/jobs/", json=body)
    job_id = str(reply.json()["submission_id"])

    async def started() -> bool:
        return await _ray_status(http, job_id) != "PENDING"

    await _until(started)
    return job_id


def cli_factory(head: RayHead) -> Callable[..., Awaitable[str]]:
    async def cli(engine: RayEngine, http: httpx.AsyncClient, workdir: Path) -> str:
        job_id = f"bench-cli-{uuid.uuid4().hex[:8]}"
        done = await asyncio.to_thread(
            head.ray,
            "job",
            "submit",
            "--no-wait",
            f"--submission-id={job_id}",
            "--entrypoint-num-cpus=1",
            "--",
            "sh",
            "-c",
            f"cd {workdir} && {COMMAND}",
        )
        if done.returncode != 0:
            raise RuntimeError(f"ray job submit: {done.stderr[-300:]}")

        async def started() -> bool:
            return await _ray_status(http, job_id) != "PENDING"

        await _until(started)
        return job_id

    return cli


def swarmd_factory(lan: Daemon) -> Callable[..., Awaitable[str]]:
    async def through_swarmd(engine: RayEngine, http: httpx.AsyncClient, workdir: Path) -> str:
        (workdir / "job.toml").write_text(
            "[[subtask]]\n"
            'id = "s"\nkind = "shell"\nengine = "ray"\n'
            f'run = ["sh", "-c", "date +%s.%N >{workdir}/started; sleep 1"]\n'
        )
        done = await asyncio.to_thread(
            swarmctl, "--json", "submit", "-f", "job.toml", state_dir=lan.state_dir, cwd=workdir
        )
        if done.returncode != 0:
            raise RuntimeError(f"swarmctl submit: {done.stderr[-300:]}")
        prefix = f"swarmd-{json.loads(done.stdout)['task'][:12]}-"
        found: list[str] = []

        async def started() -> bool:
            jobs = (await http.get("/api/jobs/")).json()
            mine = [j for j in jobs if str(j["submission_id"]).startswith(prefix)]
            found[:] = [str(j["submission_id"]) for j in mine if j["status"] != "PENDING"]
            return bool(found)

        await _until(started)
        return found[0]

    return through_swarmd


def _engine_toml(head: RayHead, root: Path) -> str:
    return (
        f'[engines.ray]\nkind = "ray"\naddress = "{head.address}"\n'
        f'workdir = "{root / "engine-work"}"\npoll = "1s"\n'
    )


async def measure(
    head: RayHead, rounds: int, root: Path, lan: Daemon | None = None
) -> dict[str, Any]:
    engine = RayEngine("ray", address=head.address)
    http = httpx.AsyncClient(base_url=head.address, timeout=30, trust_env=False)
    ways: dict[str, Callable[..., Awaitable[str]]] = {
        "adapter": adapter,
        "http": plain_http,
        "cli": cli_factory(head),
    }
    if lan is not None:
        ways["swarmd"] = swarmd_factory(lan)
    running: dict[str, list[float]] = {k: [] for k in ways}
    command: dict[str, list[float | None]] = {k: [] for k in ways}
    order = list(ways)
    try:
        for r in range(rounds + 1):  # round 0 warms Ray's worker pool up, not counted
            order = order[1:] + order[:1]
            for name in order:
                workdir = root / f"{name}-{r}"
                workdir.mkdir()
                t0_wall, t0 = time.time(), time.monotonic()
                job_id = await ways[name](engine, http, workdir)
                took = time.monotonic() - t0

                async def ended(job_id: str = job_id) -> bool:
                    return await _ray_status(http, job_id) in ("SUCCEEDED", "FAILED", "STOPPED")

                await _until(ended)
                if r > 0:
                    running[name].append(took)
                    command[name].append(_command_started(workdir, t0_wall))
    finally:
        await engine.close()
        await http.aclose()
    return {
        "submit_to_running_s": {k: summary(v) for k, v in running.items()},
        "submit_to_command_s": {k: summary(v) for k, v in command.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--swarmd", action="store_true", help="also through two daemons")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ray_head() as head, ExitStack() as stack:
        lan = None
        if args.swarmd:
            two = login_and_lan(Path(tmp), _engine_toml(head, Path(tmp)), alive_s=30)
            _, lan = stack.enter_context(two)
        result = asyncio.run(measure(head, args.rounds, Path(tmp), lan))
    med = {k: v["median"] for k, v in result["submit_to_running_s"].items() if v.get("n")}
    for way in ("adapter", "swarmd"):
        for base in ("cli", "http"):
            if med.get(way) and med.get(base):
                result[f"{way}_over_{base}"] = round(med[way] / med[base], 3)
    result["rounds"] = args.rounds
    result["ray"] = "2.60.0, one head on 127.0.0.1, 2 CPUs"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
