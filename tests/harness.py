"""Real swarmd daemons as separate processes, for integration tests.

Polling is always against a deadline (``wait_until``), never a bare sleep.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import zmq

from protocol import codec
from protocol.messages import PeersReply, PeersRequest, StatsReply, StatsRequest
from swarmctl.client import Client, RequestFailed, Unreachable
from swarmd.credentials import Credentials, NodeKeys
from swarmd.identity import ClusterKeys
from swarmd.transport import curve_client

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def wait_until(
    fn: Callable[[], T | None], timeout: float, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or fn}: {last!r}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_secret() -> str:
    return secrets.token_hex(32)


class Daemon:
    def __init__(
        self,
        root: Path,
        name: str,
        *,
        secret: str | None = None,
        port: int | None = None,
        args: tuple[str, ...] = (),
        config: str | None = None,
        real_gpus: bool = False,
        probe: bool = False,
    ) -> None:
        self.name = name
        self.real_gpus = real_gpus
        self.state_dir = root / name
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.args = args
        self.log_path = root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        if secret is not None:
            (self.state_dir / "cluster.secret").write_text(secret + "\n")
            os.chmod(self.state_dir / "cluster.secret", 0o600)
        self.config_path: Path | None = None
        if not probe and "probe" not in (config or ""):
            # No probing of this machine's usual model-server ports unless a test asks:
            # whatever happens to listen there must not change a test's cluster.
            config = (config or "") + "\n[models]\nprobe = []\n"
        if config is not None:
            self.config_path = root / f"{name}.toml"
            self.config_path.write_text(config)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "swarmd", "run", "--state-dir", str(self.state_dir)]
        cmd += ["--bind", "127.0.0.1", "--port", str(self.port), "--name", self.name]
        if self.config_path:
            cmd += ["--config", str(self.config_path)]
        if not any(a.startswith("--gateway-port") for a in self.args):
            cmd += ["--gateway-port", "0"]  # tests that want the gateway give its port
        return cmd + list(self.args)

    def start(self) -> Daemon:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("SWARMD_CONFIG", None)
        if not self.real_gpus:  # GPU-less unless asked: tests declare the GPUs they need
            path = [str(ROOT / "tests" / "nonvml"), *filter(None, [env.get("PYTHONPATH")])]
            env["PYTHONPATH"] = os.pathsep.join(path)
        self.proc = subprocess.Popen(self.command(), stderr=log, stdout=log, env=env, cwd=ROOT)
        log.close()
        return self

    def wait_ready(self, timeout: float = 15.0) -> Daemon:
        def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
            return self.try_peers() is not None

        try:
            wait_until(answers, timeout, what=f"{self.name} to answer on its control socket")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.name}'s log:\n{self.log()[-4000:]}") from None
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait_exit(10)

    def term(self, timeout: float = 10.0) -> int:
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ------------------------------------------------------------ in-process control client

    def request(self, message: Any, timeout: float = 2.0) -> Any:
        client = Client(self.state_dir, timeout_s=timeout)
        try:
            return client.request(message)
        finally:
            client.close()

    def try_peers(self) -> list[dict[str, Any]] | None:
        try:
            reply = self.request(PeersRequest(), timeout=1.0)
        except (Unreachable, RequestFailed):
            return None
        assert isinstance(reply, PeersReply)
        result: list[dict[str, Any]] = codec.to_builtins(reply.peers)
        return result

    def peers(self) -> list[dict[str, Any]]:
        result = self.try_peers()
        assert result is not None, f"{self.name} did not answer:\n{self.log()}"
        return result

    def node_id(self) -> str:
        return (self.state_dir / "node_id").read_text().strip()

    def states(self) -> dict[str, str]:
        """node name -> state, as this daemon sees the cluster."""
        return {p["name"]: p["state"] for p in self.peers()}

    def counters(self) -> dict[str, int]:
        reply = self.request(StatsRequest())
        assert isinstance(reply, StatsReply)
        return reply.counters


def swarmctl(
    *args: str, state_dir: Path | None = None, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "swarmctl"]
    if state_dir is not None:
        cmd += ["--state-dir", str(state_dir)]
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    return subprocess.run(
        cmd + list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, env=env
    )


# ---------------------------------------------------------------- the one-file binary


def build_onefile(
    dist: Path, work: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> Path:
    """Build dist/swarmd from pyinstaller.spec with this interpreter's PyInstaller;
    RuntimeError with PyInstaller's output if it fails."""
    cmd = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN"]
    cmd += ["--distpath", str(dist), "--workpath", str(work), str(ROOT / "pyinstaller.spec")]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, SWARMD_BUILD="onefile", **(env or {})),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pyinstaller failed:\n{proc.stdout}\n{proc.stderr}")
    return dist / "swarmd"


class BinaryDaemon(Daemon):
    """A node run by the built binary instead of this checkout's interpreter, in a
    session of its own, without this process's SWARMD_* and PYTHON* variables."""

    def __init__(self, binary: Path, root: Path, name: str, **kwargs: Any) -> None:
        super().__init__(root, name, **kwargs)
        self.binary = binary

    def command(self) -> list[str]:
        cmd = [str(self.binary), "run", "--state-dir", str(self.state_dir)]
        cmd += ["--bind", "127.0.0.1", "--port", str(self.port), "--name", self.name]
        if self.config_path:
            cmd += ["--config", str(self.config_path)]
        return cmd + list(self.args)

    def start(self) -> BinaryDaemon:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMD_", "PYTHON"))}
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=log, env=env, start_new_session=True
        )
        log.close()
        return self

    def stop(self) -> None:
        """Stop the whole process group: the onefile bootloader forwards SIGTERM to the
        daemon, its child, but a SIGKILL of the bootloader alone leaves the daemon running."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def processes(self) -> list[int]:
        """The bootloader and everything under it."""
        assert self.proc is not None
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            with contextlib.suppress(OSError):
                todo += map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
        return found


def member_socket(
    ctx: zmq.Context[zmq.Socket[bytes]],
    d: Daemon,
    secret: str,
    node_id: str = "tester",
    keys: NodeKeys | None = None,
) -> zmq.Socket[bytes]:
    """A DEALER that talks to ``d`` as member ``node_id`` of its cluster (CURVE with a
    key pair of its own, ``keys`` or a new one, and a credential the secret makes)."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    raw = bytes.fromhex(secret)
    creds = Credentials.issue(raw, node_id, keys or NodeKeys.generate())
    curve_client(s, ClusterKeys.from_secret(raw), creds)
    s.connect(f"tcp://{d.address}")
    return s
