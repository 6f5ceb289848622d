"""swarmd side by side with Dask distributed, Ray and Celery+Redis, in one run.

    .venv/bin/python bench/compare.py [--subtasks 10000] [--sequential 200]
                                      [--only swarmd,dask,ray,celery] [--quick] [--rounds 3]

Every system gets the same shape on this machine, everything on 127.0.0.1: one
scheduler/coordinator/broker that runs no work and two worker processes with 4 slots
each. Throughput: N no-op subtasks submitted at once, from the first submit until the
last result is in. Latency: one no-op submitted, its result awaited, repeated; median
and p99. Ratios are arranged so that > 1 means swarmd is better: throughput
swarmd/peer, latency peer/swarmd.

swarmd runs through ``bench/dispatch.py`` (real daemons, in this interpreter). The
peers run as subprocesses of ``bench/.venv-peers/bin/python`` (``bench/peers/*.py``),
a virtual environment this script creates on first use from
``bench/peers/requirements.txt`` (pinned) and reuses afterwards. Celery gets its own
redis-server on a free loopback port (no persistence, in a temporary directory; Debian's
``redis-server`` package, installed with apt-get when missing and running as root).
A peer that cannot be installed or run is reported as ``{"skipped": why}``.

Writes bench/results/compare.json and prints a markdown table. ``run()`` and
``markdown()`` are what ``bench/run_all.py`` calls.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEERS_DIR = BENCH / "peers"
VENV = BENCH / ".venv-peers"
REQUIREMENTS = PEERS_DIR / "requirements.txt"
RESULTS = BENCH / "results" / "compare.json"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.compare_report import PEERS, SLOTS, SYSTEMS, markdown, ratios  # noqa: E402

IMPORTS = {"dask": "distributed", "ray": "ray", "celery": "celery"}
FULL = (10_000, 200)  # subtasks, sequential round trips
QUICK = (1_000, 30)
FULL_ROUNDS = 3  # the full run measures every system 3 times, alternating: medians
PEER_TIMEOUT_S = 900.0


class Skip(Exception):
    """A system that cannot be measured here; the message says why."""


# ---------------------------------------------------------------- ratios and the table


def _loadavg() -> list[float] | None:
    with contextlib.suppress(OSError, ValueError):
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    return None


def machine_info() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_before": _loadavg(),
    }


def swarmd_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("swarmd", "pyzmq", "msgspec", "uvloop"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


# ---------------------------------------------------------------- the peers' venv


def _tail(text: str, lines: int = 3) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def ensure_venv(log: bool = True) -> Path:
    """bench/.venv-peers with the pinned peers; (re)installed when requirements.txt
    changed. Returns its python; Skip if it cannot be made at all."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".requirements.sha256"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    if not python.exists():
        if log:
            print(f"compare: creating {VENV.relative_to(ROOT)}", file=sys.stderr, flush=True)
        made = subprocess.run(
            [sys.executable, "-m", "venv", str(VENV)], capture_output=True, text=True
        )
        if made.returncode != 0:
            raise Skip(f"python -m venv failed: {_tail(made.stderr)}")
    if log:
        print(f"compare: installing {REQUIREMENTS.relative_to(ROOT)}", file=sys.stderr, flush=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    with open(VENV / "install.log", "w") as out:
        done = subprocess.run([*pip, "-r", str(REQUIREMENTS)], stdout=out, stderr=out)
        if done.returncode != 0:
            # One failing pin (say, no wheel for this platform) must not cost the others.
            for line in REQUIREMENTS.read_text().splitlines():
                spec = line.split("#", 1)[0].strip()
                if spec:
                    subprocess.run([*pip, spec], stdout=out, stderr=out)
    if done.returncode == 0:
        stamp.write_text(wanted + "\n")
    return python


def peer_versions(python: Path) -> dict[str, str | None]:
    """The installed version of each peer's package; None where it does not import."""
    code = (
        "import importlib, json\n"
        "out = {}\n"
        f"for peer, mod in {IMPORTS!r}.items():\n"
        "    try:\n"
        "        out[peer] = importlib.import_module(mod).__version__\n"
        "    except Exception as exc:\n"
        "        out[peer] = None\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return dict.fromkeys(PEERS)
    parsed: dict[str, str | None] = json.loads(done.stdout.strip().splitlines()[-1])
    return parsed


# ---------------------------------------------------------------- redis for celery


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", "redis-server"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        found = shutil.which("redis-server")
        if found:
            return found
        raise Skip(f"redis-server missing and apt-get install failed: {_tail(done.stderr)}")
    raise Skip("redis-server not installed (and not root with apt-get to install it)")


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server on a free loopback port, no persistence; its URL."""
    binary = _redis_binary()
    with tempfile.TemporaryDirectory(prefix="swarmd-bench-redis-") as tmp:
        port = _free_port()
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        cmd += ["no", "--dir", tmp, "--daemonize", "no", "--protected-mode", "yes"]
        log = open(Path(tmp) / "redis.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=tmp)
        try:
            deadline = time.monotonic() + 10
            while not _redis_ping(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    text = (Path(tmp) / "redis.log").read_text(errors="replace")
                    raise Skip(f"redis-server did not start: {_tail(text)}")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- running one system


def _session(sid: int) -> list[int]:
    """The processes of session ``sid`` (one this script started)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry.name)) == sid:
                    out.append(int(entry.name))
    return out


