"""Shared by the peer benchmarks: arguments, timing and the one JSON result line.

Each peer script runs under ``bench/.venv-peers/bin/python`` (not swarmd's venv) and
prints exactly one line ``RESULT {json}`` on stdout; ``bench/compare.py`` reads it.
Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

PREFIX = "RESULT "


def parse_args(
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    # SIGTERM (bench/compare.py's timeout) runs the scripts' finally blocks: the
    # cluster each one started is shut down, not orphaned.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    parser = argparse.ArgumentParser()
    parser.add_argument("--subtasks", type=int, default=10_000)
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--slots", type=int, default=4)
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    """Poll ``check`` until it is true; RuntimeError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Child processes started by the caller: killed (and reaped) on the way out."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def throughput(run_all: Callable[[int], int], n: int) -> dict[str, float]:
    """``run_all(n)`` submits n no-ops, waits for every result and returns how many
    came back; seconds from the first submit to the last result."""
    t0 = time.perf_counter()
    got = run_all(n)
    elapsed = time.perf_counter() - t0
    if got != n:
        raise RuntimeError(f"{got} of {n} results came back")
    return {"elapsed_s": round(elapsed, 3), "throughput_per_s": round(n / elapsed, 1)}


def latency(run_one: Callable[[int], object], n: int) -> dict[str, float]:
    """``run_one(i)`` submits one no-op and waits for its result; n times in a row,
    after one round trip that is not counted (the first result path set up)."""
    run_one(-1)
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        if run_one(i) != i:
            raise RuntimeError(f"wrong result for {i}")
        samples.append(time.perf_counter() - t0)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(0.99 * len(samples)))]
    return {
        "latency_median_ms": round(statistics.median(samples) * 1000, 2),
        "latency_p99_ms": round(p99 * 1000, 2),
        "sequential": n,
    }


def emit(result: dict[str, Any]) -> None:
    result.setdefault("python", platform.python_version())
    print(PREFIX + json.dumps(result), flush=True)


def quiet_env(**extra: str) -> dict[str, str]:
    """The environment for the peer's own processes."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.abspath(__file__)), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


def python() -> str:
    return sys.executable
