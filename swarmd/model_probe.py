"""Local model servers found by themselves: probe the usual loopback ports (Ollama
11434, llama.cpp server 8080, vLLM 8000, LM Studio 1234) or ``[models] probe``, list
each one's models through ``GET /v1/models``, and serve them as model profiles.

A found model becomes a profile named after its id (sanitized: letters, digits, ``_``,
``.``, ``-``; at most 63 characters; ``-PORT`` added when two servers serve the same id),
with the ``[capabilities]`` tags whose globs match its id (fnmatch, case-insensitive)
and the default ``max_concurrency``. A ``[models.NAME]`` of the config with the same
endpoint and model id wins: the probe leaves that model out. Servers are probed again
every ``interval_s``; a server that fails twice in a row loses its profiles, one whose
models change has them changed, and ``on_change`` is called with the whole new list.

Bounded: loopback addresses only (checked here too, not only in the config), a short
timeout per server, at most MAX_LIST_BYTES read of a model list, at most MAX_MODELS
models in all; everything is asynchronous, so the daemon's loop never waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import httpx

from .config import ModelConfig, ProbeConfig, is_loopback_url

TIMEOUT_S: Final = 2.0  # one server's whole answer
MAX_LIST_BYTES: Final = 256 * 1024
MAX_MODELS: Final = 64  # what a node gossips at most (protocol: models ≤ 64)
MAX_ID_CHARS: Final = 128  # protocol Name
FAILURES_TO_DROP: Final = 2

Changed = Callable[[list[ModelConfig]], None]


class ProbeError(Exception):
    """A server did not answer with a model list."""


# ---------------------------------------------------------------- pure helpers


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def profile_name(model_id: str) -> str | None:
    """A profile name for a model id: ``llama3.2:3b`` -> ``llama3.2-3b``,
    ``Qwen/Qwen2.5-Coder-1.5B`` -> ``Qwen-Qwen2.5-Coder-1.5B``; None if nothing is left."""
    name = _UNSAFE.sub("-", model_id).lstrip("-_.")[:63].rstrip("-_.")
    return name or None


def capabilities_for(model_id: str, table: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The tags of ``table`` (tag -> model-id globs) with a glob matching ``model_id``,
    case-insensitively, in the table's order."""
    lowered = model_id.lower()
    return tuple(
        tag
        for tag, globs in table.items()
        if any(fnmatch.fnmatchcase(lowered, g.lower()) for g in globs)
    )


