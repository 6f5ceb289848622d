"""Dask distributed: a scheduler process and two worker processes (``--nthreads
slots``, no nanny), each started from the command line on 127.0.0.1, and a Client in
this process. Throughput: ``client.gather(client.map(noop, range(N)))``; latency:
``client.submit(noop, i, pure=False).result()`` one after another.

    bench/.venv-peers/bin/python bench/peers/dask_bench.py --subtasks 10000 --sequential 200
"""

from __future__ import annotations

import subprocess

import _common as common
import dask
import distributed
from distributed import Client


def noop(x: int) -> int:
    return x


def main() -> None:
    args = common.parse_args()
    port = common.free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = common.quiet_env(DASK_DISTRIBUTED__LOGGING__DISTRIBUTED="error")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    with common.processes() as procs:
        scheduler = [common.python(), "-m", "distributed.cli.dask_scheduler"]
        scheduler += ["--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
        procs.append(subprocess.Popen(scheduler, **quiet))  # type: ignore[call-overload]
        for name in ("w1", "w2"):
            worker = [common.python(), "-m", "distributed.cli.dask_worker", address]
            worker += ["--host", "127.0.0.1", "--nthreads", str(args.slots), "--nworkers", "1"]
            worker += ["--no-nanny", "--no-dashboard", "--name", name]
            procs.append(subprocess.Popen(worker, **quiet))  # type: ignore[call-overload]
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            client.gather(client.map(noop, range(4 * args.slots), pure=False))  # warm up

            def run_all(n: int) -> int:
                futures = client.map(noop, range(n), pure=False)
                results = client.gather(futures)
                del futures
                return len(results)

            result = {"peer": "dask", "version": distributed.__version__, "subtasks": args.subtasks}
            result.update(common.throughput(run_all, args.subtasks))

            def run_one(i: int) -> int:
                return int(client.submit(noop, i, pure=False).result())

            result.update(common.latency(run_one, args.sequential))
            result["dask"] = dask.__version__
            result["setup"] = (
                f"dask scheduler + 2 dask workers (--nthreads {args.slots}, --no-nanny), "
                "separate processes; Client in the driver"
            )
        common.emit(result)


if __name__ == "__main__":
    main()
