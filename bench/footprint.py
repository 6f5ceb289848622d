"""Footprint of an idle node: memory, CPU, start time, binary size.

    python -m bench.footprint [--quick] [--seconds 30] [--binary PATH | --no-build]

* **Idle node**: one daemon (defaults: mDNS on, bound to 127.0.0.1), left alone for
  ``settle_s``, then sampled once a second for ``seconds`` with psutil: RSS (resident
  set, the daemon plus any children it started) and CPU = (user + system CPU time used
  by that process tree during the window) / window wall time, in % of one core.
* **In a 3-node cluster**: the same for each node of a formed 3-node cluster (mDNS),
  the first node reported.
* **Start**: ``python -m swarmd --version`` (median of 5) and spawn -> control socket
  answers for a daemon run from this checkout (median of 3).
* **Binary** (``pyinstaller.spec``, one file): ``--binary PATH`` (or
  ``$SWARMD_BENCH_BINARY``) measures a built one; otherwise, unless ``--no-build`` or
  quick mode, it is built into a temporary directory (~35-60 s) and removed after.
  Size, ``swarmd --version`` time (it unpacks itself at every start), spawn -> control
  socket answers, and its idle RSS/CPU (bootloader + the daemon it runs).

Reference: a Ray head node idles at ~480 MiB RSS (measured here, see DESIGN.md).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Poller, daemons, load, save, table
from tests.harness import BinaryDaemon, Daemon, build_onefile, new_secret

RAY_HEAD_IDLE_MIB = 480  # DESIGN.md, "Verified platform facts"
BUILD_TIMEOUT_S = 600


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def sample(pid: int, seconds: float, interval: float = 1.0) -> dict[str, Any]:
    """RSS and CPU of the process tree rooted at ``pid`` over ``seconds``."""
    seen: dict[int, psutil.Process] = {}

    def cpu_total() -> float:
        total = 0.0
        for p in _tree(pid):
            seen.setdefault(p.pid, p)
        for p in seen.values():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        return total

    rss: list[float] = []
    cpu0, t0 = cpu_total(), time.monotonic()
    end = t0 + seconds
    procs = 0
    while True:
        tree = _tree(pid)
        procs = max(procs, len(tree))
        total = 0
        for p in tree:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        rss.append(total / 2**20)
        if time.monotonic() >= end:
            break
        time.sleep(min(interval, max(0.0, end - time.monotonic())))
    cpu1, t1 = cpu_total(), time.monotonic()
    return {
        "seconds": round(t1 - t0, 1),
        "processes": procs,
        "rss_mib_median": round(statistics.median(rss), 1),
        "rss_mib_max": round(max(rss), 1),
        "cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
    }


def _wait_answers(d: Daemon, timeout: float = 60) -> float:
    poller = Poller(d.state_dir)
    try:
        deadline = time.monotonic() + timeout
        while poller.states() is None:
            if d.proc is not None and d.proc.poll() is not None:
                raise RuntimeError(f"{d.name} exited {d.proc.returncode}:\n{d.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{d.name} did not answer in {timeout} s")
            time.sleep(0.01)
        return time.monotonic()
    finally:
        poller.close()


def _timed(argv: list[str], env: dict[str, str] | None = None, times: int = 5) -> float:
    took = []
    for _ in range(times):
        t = time.perf_counter()
        subprocess.run(argv, capture_output=True, timeout=60, check=True, env=env)
        took.append(time.perf_counter() - t)
    return round(statistics.median(took), 3)


def idle_one(settle_s: float, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="swarmd-bench-fp-") as tmp:
        d = Daemon(Path(tmp), "solo", secret=new_secret())
        with daemons([d]):
            d.start()
            _wait_answers(d)
            time.sleep(settle_s)
            assert d.proc is not None
            return sample(d.proc.pid, seconds)


def idle_cluster(settle_s: float, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="swarmd-bench-fp3-") as tmp:
        secret = new_secret()
        nodes = [Daemon(Path(tmp), f"f{i}", secret=secret) for i in (1, 2, 3)]
        with daemons(nodes):
            for d in nodes:
                d.start()
            for d in nodes:
                _wait_answers(d)
            everyone = {d.name: "alive" for d in nodes}
            pollers = [Poller(d.state_dir) for d in nodes]
            try:
                deadline = time.monotonic() + 60
                while not all(p.states() == everyone for p in pollers):
                    if time.monotonic() > deadline:
                        raise TimeoutError("3-node cluster did not form in 60 s")
                    time.sleep(0.1)
            finally:
                for p in pollers:
                    p.close()
            time.sleep(settle_s)
            # sample the three at once: one thread each would be fairer, but the window is
            # long and the sampling itself is cheap; sample node 1, then read the others'
            # CPU over the same window from their cpu_times
            others = {d.name: psutil.Process(d.proc.pid) for d in nodes[1:] if d.proc}
            before = {n: sum(p.cpu_times()[:2]) for n, p in others.items()}
            assert nodes[0].proc is not None
            first = sample(nodes[0].proc.pid, seconds)
            rest = {
                n: {
                    "cpu_percent": round(
                        100 * (sum(p.cpu_times()[:2]) - before[n]) / first["seconds"], 2
                    ),
                    "rss_mib": round(p.memory_info().rss / 2**20, 1),
                }
                for n, p in others.items()
            }
            return {"node": first, "others": rest}


def start_times() -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    version = _timed([sys.executable, "-m", "swarmd", "--version"], env)
    spawn = []
    with tempfile.TemporaryDirectory(prefix="swarmd-bench-st-") as tmp:
        for i in range(3):
            d = Daemon(Path(tmp), f"s{i}", secret=new_secret(), args=("--no-mdns",))
            with daemons([d]):
                t = time.monotonic()
                d.start()
                spawn.append(_wait_answers(d) - t)
    return {
        "python_version_s": version,
        "spawn_to_answers_s": round(statistics.median(spawn), 3),
    }


# ---------------------------------------------------------------- the binary


def build_binary(dest: Path) -> tuple[Path, float]:
    t = time.monotonic()
    built = build_onefile(dest / "dist", dest / "build", timeout=BUILD_TIMEOUT_S)
    took = time.monotonic() - t
    shutil.rmtree(dest / "build", ignore_errors=True)
    return built, took


def measure_binary(binary: Path, settle_s: float, seconds: float) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMD_", "PYTHON"))}
    out: dict[str, Any] = {
        "path": str(binary),
        "size_mb": round(binary.stat().st_size / 1e6, 1),
        "version_s": _timed([str(binary), "--version"], env),
    }
    spawn = []
    with tempfile.TemporaryDirectory(prefix="swarmd-bench-bin-") as tmp:
        for i in range(3):
            d = BinaryDaemon(binary, Path(tmp), f"b{i}", secret=new_secret())
            try:
                t = time.monotonic()
                d.start()
                spawn.append(_wait_answers(d) - t)
                if i == 0:
                    time.sleep(settle_s)
                    assert d.proc is not None
                    out["idle"] = sample(d.proc.pid, seconds)
            finally:
                d.stop()
    out["spawn_to_answers_s"] = round(statistics.median(spawn), 3)
    return out


def binary_section(binary: str | None, build: bool, settle_s: float, seconds: float) -> Any:
    if binary:
        return measure_binary(Path(binary), settle_s, seconds)
    if not build:
        return {"skipped": "no --binary given and building is off (quick mode or --no-build)"}
    if importlib.util.find_spec("PyInstaller") is None:
        return {"skipped": "PyInstaller is not installed (pip install -e '.[test]')"}
    with tempfile.TemporaryDirectory(prefix="swarmd-bench-build-") as tmp:
        built, took = build_binary(Path(tmp))
        result = measure_binary(built, settle_s, seconds)
        result["build_s"] = round(took, 1)
        result["path"] = "(built into a temporary directory, removed)"
        return result


def run(
    quick: bool = False,
    seconds: float | None = None,
    binary: str | None = None,
    build: bool | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    seconds = seconds if seconds is not None else (3.0 if quick else 30.0)
    settle_s = 1.0 if quick else 5.0
    binary = binary or os.environ.get("SWARMD_BENCH_BINARY") or None
    build = build if build is not None else not quick
    result: dict[str, Any] = {
        "quick": quick,
        "load_before": load(),
        "window_s": seconds,
        "settle_s": settle_s,
        "one_node": idle_one(settle_s, seconds),
        "three_nodes": idle_cluster(settle_s, seconds),
        "start": start_times(),
    }
    try:
        result["binary"] = binary_section(binary, build, settle_s, seconds)
    except Exception as e:  # the rest of the section is still worth keeping
        result["binary"] = {"error": f"{type(e).__name__}: {e}"}
    result["reference"] = {"ray_head_idle_rss_mib": RAY_HEAD_IDLE_MIB}
    result["load_after"] = load()
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def markdown(result: dict[str, Any]) -> str:
    one, three = result["one_node"], result["three_nodes"]["node"]
    start, binary = result["start"], result["binary"]
    rows: list[list[object]] = [
        [
            "one node, alone (python)",
            one["rss_mib_median"],
            one["cpu_percent"],
            one["processes"],
        ],
        [
            "one node of 3 (python)",
            three["rss_mib_median"],
            three["cpu_percent"],
            three["processes"],
        ],
    ]
    if "idle" in binary:
        b = binary["idle"]
        rows.append(
            ["one node, alone (binary)", b["rss_mib_median"], b["cpu_percent"], b["processes"]]
        )
    rows.append(
        [
            "Ray head, idle (DESIGN.md reference)",
            result["reference"]["ray_head_idle_rss_mib"],
            "",
            "",
        ]
    )
    lines = [
        "### Footprint of an idle node",
        "",
        f"Sampled every second for {result['window_s']:g} s after {result['settle_s']:g} s "
        "idle. RSS: median of the samples, the daemon's process tree. CPU: CPU time used by "
        "the tree in the window / the window, % of one core.",
        "",
        table(["node", "RSS (MiB)", "CPU (% of a core)", "processes"], rows),
        "",
        f"Start (python, this checkout): `swarmd --version` {start['python_version_s']:.2f} s, "
        f"spawn -> control socket answers {start['spawn_to_answers_s']:.2f} s (medians).",
    ]
    if "size_mb" in binary:
        built = f", built in {binary['build_s']:.0f} s" if "build_s" in binary else ""
        lines.append(
            f"Binary (PyInstaller one file): {binary['size_mb']:.1f} MB{built}; "
            f"`swarmd --version` {binary['version_s']:.2f} s, spawn -> control socket answers "
            f"{binary['spawn_to_answers_s']:.2f} s (medians)."
        )
    else:
        lines.append(f"Binary: {binary.get('skipped') or binary.get('error')}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--binary", help="a built swarmd binary to measure (no build)")
    parser.add_argument("--no-build", action="store_true", help="do not build the binary")
    args = parser.parse_args()
    result = run(args.quick, args.seconds, args.binary, False if args.no_build else None)
    save("footprint", result)
    print(markdown(result))


if __name__ == "__main__":
    main()
