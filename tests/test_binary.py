"""The one-file PyInstaller binary: swarmd and swarmctl by argv[0], a cluster of binaries.

One build per session (about 30-60 s), from ``pyinstaller.spec`` into a temporary
directory; ``SWARMD_BINARY=PATH`` tests an already built binary instead. Then:
``--version`` as swarmd and through a ``swarmctl`` symlink (start time printed), and two
nodes run by the binary on loopback that form a cluster — the second joins with a token
from the first's ``swarmctl join-token`` — and complete submitted tasks (a shell command,
one pinned to the other node, and a python subtask, whose worker process the frozen
binary starts by re-running itself). Skipped, with the reason, without PyInstaller.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from swarmd import __version__
from swarmd.entry import choose
from tests import harness
from tests.harness import build_onefile, free_port, new_secret, wait_until

pytestmark = pytest.mark.timeout(600)

BUILD_TIMEOUT_S = 480
CLUSTER_WITHIN_S = 30.0
TASK_WITHIN_S = 60.0


_BUILT: dict[str, Path] = {}


def built_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """swarmd with swarmctl -> swarmd beside it; built once a session, whoever asks first.

    $SWARMD_BINARY names a binary built already; without it and without PyInstaller the
    asking test is skipped.
    """
    if "swarmd" in _BUILT:
        return _BUILT["swarmd"]
    bindir = tmp_path_factory.mktemp("bin")
    prebuilt = os.environ.get("SWARMD_BINARY")
    if prebuilt:
        shutil.copy(prebuilt, bindir / "swarmd")
    else:
        if importlib.util.find_spec("PyInstaller") is None:
            pytest.skip("PyInstaller is not installed (pip install -e '.[test]')")
        build = tmp_path_factory.mktemp("pyinstaller")
        t0 = time.monotonic()
        built = build_onefile(build / "dist", build / "work", timeout=BUILD_TIMEOUT_S)
        seconds = time.monotonic() - t0
        shutil.copy(built, bindir / "swarmd")
        shutil.rmtree(build, ignore_errors=True)
        print(f"\nbinary: built in {seconds:.1f} s")
    (bindir / "swarmd").chmod(0o755)
    (bindir / "swarmctl").symlink_to("swarmd")
    size = (bindir / "swarmd").stat().st_size
    print(f"binary: {size / 1e6:.1f} MB ({size} bytes)")
    _BUILT["swarmd"] = bindir / "swarmd"
    return _BUILT["swarmd"]


@pytest.fixture(scope="session")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built swarmd (see built_binary)."""
    return built_binary(tmp_path_factory)