def parse_model_list(body: bytes) -> list[str]:
    """The model ids of an OpenAI ``/v1/models`` answer (the first MAX_MODELS usable
    ones). ProbeError if it is not one."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ProbeError(f"not JSON: {exc}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise ProbeError("not an OpenAI model list (no data list)")
    ids: list[str] = []
    for item in data:
        model_id = item.get("id") if isinstance(item, dict) else None
        if isinstance(model_id, str) and 0 < len(model_id) <= MAX_ID_CHARS and model_id not in ids:
            ids.append(model_id)
            if len(ids) >= MAX_MODELS:
                break
    return ids


def _port(url: str) -> str:
    parts = urlsplit(url)
    return str(parts.port or (443 if parts.scheme == "https" else 80))


def _same_endpoint(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def build_profiles(
    found: Iterable[tuple[str, Sequence[str]]],
    config: ProbeConfig,
    configured: Sequence[ModelConfig],
) -> list[ModelConfig]:
    """The profiles for ``found`` ((server url, model ids) in probe order): those a
    ``[models.NAME]`` already serves (same endpoint and id) left out, names kept unique
    (``-PORT``, then ``-2``, ``-3``), at most MAX_MODELS with the configured ones."""
    taken = {m.name for m in configured}
    room = MAX_MODELS - len(configured)
    out: list[ModelConfig] = []
    for url, ids in found:
        for model_id in ids:
            if len(out) >= room:
                return out
            if any(_same_endpoint(m.endpoint, url) and m.model == model_id for m in configured):
                continue
            base = profile_name(model_id)
            if base is None:
                continue
            name = _unique(base, _port(url), taken)
            taken.add(name)
            caps = capabilities_for(model_id, config.capabilities)
            endpoint = url.rstrip("/")
            out.append(ModelConfig(name, endpoint, model_id, capabilities=caps))
    return out


def _unique(base: str, port: str, taken: set[str]) -> str:
    if base not in taken:
        return base
    name = f"{base[: 62 - len(port)]}-{port}"
    n = 2
    while name in taken:
        name = f"{base[:58]}-{port}-{n}"[:63]
        n += 1
    return name


# ---------------------------------------------------------------- probing


async def list_models(
    client: httpx.AsyncClient, url: str, timeout_s: float = TIMEOUT_S
) -> list[str]:
    """``GET {url}/models``, bounded in time and size. ProbeError if it fails."""
    if not is_loopback_url(url):
        raise ProbeError(f"{url}: not a loopback address")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("GET", url.rstrip("/") + "/models") as resp:
                if resp.status_code != 200:
                    raise ProbeError(f"HTTP {resp.status_code}")
                async for piece in resp.aiter_bytes():
                    body += piece
                    if len(body) > MAX_LIST_BYTES:
                        raise ProbeError(f"model list over {MAX_LIST_BYTES} bytes")
    except TimeoutError:
        raise ProbeError(f"no answer in {timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise ProbeError(f"{type(exc).__name__}: {exc}") from None
    return parse_model_list(bytes(body))


@dataclass
class _Server:
    models: tuple[str, ...] = ()
    failures: int = 0


class ModelProbe:
    """Probes ``config.urls`` now and every ``config.interval_s``; calls ``on_change``
    with the probed profiles whenever they change."""

    def __init__(
        self,
        config: ProbeConfig,
        configured: Sequence[ModelConfig],
        on_change: Changed,
        log: logging.Logger,
    ) -> None:
        self.config = config
        self.configured = tuple(configured)
        self.on_change = on_change
        self.log = log
        self.servers = {url: _Server() for url in config.urls if is_loopback_url(url)}
        self.profiles: list[ModelConfig] = []
        self.counters = {"probes": 0, "probe_failures": 0}

    async def probe_once(self, client: httpx.AsyncClient) -> bool:
        """Probe every server at once; True if the profiles changed."""
        urls = list(self.servers)
        answers = await asyncio.gather(
            *(list_models(client, url) for url in urls), return_exceptions=True
        )
        for url, answer in zip(urls, answers, strict=True):
            self.counters["probes"] += 1
            if isinstance(answer, BaseException):
                if not isinstance(answer, ProbeError):
                    raise answer
                self._failed(url, answer)
            else:
                self._answered(url, tuple(answer))
        profiles = build_profiles(
            ((u, s.models) for u, s in self.servers.items()), self.config, self.configured
        )
        if profiles == self.profiles:
            return False
        self.profiles = profiles
        return True

    def _answered(self, url: str, models: tuple[str, ...]) -> None:
        server = self.servers[url]
        server.failures = 0
        if models != server.models:
            self.log.info("local model server %s serves %s", url, ", ".join(models) or "no model")
        server.models = models

    def _failed(self, url: str, error: ProbeError) -> None:
        server = self.servers[url]
        server.failures += 1
        self.counters["probe_failures"] += 1
        if server.models and server.failures >= FAILURES_TO_DROP:
            self.log.warning("local model server %s is gone (%s): its models too", url, error)
            server.models = ()
        elif server.models:
            self.log.info("local model server %s did not answer (%s)", url, error)

    async def loop(self, client: httpx.AsyncClient | None = None) -> None:
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                client = await stack.enter_async_context(httpx.AsyncClient(trust_env=False))
            while True:
                if await self.probe_once(client):
                    self.on_change(list(self.profiles))
                await asyncio.sleep(self.config.interval_s)