def end_session(sid: int, grace_s: float = 10.0) -> None:
    """SIGTERM every process in session ``sid``, SIGKILL what is left after
    ``grace_s`` (a peer script cleans up its cluster on SIGTERM)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        pids = _session(sid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = [p for p in _session(sid) if not _zombie(p)]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def run_peer(
    name: str,
    python: Path,
    subtasks: int,
    sequential: int,
    extra: Sequence[str] = (),
    timeout: float = PEER_TIMEOUT_S,
) -> dict[str, Any]:
    """bench/peers/NAME_bench.py in its own session; its RESULT line, or why not."""
    script = PEERS_DIR / f"{name}_bench.py"
    cmd = [str(python), str(script), "--subtasks", str(subtasks), "--sequential", str(sequential)]
    cmd += ["--slots", str(SLOTS), *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    with tempfile.TemporaryDirectory(prefix=f"swarmd-bench-{name}-") as tmp:
        out_path, err_path = Path(tmp) / "out", Path(tmp) / "err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=err, env=env, cwd=tmp, start_new_session=True
            )
            try:
                rc: int | None = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                rc = None
            finally:
                # It, and whatever it left behind in its session (Ray's workers put
                # themselves in process groups of their own, not in a session): gone.
                end_session(proc.pid)
                proc.wait(10)
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
    if rc is None:
        return {"skipped": f"did not finish within {timeout:g} s"}
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            parsed: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return parsed
    return {"skipped": f"exit code {rc}: {_tail(stderr or stdout)}"}


def run_swarmd(subtasks: int, sequential: int) -> dict[str, Any]:
    from bench import dispatch

    result = dispatch.measure(subtasks, sequential, SLOTS, log=False)
    versions = swarmd_versions()
    result["version"] = versions.get("swarmd", "?")
    result["packages"] = versions
    result["setup"] = (
        f"coordinator daemon (runs no work) + 2 worker daemons (max_concurrency {SLOTS}, "
        "python pool), CURVE on loopback"
    )
    return result


def measure_one(
    name: str, subtasks: int, sequential: int, python: Path | None, log: bool
) -> dict[str, Any]:
    if log:
        print(f"compare: {name} …", file=sys.stderr, flush=True)
    load = _loadavg()
    started = time.monotonic()
    try:
        if name == "swarmd":
            result = run_swarmd(subtasks, sequential)
        elif python is None:
            raise Skip("no peers' virtual environment")
        elif name == "celery":
            with redis_server() as url:
                result = run_peer(name, python, subtasks, sequential, ["--redis-url", url])
        else:
            result = run_peer(name, python, subtasks, sequential)
    except Skip as exc:
        result = {"skipped": str(exc)}
    except Exception as exc:
        traceback.print_exc()
        result = {"skipped": f"{type(exc).__name__}: {exc}"}
    result["loadavg_before"] = load
    result["wall_s"] = round(time.monotonic() - started, 1)
    if log:
        print(f"compare: {name}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


FIGURES = ("throughput_per_s", "latency_median_ms", "latency_p99_ms", "elapsed_s")


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One system's rounds as one result: each figure the median over the rounds that
    ran (the first round's other fields), with every round's figures kept."""
    ran = [r for r in rounds if "skipped" not in r]
    if len(rounds) == 1 or not ran:
        return rounds[0]
    out = dict(ran[0])
    for key in FIGURES:
        values = [r[key] for r in ran if isinstance(r.get(key), int | float)]
        if values:
            out[key] = round(statistics.median(values), 2)
    out["rounds"] = [{k: r.get(k) for k in (*FIGURES, "skipped")} for r in rounds]
    return out