def run(argv: list[str | Path], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMD_", "PYTHON"))}
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.parametrize(
    ("argv", "command", "handed"),
    [
        (["/usr/local/bin/swarmd", "run"], "swarmd", ["swarmd", "run"]),
        (["/usr/local/bin/swarmctl", "peers"], "swarmctl", ["swarmctl", "peers"]),
        (["swarmctl-1.2", "peers"], "swarmctl", ["swarmctl-1.2", "peers"]),
        (["./swarmd-bin", "swarmctl", "peers"], "swarmctl", ["swarmctl", "peers"]),
        (["swarmctl", "swarmd", "--version"], "swarmd", ["swarmd", "--version"]),
        (["anything"], "swarmd", ["anything"]),
        ([], "swarmd", ["swarmd"]),
    ],
)
def test_the_name_chooses_the_command(argv: list[str], command: str, handed: list[str]) -> None:
    assert choose(argv) == (command, handed)


@pytest.mark.slow
def test_version_as_swarmd_and_through_the_swarmctl_symlink(binary: Path) -> None:
    swarmctl = binary.parent / "swarmctl"
    assert run([binary, "--version"]).stdout.strip() == f"swarmd, version {__version__}"
    assert run([swarmctl, "--version"]).stdout.strip() == f"swarmctl, version {__version__}"
    # an explicit first word picks the command whatever the file is called
    assert run([binary, "swarmctl", "--version"]).stdout.strip().startswith("swarmctl,")
    assert run([swarmctl, "swarmd", "--version"]).stdout.strip().startswith("swarmd,")
    help_text = run([swarmctl, "--help"]).stdout
    assert "peers" in help_text and "submit" in help_text, help_text

    # start time: the onefile binary unpacks itself into a temporary directory each time
    times = []
    for _ in range(5):
        t = time.perf_counter()
        assert run([binary, "--version"]).returncode == 0
        times.append(time.perf_counter() - t)
    print(
        f"\nbinary: `swarmd --version` {statistics.median(times) * 1000:.0f} ms median of 5 "
        f"(min {min(times) * 1000:.0f} ms)"
    )


class BinaryDaemon(harness.BinaryDaemon):
    """A binary node driven through the binary's own swarmctl symlink."""

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        swarmctl = self.binary.parent / "swarmctl"
        return run([swarmctl, "--state-dir", self.state_dir, *args], timeout=timeout)

    def ctl_json(self, *args: str, timeout: float = 60) -> Any:
        proc = self.ctl("--json", *args, timeout=timeout)
        assert proc.returncode == 0, f"swarmctl {args} exited {proc.returncode}: {proc.stderr}"
        return json.loads(proc.stdout)

    def alive(self) -> set[str]:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
        proc = self.ctl("--json", "peers", timeout=10)
        if proc.returncode != 0:
            return set()
        return {p["name"] for p in json.loads(proc.stdout) if p["state"] == "alive"}


@pytest.fixture
def nodes(binary: Path, tmp_path: Path) -> Iterator[list[BinaryDaemon]]:
    started: list[BinaryDaemon] = []
    yield started
    for node in started:
        node.stop()


@pytest.mark.slow
def test_binaries_form_a_cluster_and_run_tasks(
    binary: Path, tmp_path: Path, nodes: list[BinaryDaemon]
) -> None:
    secret = new_secret()
    metrics_port, dashboard_port = free_port(), free_port()
    config = f"[node]\nmetrics_port = {metrics_port}\ndashboard_port = {dashboard_port}\n"
    b1 = BinaryDaemon(binary, tmp_path, "b1", secret=secret, args=("--no-mdns",), config=config)
    nodes.append(b1.start())
    wait_until(lambda: "b1" in b1.alive(), CLUSTER_WITHIN_S, what="b1 to answer swarmctl")

    # the second machine joins with a token, as the README tells
    token = b1.ctl_json("join-token")["token"]
    b2 = BinaryDaemon(binary, tmp_path, "b2", args=("--no-mdns", "--join-token", token))
    nodes.append(b2.start())
    for node in (b1, b2):
        wait_until(
            lambda node=node: node.alive() == {"b1", "b2"},
            CLUSTER_WITHIN_S,
            what=f"{node.name} to see b1 and b2 alive",
        )
    # the HTTP ports (uvicorn, starlette, sse-starlette bundled): health and the dashboard
    health = httpx.get(f"http://127.0.0.1:{metrics_port}/healthz", timeout=10)
    assert (health.status_code, health.json()["status"]) == (200, "ok")
    state = httpx.get(f"http://127.0.0.1:{dashboard_port}/api/state", timeout=10).json()
    assert {p["name"] for p in state["peers"]} == {"b1", "b2"}
    with httpx.stream("GET", f"http://127.0.0.1:{dashboard_port}/api/events", timeout=10) as ev:
        assert any(line.startswith("data: ") for line in ev.iter_lines())

    # a member, not an admin: a membership signed by b1's authority key (Ed25519)
    assert not (b2.state_dir / "cluster.secret").exists()
    assert (b2.state_dir / "membership").is_file()

    # a shell command, as `swarmctl submit --wait -- CMD`
    status = b1.ctl_json("submit", "--wait", "--", "echo", "hello", timeout=TASK_WITHIN_S)
    assert status["state"] == "done", status
    result = b1.ctl_json("result", status["id"])
    (sub,) = result["subtasks"].values()
    assert sub["stdout"] == "hello\n", result

    # pinned to the other node: a shell command, and a python subtask in the frozen
    # binary's worker pool
    job = tmp_path / "job.toml"
    job.write_text(
        '[[subtask]]\nid = "remote"\nkind = "shell"\nrun = ["echo", "from b2"]\nnode = "b2"\n\n'
        '[[subtask]]\nid = "py"\nkind = "python"\ncall = "colorsys:rgb_to_hsv"\n'
        'args = [1, 0, 0]\nnode = "b2"\n'
    )
    status = b1.ctl_json("submit", "--wait", "-f", str(job), timeout=TASK_WITHIN_S)
    assert status["state"] == "done", status
    by_id = {s["id"]: s for s in status["subtasks"]}
    assert by_id["remote"]["peer"] == "b2", status
    result = b1.ctl_json("result", status["id"])
    assert result["subtasks"]["remote"]["stdout"] == "from b2\n", result
    # colorsys: a stdlib module the daemon never imports, bundled for python subtasks
    assert json.loads(result["subtasks"]["py"]["output"]) == [0.0, 1.0, 1], result

    # SIGTERM through the onefile bootloader reaches the daemon: it leaves cleanly, and
    # nothing of it (daemon, python workers, resource tracker) is left running
    b2_processes = b2.processes()
    assert len(b2_processes) >= 3, b2_processes  # bootloader, daemon, python worker
    assert b2.term(timeout=30) == 0, b2.log()
    wait_until(
        lambda: not [p for p in b2_processes if Path(f"/proc/{p}").exists()],
        15,
        what="b2's processes to exit",
    )
    wait_until(
        lambda: {p["name"]: p["state"] for p in b1.ctl_json("peers")}.get("b2") == "left",
        CLUSTER_WITHIN_S,
        what="b1 to see b2 leave",
    )
