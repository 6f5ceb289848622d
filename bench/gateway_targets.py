"""The servers bench/gateway.py measures, each started as its own process on loopback:
the fast stub upstream (bench/stub_upstream.py), LiteLLM's proxy (from the peers'
venv, bench/.venv-peers, pinned in bench/peers/gateway-requirements.txt) and a swarmd
daemon with its gateway; each yields a :class:`Target` or raises :class:`Skip` with
the reason it cannot run here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import kill_tree  # noqa: E402
from tests.harness import Daemon, free_port, new_secret  # noqa: E402

VENV = ROOT / "bench" / ".venv-peers"
REQUIREMENTS = ROOT / "bench" / "peers" / "gateway-requirements.txt"
STUB_MODEL = "stub-model"


class Skip(Exception):
    """This target cannot be measured here; the message says why."""


@dataclass(frozen=True)
class Target:
    name: str
    base: str  # ".../v1"
    model: str  # the llama.cpp server's model, as this target names it
    stub_model: str  # the stub upstream's model, as this target names it
    api_key: str | None = None  # sent as Authorization: Bearer
    pid: int | None = None  # the serving process, where it is ours (swarmd)

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.api_key is None else {"Authorization": f"Bearer {self.api_key}"}


def wait_models(
    base: str,
    want: set[str],
    timeout_s: float,
    proc: subprocess.Popen[bytes],
    headers: dict[str, str] | None = None,
) -> None:
    """Until ``GET base/models`` lists every id in ``want``."""
    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Skip(f"exited with {proc.returncode} before serving")
        with contextlib.suppress(httpx.HTTPError, ValueError):
            reply = httpx.get(base + "/models", timeout=2.0, headers=headers)
            if reply.status_code == 200:
                seen = {m.get("id") for m in reply.json().get("data", [])}
                if want <= seen:
                    return
        time.sleep(0.2)
    raise Skip(f"{base}/models did not list {sorted(want)} in {timeout_s:g} s (saw {sorted(seen)})")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def stub_upstream(workdir: Path) -> Iterator[str]:
    """The stub server; yields its ".../v1" base."""
    port = free_port()
    log = open(workdir / "stub.log", "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "stub_upstream.py"), str(port), STUB_MODEL],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    base = f"http://127.0.0.1:{port}/v1"
    try:
        wait_models(base, {STUB_MODEL}, 20, proc)
        yield base
    finally:
        _stop(proc)


# ---------------------------------------------------------------- LiteLLM


def ensure_litellm(log: bool = True) -> Path:
    """The peers' venv's ``litellm`` command, installed from REQUIREMENTS if missing or
    if the pin changed since (stamped by its hash)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        raise Skip(f"no peers' venv at {VENV} (bench/compare.py creates it)")
    stamp = VENV / ".gateway-requirements.sha256"
    want = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    command = VENV / "bin" / "litellm"
    if command.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return command
    if log:
        print(f"gateway: installing {REQUIREMENTS.name} into {VENV}", file=sys.stderr)
    with open(VENV / "gateway-install.log", "w") as out:
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-r", str(REQUIREMENTS)],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1800,
        )
    if done.returncode != 0 or not command.exists():
        raise Skip(f"pip install -r {REQUIREMENTS.name} failed (see gateway-install.log)")
    stamp.write_text(want + "\n")
    return command


def litellm_config(llama: str, llama_model: str, stub: str) -> str:
    entries = [(llama_model, llama, llama_model), (STUB_MODEL, stub, STUB_MODEL)]
    lines = ["model_list:"]
    for name, base, upstream in entries:
        lines += [
            f"  - model_name: {name}",
            "    litellm_params:",
            f"      model: openai/{upstream}",
            f"      api_base: {base}",
            "      api_key: none",
        ]
    lines += ["litellm_settings:", "  telemetry: false", "  drop_params: true"]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def litellm_proxy(
    workdir: Path, llama: str, llama_model: str, stub: str, log: bool = True
) -> Iterator[Target]:
    command = ensure_litellm(log)
    config = workdir / "litellm.yaml"
    config.write_text(litellm_config(llama, llama_model, stub))
    port = free_port()
    key = "sk-bench-" + secrets.token_hex(16)  # it refuses to start without a master key
    env = dict(
        os.environ,
        LITELLM_MASTER_KEY=key,
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # no fetch of the cost map from the internet
        LITELLM_TELEMETRY="False",
        LITELLM_LOG="ERROR",
        NO_PROXY="127.0.0.1,localhost",
    )
    out = open(workdir / "litellm.log", "wb")  # noqa: SIM115 - the child owns it
    argv = [str(command), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    out.close()
    base = f"http://127.0.0.1:{port}/v1"
    try:
        try:
            auth = {"Authorization": f"Bearer {key}"}
            wait_models(base, {llama_model, STUB_MODEL}, 120, proc, auth)
        except Skip as exc:
            tail = (workdir / "litellm.log").read_text(errors="replace")[-800:]
            raise Skip(f"LiteLLM proxy: {exc}: {tail}") from None
        yield Target("litellm", base, llama_model, STUB_MODEL, key)
    finally:
        _stop(proc)


# ---------------------------------------------------------------- swarmd


def gateway_missing() -> str | None:
    """Why this checkout's daemon cannot serve the gateway, or None if it can."""
    out = subprocess.run(
        [sys.executable, "-m", "swarmd", "run", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    if "--gateway-port" not in out.stdout:
        return "this swarmd has no gateway yet (`swarmd run --help` lists no --gateway-port)"
    return None


@contextlib.contextmanager
def swarmd_gateway(workdir: Path, llama: str, llama_model: str, stub: str) -> Iterator[Target]:
    """One daemon whose two profiles are the llama.cpp server and the stub, serving its
    gateway on a free port; requests name the upstream model ids."""
    missing = gateway_missing()
    if missing is not None:
        raise Skip(missing)
    port = free_port()
    config = (
        "[node]\nallow_shell = false\n"
        f'[models.llama]\nendpoint = "{llama}"\nmodel = "{llama_model}"\n'
        'capabilities = ["chat"]\nmax_concurrency = 64\n'
        f'[models.stub]\nendpoint = "{stub}"\nmodel = "{STUB_MODEL}"\n'
        'capabilities = ["stub"]\nmax_concurrency = 64\n'
    )
    node = Daemon(workdir, "gw", secret=new_secret(), config=config,
                  args=("--gateway-port", str(port)))  # fmt: skip
    try:
        node.start()
        assert node.proc is not None
        base = f"http://127.0.0.1:{port}/v1"
        try:
            wait_models(base, {llama_model, STUB_MODEL}, 60, node.proc)
        except Skip as exc:
            raise Skip(f"swarmd gateway: {exc}: {node.log()[-800:]}") from None
        yield Target("swarmd", base, llama_model, STUB_MODEL, pid=node.proc.pid)
    finally:
        kill_tree(node)
