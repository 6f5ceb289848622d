"""A real one-node Ray cluster for tests and benches: ``ray start --head`` on loopback.

Ray comes from PyPI into its own venv (``.venv-ray`` at the repository root, pinned in
tests/ray-requirements.txt, made on first use: about 30 s, then reused). swarmd itself
never imports Ray: its adapter speaks the Jobs API over HTTP, so Ray and its pinned
dependencies stay out of swarmd's venv. ``SWARMD_RAY_VENV`` points at another venv that
has ``ray[default]``; ``SWARMD_SKIP_RAY=1`` skips the tests that need one.

The head listens on 127.0.0.1 only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: without it
Ray on Linux replaces 127.0.0.1 by the host's LAN address), every port is a free one
picked here (two clusters, or someone else's, never collide), and its files live in a
fresh short temp dir (Ray's Unix socket paths must stay under 108 bytes). ``ray stop``
kills every Ray process of the machine by name, so it is never used: the head is
started in a session of its own and stopped by the ids of the processes in that
session, plus any process whose command line names the temp dir.

    python tests/ray_cluster.py     # start one, print its address, stop it on Ctrl-C
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = Path(__file__).resolve().parent / "ray-requirements.txt"
VENV = ROOT / ".venv-ray"
CPUS = 2
MEMORY_MB = 2048
START_TIMEOUT_S = 120.0


class RayUnavailable(Exception):
    """No venv with ``ray[default]`` here, and none could be made."""


def _tail(text: str, lines: int = 5) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def ray_venv() -> Path:
    """A venv whose ``bin/ray`` serves the dashboard and Jobs API: ``SWARMD_RAY_VENV``,
    else ``.venv-ray``, made (or remade when the requirements changed) here."""
    if given := os.environ.get("SWARMD_RAY_VENV"):
        venv = Path(given)
        if not (venv / "bin" / "ray").exists():
            raise RayUnavailable(f"SWARMD_RAY_VENV={given} has no bin/ray")
        return venv
    python = VENV / "bin" / "python"
    stamp = VENV / ".requirements.sha256"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return VENV
    if not python.exists():
        made = subprocess.run(
            [sys.executable, "-m", "venv", str(VENV)], capture_output=True, text=True
        )
        if made.returncode != 0:
            raise RayUnavailable(f"python -m venv {VENV} failed: {_tail(made.stderr)}")
    print(f"ray_cluster: installing {REQUIREMENTS.name} into {VENV}", file=sys.stderr)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run(
        [*pip, "-r", str(REQUIREMENTS)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RayUnavailable(f"pip install -r {REQUIREMENTS.name} failed: {_tail(done.stderr)}")
    stamp.write_text(wanted + "\n")
    return VENV


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together while picked)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def ray_env(venv: Path) -> dict[str, str]:
    """The environment for the ``ray`` CLI and the head's processes."""
    env = dict(os.environ)
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DISABLE_DOCKER_CPU_WARNING="1",
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    env.pop("RAY_ADDRESS", None)
    env.pop("PYTHONPATH", None)  # the head must not import this checkout's modules
    return env


