"""What swarmd adds in front of Slurm: a subtask sent to an engine versus plain sbatch,
alternated, on the real one-node Slurm 22.05 cluster of the tests.

    python bench/engines.py [--rounds 10]

Needs root with slurm-wlm and munge (tests/slurm_cluster.py starts the cluster). Two
daemons on loopback: ``login`` fronts the cluster as ``[engines.slurm]`` (status poll
as shipped), ``lan`` coordinates (a subtask crosses one swarmd hop, as on a LAN). Each
round runs, in alternating order:

* ``sbatch``: ``sbatch --parsable --wrap 'date +%s.%N'``, then ``squeue -j`` every
  0.1 s until the job is no longer pending or running, and its output read;
* ``swarmd``: a one-subtask job (``engine = "slurm"``, the same command) submitted over
  the control socket of ``lan``, then its status every 0.05 s until done, and its result.

Per side: submit → the command runs (the command's own clock minus the submit time)
and submit → result in hand. The overhead per subtask is swarmd's minus sbatch's,
per round (the median of the differences). Writes bench/results/engines.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import Poller, load, save, summary, table  # noqa: E402
from protocol.control import SubmitReply, SubmitRequest, TaskReply, TaskRequest  # noqa: E402
from tests.engine_swarm import login_and_lan  # noqa: E402
from tests.harness import Daemon, wait_until  # noqa: E402
from tests.slurm_cluster import SlurmCluster, slurm_cluster, unavailable  # noqa: E402

COMMAND = "date +%s.%N"


def plain_sbatch(cluster: SlurmCluster, workdir: Path, n: int) -> tuple[float, float]:
    out = workdir / f"plain-{n}.out"
    t0 = time.time()
    job = cluster.run(
        "sbatch", "--parsable", "--no-requeue", f"--output={out}", "--wrap", COMMAND
    ).stdout.strip()
    while True:
        states = cluster.run("squeue", "-h", "-j", job, "-o", "%T", check=False).stdout.split()
        if not set(states) & {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING"}:
            break
        time.sleep(0.1)
    text = out.read_text()
    done = time.time()
    return float(text.split()[0]) - t0, done - t0


def via_swarmd(poller: Poller, n: int) -> tuple[float, float]:
    job = {
        "name": f"bench-{n}",
        "subtask": [{"id": "s", "kind": "shell", "engine": "slurm", "run": ["sh", "-c", COMMAND]}],
    }
    t0 = time.time()
    reply = poller.request(SubmitRequest(job=job))
    assert isinstance(reply, SubmitReply), reply
    while True:
        status = poller.request(TaskRequest(task=reply.task, what="status"))
        if isinstance(status, TaskReply) and status.body["state"] in ("done", "failed"):
            break
        time.sleep(0.05)
    result = poller.request(TaskRequest(task=reply.task, what="result"))
    done = time.time()
    assert isinstance(result, TaskReply) and status.body["state"] == "done", status.body
    stdout = result.body["subtasks"]["s"]["stdout"]
    return float(stdout.split()[0]) - t0, done - t0


def run(rounds: int) -> dict[str, Any]:
    why = unavailable()
    if why is not None:
        return {"skipped": why}
    root = Path(tempfile.mkdtemp(prefix="swarmd-bench-engines-"))
    try:
        with slurm_cluster() as cluster:
            engine = (
                '[engines.slurm]\nkind = "slurm"\n'
                f'slurm_conf = "{cluster.conf}"\nworkdir = "{cluster.root / "work"}"\n'
            )
            with login_and_lan(root, engine, lan_slots=1, alive_s=30) as (_, lan):
                rows = _alternate(cluster, lan, rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return _report(rows, rounds)


def _alternate(
    cluster: SlurmCluster, lan: Daemon, rounds: int
) -> dict[str, list[tuple[float, float]]]:
    """Plain sbatch and swarmd through ``lan``, alternated round by round."""

    def engine_seen() -> bool:
        row = next((p for p in lan.peers() if p["name"] == "login"), {})
        return any(e.get("ok") for e in row.get("engines") or [])

    wait_until(engine_seen, 30, what="the engine in gossip")
    poller = Poller(lan.state_dir, timeout_s=10.0)
    work = cluster.root / "plain"
    work.mkdir()
    rows: dict[str, list[tuple[float, float]]] = {"sbatch": [], "swarmd": []}
    via_swarmd(poller, -1)  # warm-up: first dispatch, connections
    plain_sbatch(cluster, work, -1)
    for n in range(rounds):
        order = ["sbatch", "swarmd"] if n % 2 == 0 else ["swarmd", "sbatch"]
        for side in order:
            if side == "sbatch":
                rows[side].append(plain_sbatch(cluster, work, n))
            else:
                rows[side].append(via_swarmd(poller, n))
    poller.close()
    return rows


def _report(rows: dict[str, list[tuple[float, float]]], rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {"rounds": rounds, "load": load(), "cpus": os.cpu_count()}
    for side, values in rows.items():
        out[side] = {
            "to_running_s": summary(v[0] for v in values),
            "to_result_s": summary(v[1] for v in values),
        }
    pairs = list(zip(rows["swarmd"], rows["sbatch"], strict=True))
    out["overhead"] = {
        "to_running_s": summary(s[0] - p[0] for s, p in pairs),
        "to_result_s": summary(s[1] - p[1] for s, p in pairs),
    }
    return out


def markdown(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"skipped: {result['skipped']}"

    def cell(s: dict[str, Any]) -> str:
        return f"{s['median']:.2f} s (p90 {s['p90']:.2f})"

    body = [
        (side, cell(result[side]["to_running_s"]), cell(result[side]["to_result_s"]))
        for side in ("sbatch", "swarmd")
    ]
    over = result["overhead"]
    body.append(("swarmd − sbatch", cell(over["to_running_s"]), cell(over["to_result_s"])))
    return table(["", "submit → command runs", "submit → result in hand"], body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    result = run(args.rounds)
    save("engines", result)
    print(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
