"""Celery with Redis as broker and result backend: two ``celery worker`` processes,
prefork pool with ``--concurrency slots`` (each a parent plus its pool children),
started from the command line; the redis-server is ``bench/compare.py``'s (pass
``--redis-url``). Throughput: ``group(noop.s(i) for i in range(N)).apply_async().get()``;
latency: ``noop.delay(i).get()`` one after another.

    bench/.venv-peers/bin/python bench/peers/celery_bench.py --redis-url redis://127.0.0.1:PORT/0
"""

from __future__ import annotations

import os
import subprocess
import sys

import _common as common
import celery
import kombu
import redis
from celery import Celery, group

URL = os.environ.get("SWARMD_BENCH_REDIS", "redis://127.0.0.1:6379/0")
app = Celery("celery_bench", broker=URL, backend=URL)
app.conf.broker_connection_retry_on_startup = True
app.conf.worker_hijack_root_logger = False


@app.task
def noop(x: int) -> int:
    return x


def main() -> None:
    args = common.parse_args(lambda p: p.add_argument("--redis-url", required=True))
    if args.redis_url != URL:  # the workers and this module must agree: run again with it
        os.environ["SWARMD_BENCH_REDIS"] = args.redis_url
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])
    env = common.quiet_env(SWARMD_BENCH_REDIS=URL)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    with common.processes() as procs:
        for name in ("w1", "w2"):
            worker = [common.python(), "-m", "celery", "-A", "celery_bench", "worker"]
            worker += ["--pool", "prefork", "--concurrency", str(args.slots), "-n", f"{name}@bench"]
            worker += ["--loglevel", "WARNING", "--without-gossip", "--without-mingle"]
            worker += ["--without-heartbeat"]
            procs.append(subprocess.Popen(worker, **quiet))  # type: ignore[call-overload]
        common.wait_for("2 celery workers", lambda: len(app.control.ping(timeout=0.5)) >= 2, 60)
        group(noop.s(i) for i in range(4 * args.slots)).apply_async().get(timeout=60)  # warm up

        def run_all(n: int) -> int:
            return len(group(noop.s(i) for i in range(n)).apply_async().get(timeout=1800))

        result = {"peer": "celery", "version": celery.__version__, "subtasks": args.subtasks}
        result.update(common.throughput(run_all, args.subtasks))
        result.update(common.latency(lambda i: noop.delay(i).get(timeout=60), args.sequential))
        result["kombu"] = kombu.__version__
        result["redis_py"] = redis.__version__
        result["setup"] = (
            f"redis-server (broker + result backend) + 2 celery workers (prefork, "
            f"--concurrency {args.slots}); without gossip/mingle/heartbeat"
        )
    common.emit(result)


if __name__ == "__main__":
    main()
