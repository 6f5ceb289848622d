"""Fixtures shared by the real-daemon tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Daemon
from tests.llm_server import LlamaServer, llama_python, llama_server


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
