"""Fixtures shared by the real-daemon tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.harness import Daemon
from tests.llm_server import LlamaServer, llama_python, llama_server
from tests.ray_cluster import RayHead, RayUnavailable, ray_head, ray_venv


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test starts (append them): each is stopped at the end, pass or fail."""
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """A real llama.cpp OpenAI-compatible server for one test module (tests/llm_server.py);
    the module's tests skip where llama-cpp-python is not installed."""
    python, why = llama_python()
    if python is None:
        pytest.skip(f"llama-cpp-python is not available ({why}); test.sh installs it")
    with llama_server(python, tmp_path_factory.mktemp("llama")) as server:
        yield server


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayHead]:
    """A real one-node Ray head on loopback for one test module (tests/ray_cluster.py:
    Ray in its own venv, made on first use; stopped by pid). SWARMD_SKIP_RAY=1 skips."""
    if os.environ.get("SWARMD_SKIP_RAY"):
        pytest.skip("SWARMD_SKIP_RAY is set")
    try:
        venv = ray_venv()
    except RayUnavailable as exc:
        pytest.fail(f"no Ray for the Ray engine tests: {exc}")
    with ray_head(venv) as head:
        yield head
