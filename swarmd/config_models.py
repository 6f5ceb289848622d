"""The model sections of swarmd.toml: ``[models.NAME]`` profiles, ``[models] probe``
and ``probe_interval`` (local servers found by themselves, :mod:`swarmd.model_probe`),
and ``[capabilities]`` (tags for probed models by model-id glob)."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import msgspec

from protocol.messages import ModelProfile

from .config_table import ConfigError
from .config_table import Table as _Table
from .core.units import parse_duration

_PROBE_KEYS = ("probe", "probe_interval")  # the keys of [models] that are not profiles

# The usual local OpenAI-compatible servers: Ollama, llama.cpp server, vLLM, LM Studio.
DEFAULT_PROBES = (
    "http://127.0.0.1:11434/v1",
    "http://127.0.0.1:8080/v1",
    "http://127.0.0.1:8000/v1",
    "http://127.0.0.1:1234/v1",
)
MAX_PROBES = 16


@dataclass(frozen=True)
class ModelConfig:
    name: str
    endpoint: str
    model: str
    capabilities: tuple[str, ...] = ()
    max_concurrency: int = 1
    cost_per_mtok: float = 0.0


@dataclass(frozen=True)
class ProbeConfig:
    """``[models] probe`` / ``probe_interval`` and ``[capabilities]`` (swarmd.model_probe)."""

    urls: tuple[str, ...] = DEFAULT_PROBES  # () turns probing off
    interval_s: float = 30.0
    capabilities: dict[str, tuple[str, ...]] = field(default_factory=dict)  # tag -> globs


def _models(top: _Table, label: str) -> list[ModelConfig]:
    models = []
    for name, item in top.get("models", dict, {}).items():
        if name in _PROBE_KEYS and not isinstance(item, dict):
            continue  # read by _probe
        m = _Table(f"{label} [models.{name}]", item)
        endpoint, model = m.get("endpoint", str), m.get("model", str)
        if not endpoint or not model:
            raise ConfigError(f"{m.where}: endpoint and model are required")
        caps = m.get("capabilities", list, [])
        if not all(isinstance(c, str) for c in caps):
            raise ConfigError(f"{m.where} capabilities: expected a list of strings")
        model_config = ModelConfig(
            name=name,
            endpoint=endpoint,
            model=model,
            capabilities=tuple(caps),
            max_concurrency=m.get("max_concurrency", int, 1),
            cost_per_mtok=float(m.get("cost_per_mtok", (int, float), 0.0)),
        )
        m.check_unknown()
        try:  # the same limits peers will check when it is gossiped
            msgspec.convert(dataclasses.asdict(model_config), ModelProfile)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{m.where}: {exc}") from None
        models.append(model_config)
    return models


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` is http(s) to a loopback address (127.0.0.0/8, ::1, localhost)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # a bad port raises
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _probe(top: _Table, label: str) -> ProbeConfig:
    """``[models] probe = ["http://127.0.0.1:PORT/v1", ...]`` (replaces the default
    list; ``[]``: no probing), ``[models] probe_interval = "30s"``, and
    ``[capabilities]`` tag = [model-id globs]."""
    base = ProbeConfig()
    models = top.data.get("models")
    models = models if isinstance(models, dict) else {}  # not a table: _models said so
    values = {k: v for k, v in models.items() if k in _PROBE_KEYS and not isinstance(v, dict)}
    m = _Table(f"{label} [models]", values)
    urls = m.get("probe", list, list(base.urls))
    if not all(isinstance(u, str) for u in urls):
        raise ConfigError(f'{m.where} probe: expected a list of "http://127.0.0.1:PORT/v1" strings')
    if len(urls) > MAX_PROBES:
        raise ConfigError(f"{m.where} probe: at most {MAX_PROBES} servers, got {len(urls)}")
    for url in urls:
        if not is_loopback_url(url):
            raise ConfigError(
                f"{m.where} probe: {url!r} is not an http URL of a loopback address "
                "(only this machine's own servers are probed)"
            )
    interval = m.convert("probe_interval", parse_duration, base.interval_s)
    if interval < 1.0:
        raise ConfigError(f"{m.where} probe_interval: expected at least 1s")
    return ProbeConfig(tuple(dict.fromkeys(urls)), interval, _capability_globs(top, label))


def _capability_globs(top: _Table, label: str) -> dict[str, tuple[str, ...]]:
    """``[capabilities]``: tag -> model-id globs, for the models found by probing."""
    table = _Table(f"{label} [capabilities]", top.get("capabilities", dict, {}))
    out: dict[str, tuple[str, ...]] = {}
    for tag in table.data:
        globs = table.get(tag, list)
        ok = all(isinstance(g, str) and 0 < len(g) <= 256 for g in globs) and len(globs) <= 64
        if not ok:
            raise ConfigError(f'{table.where} {tag}: expected a list of model-id globs ["*3b*"]')
        if not 0 < len(tag) <= 128:
            raise ConfigError(f"{table.where}: a capability name is 1 to 128 characters")
        out[tag] = tuple(globs)
    return out
