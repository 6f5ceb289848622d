"""A real one-node Slurm cluster on this machine, for tests (Debian's slurm-wlm 22.05).

Everything lives in a fresh directory: a munge key and its own ``munged`` (socket
there, so the machine's munge is not touched), ``slurm.conf`` with free ports and the
node as ``slurmd -C`` describes this machine, ``slurmctld -D -i`` and ``slurmd -D`` as
child processes. No cgroups (``proctrack/linuxproc``, ``task/none``), no accounting
(``sacct`` says so: the adapter then relies on ``squeue`` and the job's exit file).
Stopped by pid. Needs root (slurmd runs jobs as their user) and the packages
``slurm-wlm`` and ``munge`` (.ci/run installs them): :func:`unavailable` says why not.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.harness import free_port, wait_until

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def unavailable() -> str | None:
    """Why a Slurm cluster cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "a Slurm test cluster needs root (slurmd runs jobs as their users)"
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"slurm-wlm and munge are not installed ({', '.join(missing)} missing)"
    return None


def _node_line() -> str:
    """``NodeName=HOST CPUs=N ...`` as slurmd sees this machine (memory kept small)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[0]
    cpus = re.search(r"CPUs=(\d+)", first)
    name = re.search(r"NodeName=(\S+)", first)
    host = name.group(1) if name else socket.gethostname().split(".")[0]
    # NodeAddr: slurmctld reaches slurmd on loopback, whether the host name resolves or not
    count = cpus.group(1) if cpus else 1
    return f"NodeName={host} NodeAddr=127.0.0.1 CPUs={count} RealMemory=1000 State=UNKNOWN"


class SlurmCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.node = ""

    def write_config(self) -> None:
        r = self.root
        for sub in ("spool", "state"):
            (r / sub).mkdir(mode=0o700, exist_ok=True)
        (r / "munge").mkdir(mode=0o755, exist_ok=True)  # munged: its socket's dir must be
        key = r / "munge" / "key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        node_line = _node_line()
        self.node = node_line.split()[0].split("=", 1)[1]
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=swarmdtest",
                    "SlurmctldHost=localhost",
                    f"SlurmctldPort={free_port()}",
                    f"SlurmdPort={free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CryptoType=crypto/munge",
                    f"AuthInfo=socket={r}/munge/sock",
                    f"StateSaveLocation={r}/state",
                    f"SlurmdSpoolDir={r}/spool",
                    f"SlurmctldPidFile={r}/slurmctld.pid",
                    f"SlurmdPidFile={r}/slurmd.pid",
                    f"SlurmctldLogFile={r}/slurmctld.log",
                    f"SlurmdLogFile={r}/slurmd.log",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "MpiDefault=none",
                    "SchedulerType=sched/backfill",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "DefMemPerCPU=50",
                    "ReturnToService=1",
                    "JobCompType=jobcomp/none",
                    "AccountingStorageType=accounting_storage/none",
                    "MinJobAge=300",
                    "SlurmctldTimeout=30",
                    "SlurmdTimeout=30",
                    node_line,
                    f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _spawn(self, name: str, *argv: str) -> None:
        log = open(self.root / f"{name}.out", "ab")  # noqa: SIM115 - the child owns it
        self.procs.append(
            subprocess.Popen(argv, stdout=log, stderr=log, env=self.env, cwd=self.root)
        )
        log.close()

    def start(self, timeout: float = 30.0) -> SlurmCluster:
        self.write_config()
        r = self.root
        self._spawn(
            "munged",
            "munged",
            "-F",
            f"--socket={r}/munge/sock",
            f"--key-file={r}/munge/key",
            f"--pid-file={r}/munge/pid",
            f"--log-file={r}/munge/log",
            f"--seed-file={r}/munge/seed",
        )
        wait_until(self._munge_up, timeout, what=self._say("munged's socket"))
        self._spawn("slurmctld", "slurmctld", "-D", "-i")
        self._spawn("slurmd", "slurmd", "-D")
        wait_until(lambda: self.node_state() == "idle", timeout, 0.1, what=self._say("node idle"))
        return self

    def _munge_up(self) -> bool:
        self.node_state(check_only=True)
        return (self.root / "munge" / "sock").exists()

    def _say(self, what: str) -> str:
        logs = "".join(
            f"\n--- {p.name}:\n{p.read_text(errors='replace')[-1500:]}"
            for p in sorted(self.root.glob("*.out"))
        )
        return what + logs

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, capture_output=True, text=True, env=self.env, check=check, timeout=30
        )

    def node_state(self, check_only: bool = False) -> str:
        for p in self.procs:
            if p.poll() is not None:
                raise AssertionError(self._say(f"{p.args[0]!r} exited {p.returncode}"))
        if check_only:
            return ""
        done = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    def jobs(self) -> list[tuple[str, str]]:
        """(job id, state) of the jobs squeue lists as pending or running."""
        out = self.run("squeue", "-h", "-o", "%i|%T").stdout
        return [tuple(line.split("|", 1)) for line in out.splitlines() if "|" in line]  # type: ignore[misc]

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.run("scancel", "--full", "-u", "root", check=False)
            deadline = time.monotonic() + 5
            while self.jobs() and time.monotonic() < deadline:
                time.sleep(0.1)
        for p in reversed(self.procs):  # slurmd, slurmctld, munged
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


@contextlib.contextmanager
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A started cluster in a short-named directory (munge's socket path must stay
    under the unix socket limit), stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="swarmd-slurm-"))
    root.chmod(0o755)
    cluster = SlurmCluster(root)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