def run(
    quick: bool = False,
    subtasks: int | None = None,
    sequential: int | None = None,
    only: Sequence[str] = SYSTEMS,
    log: bool = True,
    rounds: int | None = None,
) -> dict[str, Any]:
    """Measure each system in ``only`` one after another, ``rounds`` times over
    (alternating, so a noisy minute on a shared machine hits all of them); each
    figure is the median of its rounds. The result dict."""
    default = QUICK if quick else FULL
    rounds = rounds or (1 if quick else FULL_ROUNDS)
    n = subtasks or default[0]
    seq = sequential or default[1]
    unknown = [s for s in only if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}")
    result: dict[str, Any] = {
        "subtasks": n,
        "sequential": seq,
        "slots_per_worker": SLOTS,
        "machine": machine_info(),
        "results": {},
    }
    python: Path | None = None
    versions: dict[str, str | None] = {}
    skipped: dict[str, str] = {}
    if any(s in PEERS for s in only):
        try:
            python = ensure_venv(log)
            versions = peer_versions(python)
        except (Skip, OSError, subprocess.SubprocessError) as exc:
            skipped = dict.fromkeys(PEERS, f"peers' venv: {exc}")
        for peer in PEERS:
            if peer not in skipped and versions.get(peer) is None:
                skipped[peer] = (
                    f"{IMPORTS[peer]} does not import from {VENV.relative_to(ROOT)} "
                    f"(see {(VENV / 'install.log').relative_to(ROOT)})"
                )
    result["machine"]["peer_versions"] = versions
    result["rounds"] = rounds
    measured: dict[str, list[dict[str, Any]]] = {}
    for _ in range(rounds):
        for name in SYSTEMS:
            if name in only and name not in skipped:
                measured.setdefault(name, []).append(measure_one(name, n, seq, python, log))
    for name in SYSTEMS:
        if name in skipped and name in only:
            result["results"][name] = {"skipped": skipped[name]}
        elif name in measured:
            result["results"][name] = combine(measured[name])
    result["machine"]["loadavg_after"] = _loadavg()
    result["ratios"] = ratios(result["results"])
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--subtasks", type=int, help=f"default {FULL[0]} ({QUICK[0]} quick)")
    parser.add_argument("--sequential", type=int, help=f"default {FULL[1]} ({QUICK[1]} quick)")
    parser.add_argument("--only", default=",".join(SYSTEMS), help="comma-separated systems")
    parser.add_argument("--quick", action="store_true", help="the small size (CI, development)")
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"measure every system this many times, alternating (default {FULL_ROUNDS}, 1 quick)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    try:
        result = run(args.quick, args.subtasks, args.sequential, only, rounds=args.rounds)
    except ValueError as exc:
        parser.error(str(exc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
