"""Routing by what is measured, through real daemons and a real llama.cpp server.

"slow" declares an 80 GiB GPU, so advertised hardware says it is the fast one, but its
endpoint is the llama.cpp server behind a proxy that holds every request for
DELAY_S; "fast" has no GPU and reaches the same server directly. "coord" serves no
model and coordinates. Before any request the GPU node wins (hardware estimate). After
a warm-up pinned to each node, each worker's measured time to first token and tokens/s
are gossiped: they show in `peers --json` on every node, and an unpinned request goes
to "fast" — from "coord", whose own measurements decide, and from "slow", which sent
nothing and prices with what "fast" and itself gossip.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon, new_secret, swarmctl, wait_until
from tests.llm_server import LlamaServer, llama_python, llama_server
from tests.test_llm_cluster import DelayProxy

DELAY_S = 0.5
WARM_UP = 3  # requests pinned to each node


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    python, why = llama_python()
    if python is None:
        pytest.skip(f"llama-cpp-python is not available ({why}); test.sh installs it")
    with llama_server(python, tmp_path_factory.mktemp("llama")) as server:
        yield server


def profile(endpoint: str, model: str) -> str:
    return (
        f'[models.tiny]\nendpoint = "{endpoint}"\nmodel = "{model}"\n'
        'capabilities = ["lint"]\nmax_concurrency = 2\n'
    )


GPU = '[hardware]\ngpus = [{ name = "A100", vram = "80GiB" }]\n'


def submit(d: Daemon, work: Path, node: str | None) -> dict[str, Any]:
    """One llm subtask (pinned to ``node`` if given), waited for; its final status."""
    pin = f'node = "{node}"\n' if node else ""
    job = f"""
        name = "routing"
        [[subtasks]]
        id = "main"
        kind = "llm"
        capability = "lint"
        prompt = "Fix the lint."
        max_tokens = 24
        {pin}"""
    work.mkdir(parents=True, exist_ok=True)
    (work / "job.toml").write_text(textwrap.dedent(job))
    out = swarmctl(
        "--json", "submit", "--wait", "-f", "job.toml", state_dir=d.state_dir, cwd=work,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr + out.stdout
    final: dict[str, Any] = json.loads(out.stdout)
    assert final["state"] == "done", final
    return final


def placement(d: Daemon, task: str) -> list[dict[str, Any]]:
    out = swarmctl("--json", "explain", task, state_dir=d.state_dir)
    assert out.returncode == 0, out.stderr
    explain = json.loads(out.stdout)
    rows: list[dict[str, Any]] = explain["subtasks"][0]["candidates"]
    return rows


def measured(d: Daemon) -> dict[str, dict[str, Any]] | None:
    """Each model node's profile as `peers --json` shows it, once both are measured."""
    out = {p["name"]: p["models"][0] for p in d.peers() if p["models"]}
    ready = all(m["ttft_ms"] is not None and m["tokens_per_s"] is not None for m in out.values())
    return out if ready and set(out) == {"slow", "fast"} else None


def test_measured_speed_beats_advertised_hardware(llama: LlamaServer, tmp_path: Path) -> None:
    host, port = llama.endpoint.split("//")[1].split("/")[0].split(":")
    proxy = DelayProxy((host, int(port)), DELAY_S)
    secret = new_secret()
    slow_endpoint = f"http://127.0.0.1:{proxy.port}/v1"
    configs = {
        "coord": "",
        "slow": GPU + profile(slow_endpoint, llama.model),
        "fast": profile(llama.endpoint, llama.model),
    }
    nodes = {name: Daemon(tmp_path, name, secret=secret, config=c) for name, c in configs.items()}
    coord = nodes["coord"]
    try:
        for d in nodes.values():
            d.start()
        for d in nodes.values():
            d.wait_ready()
        everyone = {name: "alive" for name in nodes}
        wait_until(lambda: coord.states() == everyone, 20, what="three alive")
        wait_until(
            lambda: {p["name"] for p in coord.peers() if p["models"]} == {"slow", "fast"},
            20,
            what="both model profiles gossiped",
        )

        # Nothing measured: advertised hardware decides, for the GPU node.
        first = submit(coord, tmp_path / "w0", None)
        assert first["subtasks"][0]["peer"] == "slow"
        rows = {r["peer"]: r for r in placement(coord, first["id"]) if r["feasible"]}
        assert "from 80.0 GiB GPU" in rows["slow"]["basis"], rows

        for i in range(WARM_UP):
            for name in ("slow", "fast"):
                done = submit(coord, tmp_path / f"w{name}{i}", name)
                assert done["subtasks"][0]["peer"] == name

        # What each worker measured is gossiped: every node shows it.
        for d in nodes.values():
            seen = wait_until(lambda d=d: measured(d), 20, what=f"measurements on {d.name}")
            print(f"{d.name} sees {seen}")
            assert seen["slow"]["ttft_ms"] > seen["fast"]["ttft_ms"] + DELAY_S * 1000 / 2
            assert seen["slow"]["in_flight"] == 0 and seen["fast"]["in_flight"] == 0

        # The coordinator that sent the warm-up prices with its own measurements.
        routed = submit(coord, tmp_path / "w1", None)
        assert routed["subtasks"][0]["peer"] == "fast"
        rows = {r["peer"]: r for r in placement(coord, routed["id"]) if r["feasible"]}
        assert rows["fast"]["chosen"] and rows["fast"]["basis"].startswith("measured ")
        assert rows["slow"]["basis"].startswith("measured ")
        assert rows["slow"]["run_s"] > rows["fast"]["run_s"] + DELAY_S / 2

        # One that sent nothing prices with what the workers gossiped.
        slow = nodes["slow"]
        routed = submit(slow, tmp_path / "w2", None)
        assert routed["subtasks"][0]["peer"] == "fast"
        rows = {r["peer"]: r for r in placement(slow, routed["id"]) if r["feasible"]}
        assert rows["fast"]["basis"].startswith("peer-measured "), rows
        assert rows["slow"]["basis"].startswith("peer-measured "), rows
    finally:
        for d in nodes.values():
            d.stop()
        proxy.close()