@dataclass
class RayHead:
    """A running head: ``address`` is its dashboard (Jobs API) URL."""

    venv: Path
    address: str
    gcs_address: str
    temp_dir: Path
    session_id: int  # the session (setsid) the head's processes were started in

    def processes(self) -> list[psutil.Process]:
        """This head's processes: those of its session, those naming its temp dir, and
        their children (never anyone else's Ray)."""
        found: dict[int, psutil.Process] = {}
        marker = str(self.temp_dir)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                ours = os.getsid(proc.pid) == self.session_id
                ours = ours or marker in " ".join(proc.info["cmdline"] or ())
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
            if ours and proc.pid != os.getpid():
                found[proc.pid] = proc
        for proc in list(found.values()):
            with contextlib.suppress(psutil.Error):
                for child in proc.children(recursive=True):
                    found.setdefault(child.pid, child)
        return list(found.values())

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM to this head's processes, SIGKILL to what is left after ``grace_s``
        (gcs_server and raylet take longer than that to shut down gracefully, which a
        test cluster does not need). Every process seen once is followed to its end: a
        job's driver lives in a session of its own and loses its parent here."""
        known: dict[int, psutil.Process] = {}
        deadline = time.monotonic() + grace_s
        while True:
            for proc in self.processes():
                known.setdefault(proc.pid, proc)
            alive = [p for p in known.values() if _running(p)]
            if not alive:
                break
            late = time.monotonic() > deadline
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGKILL if late else signal.SIGTERM)
            psutil.wait_procs(alive, timeout=0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def ray(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run the venv's ``ray`` CLI against this head (``ray job ...``, ``ray status``)."""
        env = ray_env(self.venv)
        env["RAY_ADDRESS"] = self.address
        return subprocess.run(
            [str(self.venv / "bin" / "ray"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )

    def get_json(self, path: str) -> object:
        with urllib.request.urlopen(self.address + path, timeout=10) as reply:
            return json.loads(reply.read())


def job_supervisor(marker: str) -> psutil.Process | None:
    """The Ray worker process (``ray::JobSupervisor``) that runs the entrypoint of the
    job whose command line has ``marker``: killing it is what a lost node does."""
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if marker in " ".join(proc.info["cmdline"] or ()) and proc.pid != os.getpid():
                for parent in proc.parents():
                    if parent.name().startswith("ray::JobSupervisor"):
                        return parent
    return None


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _head_args(temp_dir: Path, cpus: int, memory_mb: int) -> tuple[list[str], int, int]:
    gcs, dash, client, agent, agent_grpc, metrics, env_agent, nm, om = _free_ports(9)
    args = [
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={env_agent}",
        f"--node-manager-port={nm}",
        f"--object-manager-port={om}",
        f"--num-cpus={cpus}",
        "--num-gpus=0",
        f"--memory={memory_mb * 1024 * 1024}",
        f"--object-store-memory={100 * 1024 * 1024}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    return args, gcs, dash


@contextlib.contextmanager
def ray_head(
    venv: Path | None = None, *, cpus: int = CPUS, memory_mb: int = MEMORY_MB
) -> Iterator[RayHead]:
    """Start a head on loopback, wait for its Jobs API, stop it (by pid) at the end."""
    venv = venv or ray_venv()
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    args, gcs, dash = _head_args(temp_dir, cpus, memory_mb)
    log = temp_dir / "ray-start.log"
    with open(log, "w") as out:
        starter = subprocess.Popen(
            [str(venv / "bin" / "ray"), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ray_env(venv),
            start_new_session=True,
        )
    head = RayHead(venv, f"http://127.0.0.1:{dash}", f"127.0.0.1:{gcs}", temp_dir, starter.pid)
    try:
        _wait_ready(head, starter, log)
        yield head
    finally:
        with contextlib.suppress(ProcessLookupError):
            starter.kill()
        starter.wait()
        head.stop()


def _wait_ready(head: RayHead, starter: subprocess.Popen[bytes], log: Path) -> None:
    """Until the dashboard answers /api/jobs/ and reports the head's CPUs."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        code = starter.poll()
        if code not in (None, 0):
            raise RuntimeError(f"ray start exited {code}: {_tail(log.read_text(), 8)}")
        if code == 0:
            with contextlib.suppress(OSError, ValueError):
                head.get_json("/api/jobs/")
                status = head.get_json("/api/cluster_status")
                usage = status["data"]["clusterStatus"]["loadMetricsReport"]["usage"]  # type: ignore[index]
                if usage.get("CPU"):
                    return
        time.sleep(0.2)
    raise RuntimeError(f"the Ray head did not come up in {START_TIMEOUT_S:g} s: {log}")


def main() -> None:
    with ray_head() as head:
        print(f"Ray head: Jobs API {head.address}, GCS {head.gcs_address}, {head.temp_dir}")
        print("Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
