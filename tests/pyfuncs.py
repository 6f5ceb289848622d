"""Functions that tests call through the python executor (imported by worker processes)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any


def add(a: int, b: int = 0) -> int:
    return a + b


def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    print("echo called")
    return {"args": list(args), "kwargs": kwargs}


def fail(message: str) -> None:
    raise ValueError(message)


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


def not_json() -> object:
    return {1, 2}


def die(code: int) -> None:
    os._exit(code)


def getenv(name: str) -> str | None:
    return os.environ.get(name)


def environ() -> dict[str, str]:
    return dict(os.environ)


def sys_path() -> list[str]:
    import sys

    return list(sys.path)


def pid() -> int:
    return os.getpid()


def spawn_sleeper(pid_file: str) -> None:
    """Start a grandchild `sleep 30`, write its pid, then hang."""
    import subprocess

    child = subprocess.Popen(["sleep", "30"])
    Path(pid_file).write_text(str(child.pid))
    time.sleep(30)


def word_count(path: str, out: str) -> int:
    words = len(Path(path).read_text().split())
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(f"{words}\n")
    return words


def big(n: int) -> str:
    print("y" * n)
    return "x" * n


def pool_map(values: list[int]) -> list[int]:
    """Uses multiprocessing itself (the worker must not be a daemonic process)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.map(abs, values)
