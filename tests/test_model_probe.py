"""Local model servers found by themselves (swarmd/model_probe.py): naming, capability
globs, the bounded model list, the config keys, and a real daemon that finds a real
llama.cpp server, serves it by capability, and forgets it once the server is gone."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from swarmd.config import DEFAULT_PROBES, ConfigError, ModelConfig, ProbeConfig, load
from swarmd.model_probe import (
    MAX_LIST_BYTES,
    MAX_MODELS,
    ModelProbe,
    ProbeError,
    build_profiles,
    capabilities_for,
    list_models,
    parse_model_list,
    profile_name,
)
from tests.harness import Daemon, new_secret, swarmctl, wait_until
from tests.llm_server import llama_python, llama_server

GLOBS = {"lint": ("*1.5b*", "*3b*"), "architecture": ("*32B*", "*70b*"), "chat": ("*",)}


# ---------------------------------------------------------------- names and globs


@pytest.mark.parametrize(
    ("model_id", "name"),
    [
        ("llama3.2:3b", "llama3.2-3b"),
        ("Qwen/Qwen2.5-Coder-1.5B-Instruct", "Qwen-Qwen2.5-Coder-1.5B-Instruct"),
        ("tiny-llama", "tiny-llama"),
        ("  spaced  out ", "spaced-out"),
        ("/models/x.gguf", "models-x.gguf"),
        ("a" * 200, "a" * 63),
        ("://", None),
        ("ünïcode", "n-code"),
    ],
)
def test_profile_name_is_a_valid_name(model_id: str, name: str | None) -> None:
    assert profile_name(model_id) == name


def test_capabilities_from_globs_case_insensitive() -> None:
    assert capabilities_for("Qwen2.5-Coder-1.5B", GLOBS) == ("lint", "chat")
    assert capabilities_for("llama3.2:3b", GLOBS) == ("lint", "chat")
    assert capabilities_for("Qwen2.5-32b-instruct", GLOBS) == ("architecture", "chat")
    assert capabilities_for("phi4", {"lint": ("*3b*",)}) == ()


def test_model_list_is_parsed_and_bounded() -> None:
    body = {"object": "list", "data": [{"id": "a"}, {"id": "a"}, {"id": 3}, {"x": 1}, "b"]}
    assert parse_model_list(json.dumps(body).encode()) == ["a"]
    many = {"data": [{"id": f"m{i}"} for i in range(500)] + [{"id": "x" * 129}]}
    assert len(parse_model_list(json.dumps(many).encode())) == MAX_MODELS
    assert parse_model_list(b'{"data": [{"id": "' + b"x" * 129 + b'"}]}') == []
    for garbage in (b"not json", b"[]", b'{"data": 3}', b"[" * 100_000):
        with pytest.raises(ProbeError):
            parse_model_list(garbage)


def test_config_profiles_win_and_names_stay_unique() -> None:
    configured = [ModelConfig("fast", "http://127.0.0.1:8080/v1/", "qwen-1.5b")]
    found = [
        ("http://127.0.0.1:8080/v1", ["qwen-1.5b", "fast", "llama3.2:3b"]),
        ("http://127.0.0.1:11434/v1", ["llama3.2:3b"]),
    ]
    profiles = build_profiles(found, ProbeConfig(capabilities=GLOBS), configured)
    assert [(p.name, p.model, p.endpoint) for p in profiles] == [
        ("fast-8080", "fast", "http://127.0.0.1:8080/v1"),
        ("llama3.2-3b", "llama3.2:3b", "http://127.0.0.1:8080/v1"),
        ("llama3.2-3b-11434", "llama3.2:3b", "http://127.0.0.1:11434/v1"),
    ]
    assert profiles[1].capabilities == ("lint", "chat")
    assert profiles[1].max_concurrency == 1
    lots = [("http://127.0.0.1:1/v1", [f"m{i}" for i in range(100)])]
    assert len(build_profiles(lots, ProbeConfig(), configured)) == MAX_MODELS - 1


# ---------------------------------------------------------------- config


def config_of(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "swarmd.toml"
    path.write_text(text)
    return load(path, {}, state_dir=tmp_path)


def test_probe_config(tmp_path: Path) -> None:
    assert load(None, {}, state_dir=tmp_path).probe.urls == DEFAULT_PROBES
    cfg = config_of(
        tmp_path,
        '[models]\nprobe = ["http://127.0.0.1:9999/v1", "http://[::1]:8/v1"]\n'
        'probe_interval = "5s"\n'
        '[models.fast]\nendpoint = "http://h/v1"\nmodel = "m"\n'
        '[capabilities]\nlint = ["*1.5b*", "*3b*"]\n',
    )
    assert cfg.probe.urls == ("http://127.0.0.1:9999/v1", "http://[::1]:8/v1")
    assert cfg.probe.interval_s == 5.0
    assert cfg.probe.capabilities == {"lint": ("*1.5b*", "*3b*")}
    assert [m.name for m in cfg.models] == ["fast"]
    assert config_of(tmp_path, "[models]\nprobe = []\n").probe.urls == ()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[models]\nprobe = ["http://192.168.1.5:8080/v1"]', ["probe", "loopback"]),
        ('[models]\nprobe = ["http://example.com/v1"]', ["probe", "loopback"]),
        ('[models]\nprobe = ["file:///etc/passwd"]', ["probe", "loopback"]),
        ("[models]\nprobe = [3]", ["probe", "list"]),
        ('[models]\nprobe = "http://127.0.0.1:1/v1"', ["probe", "expected list"]),
        ('[models]\nprobe_interval = "10ms"', ["probe_interval", "at least"]),
        ("[models]\nfast = 'x'", ["[models.fast]", "expected a table"]),
        ("[capabilities]\nlint = '*3b*'", ["[capabilities] lint", "expected list"]),
        ("[capabilities]\nlint = [3]", ["[capabilities] lint", "globs"]),
    ],
)
def test_probe_config_errors(tmp_path: Path, text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        config_of(tmp_path, text)
    for word in words:
        assert word in str(err.value)


# ---------------------------------------------------------------- the probe loop


def test_probe_keeps_profiles_current_and_drops_a_server_after_two_failures() -> None:
    answers: dict[int, Any] = {8080: ["tiny-3b"], 8000: 500}
    size = {"n": 10}

    def handler(request: httpx.Request) -> httpx.Response:
        answer = answers[request.url.port or 0]
        if isinstance(answer, int):
            return httpx.Response(answer)
        if answer == "huge":
            return httpx.Response(200, content=b" " * (MAX_LIST_BYTES + size["n"]))
        if answer == "down":
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json={"data": [{"id": i} for i in answer]})

    urls = ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8000/v1")
    changes: list[list[str]] = []
    probe = ModelProbe(
        ProbeConfig(urls=urls, capabilities={"lint": ("*3b*",)}),
        [],
        lambda found: changes.append([p.name for p in found]),
        logging.getLogger("test"),
    )

    async def rounds() -> list[bool]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            out = [await probe.probe_once(client)]
            answers[8000] = ["big-70b", "tiny-3b"]
            out.append(await probe.probe_once(client))
            answers[8080] = "down"  # once: kept
            out.append(await probe.probe_once(client))
            answers[8080] = "huge"  # twice: gone
            out.append(await probe.probe_once(client))
            answers[8080] = ["tiny-3b"]
            out.append(await probe.probe_once(client))
            return out

    assert asyncio.run(rounds()) == [True, True, False, True, True]
    assert [(p.name, p.capabilities) for p in probe.profiles] == [
        ("tiny-3b", ("lint",)),
        ("big-70b", ()),
        ("tiny-3b-8000", ("lint",)),
    ]
    assert probe.counters["probe_failures"] == 3  # the 500, "down", "huge"


def test_only_loopback_is_ever_asked() -> None:
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(200, json={"data": []})

    async def ask() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(ProbeError, match="loopback"):
                await list_models(client, "http://10.0.0.1:8080/v1")
            assert await list_models(client, "http://localhost:8080/v1/") == []

    asyncio.run(ask())
    assert asked == ["http://localhost:8080/v1/models"]
    probe = ModelProbe(
        ProbeConfig(urls=("http://10.0.0.1:1/v1",)), [], print, logging.getLogger("t")
    )
    assert probe.servers == {}


# ---------------------------------------------------------------- a real daemon


def test_a_node_finds_a_local_llama_server_and_forgets_it(tmp_path: Path) -> None:
    python, why = llama_python()
    if python is None:
        pytest.skip(f"llama-cpp-python is not available ({why}); test.sh installs it")
    (tmp_path / "llama").mkdir()
    with llama_server(python, tmp_path / "llama") as server:
        config = (
            f'[models]\nprobe = ["{server.endpoint}"]\nprobe_interval = "1s"\n'
            '[capabilities]\nlint = ["*TINY*"]\nreview = ["*70b*"]\n'
        )
        node = Daemon(tmp_path, "n1", secret=new_secret(), config=config, probe=True)
        node.start()
        try:
            node.wait_ready()

            def advertised() -> list[dict[str, Any]] | None:
                models: list[dict[str, Any]] = node.peers()[0]["models"]
                return models or None

            (model,) = wait_until(advertised, 30, what="the probed model in peers --json")
            assert model["name"] == "tiny-llama" and model["model"] == server.model
            assert model["endpoint"] == server.endpoint.rstrip("/")
            assert model["capabilities"] == ["lint"]

            out = swarmctl(
                "--json", "submit", "--wait", "--prompt", "Fix it.", "--capability", "lint",
                state_dir=node.state_dir, timeout=120,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr + out.stdout
            final = json.loads(out.stdout)
            assert final["state"] == "done" and final["subtasks"][0]["peer"] == "n1"
        except BaseException:
            node.stop()
            raise
    try:  # the server is gone: after two failed probes its profile goes
        wait_until(lambda: not node.peers()[0]["models"], 30, what="the profile removed")
    finally:
        node.stop()
