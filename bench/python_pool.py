"""The python pool alone: CPU and wall time per no-op call, with and without
SCHED_BATCH for its worker processes, alternated in one run.

    python bench/python_pool.py [--calls 4000] [--rounds 3] [--workers 4]

Drives the real :class:`swarmd.executors.python.PythonPool` (spawned worker processes,
pipes) on uvloop as the daemon does: ``operator:truth`` calls, twice as many in flight
as there are workers. CPU is this process's plus its children's (user + system), per
call; the machine is shared, so compare the two variants within one run. Writes
bench/results/python_pool.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from swarmd.executors import ExecRequest  # noqa: E402
from swarmd.executors.python import PythonPool  # noqa: E402

NOOP = ExecRequest(
    task_id="t", subtask_id="s", attempt=1, kind="python", call="operator:truth", args=(1,)
)


def cpu_s() -> float:
    """CPU seconds of this process and its children so far."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        times = p.cpu_times()
        total += times.user + times.system
    return total


async def run_calls(pool: PythonPool, root: Path, calls: int, in_flight: int) -> None:
    gate = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with gate:
            result = await pool.run(NOOP, workdir_root=root)
            if result.error is not None:
                raise RuntimeError(result.error)

    await asyncio.gather(*(one() for _ in range(calls)))


async def measure(batch: bool, calls: int, workers: int) -> dict[str, float]:
    pool = PythonPool(workers, batch_scheduling=batch)
    try:
        with tempfile.TemporaryDirectory(prefix="swarmd-pool-") as tmp:
            root = Path(tmp)
            await run_calls(pool, root, 10 * workers, 2 * workers)  # start the workers
            cpu0, wall0 = cpu_s(), time.perf_counter()
            await run_calls(pool, root, calls, 2 * workers)
            cpu1, wall1 = cpu_s(), time.perf_counter()
    finally:
        pool.close()
    return {"cpu_us": 1e6 * (cpu1 - cpu0) / calls, "wall_us": 1e6 * (wall1 - wall0) / calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"batch": [], "normal": []}
    loop_run: Any = asyncio.run
    try:
        import uvloop

        loop_run = uvloop.run
    except ImportError:
        pass
    for _ in range(args.rounds):
        for name, batch in (("normal", False), ("batch", True)):
            runs[name].append(loop_run(measure(batch, args.calls, args.workers)))
    result: dict[str, Any] = {"calls": args.calls, "rounds": args.rounds}
    for name, rounds in runs.items():
        cpu = statistics.median(r["cpu_us"] for r in rounds)
        wall = statistics.median(r["wall_us"] for r in rounds)
        result[name] = {"cpu_us_per_call": round(cpu, 1), "wall_us_per_call": round(wall, 1)}
        print(f"{name:>6}: CPU {cpu:6.1f} µs per call, wall {wall:6.1f} µs per call (median)")
    out = ROOT / "bench" / "results" / "python_pool.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
