"""swarmd.toml, command-line flags and environment, resolved into one :class:`Config`.

Precedence: flags > config file > built-in defaults. Every flag has a config key.
Errors name the file, the table and the key (``ConfigError``); the CLI exits 2 on them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from protocol.messages import ModelProfile

from .core.budget import Budget, parse_budgets
from .core.failure import DetectorConfig
from .core.gossip import GossipConfig
from .core.retention import DAY_S, Retention
from .core.units import parse_duration, parse_size
from .hardware import DeclaredGpu
from .http_head import check_access

DEFAULT_PORT = 7946
DEFAULT_GATEWAY_PORT = 7950
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ModelConfig:
    name: str
    endpoint: str
    model: str
    capabilities: tuple[str, ...] = ()
    max_concurrency: int = 1
    cost_per_mtok: float = 0.0


# The usual local OpenAI-compatible servers: Ollama, llama.cpp server, vLLM, LM Studio.
DEFAULT_PROBES = (
    "http://127.0.0.1:11434/v1",
    "http://127.0.0.1:8080/v1",
    "http://127.0.0.1:8000/v1",
    "http://127.0.0.1:1234/v1",
)
MAX_PROBES = 16


@dataclass(frozen=True)
class ProbeConfig:
    """``[models] probe`` / ``probe_interval`` and ``[capabilities]`` (swarmd.model_probe)."""

    urls: tuple[str, ...] = DEFAULT_PROBES  # () turns probing off
    interval_s: float = 30.0
    capabilities: dict[str, tuple[str, ...]] = field(default_factory=dict)  # tag -> globs


@dataclass(frozen=True)
class Config:
    state_dir: Path
    name: str = field(default_factory=lambda: _default_name())
    bind: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    advertise: str | None = None  # host:port peers dial; default from bind / LAN interface
    join: tuple[str, ...] = ()
    mdns: bool = True
    join_token: str | None = None
    join_timeout_s: float = 60.0  # --join-timeout: how long to try enrolling with a token
    log_level: str = "info"
    max_concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_queue: int | None = None  # shell/python attempts held beyond the slots; None: slots
    allow_shell: bool = True
    cost_per_hour: float = 0.0
    on_battery: str = "pause"
    hardware_interval_s: float = 5.0
    metrics_port: int | None = None  # /metrics and /healthz over HTTP; off unless set
    metrics_bind: str = "127.0.0.1"
    metrics_token: str | None = None  # required when metrics_bind is not loopback
    drain_grace_s: float = 20.0  # on SIGTERM: how long running work may finish
    max_artifact_bytes: int = 64 * 1024 * 1024  # [node] max_artifacts: one attempt's outputs
    dashboard_port: int | None = None  # the web dashboard (swarmd/dashboard.py); off unless set
    dashboard_bind: str = "127.0.0.1"
    dashboard_token: str | None = None  # required when dashboard_bind is not loopback
    gpus: tuple[DeclaredGpu, ...] = ()
    speed: float = 1.0  # [hardware] speed: relative speed for shell/python run estimates
    models: tuple[ModelConfig, ...] = ()
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    retention: Retention = field(default_factory=Retention)  # [tasks] keep, keep_tasks
    budgets: Mapping[str, Budget] = field(default_factory=dict)  # [gateway] budget, by key id
    llm_grouping: bool = True  # [tasks] llm_grouping: small llm subtasks go out in groups
    llm_group_max_tokens: int = 512  # [tasks] llm_group_max_tokens: "small"
    # [gateway]: the OpenAI-compatible API. port None: the default port if it is free
    # (a warning if not); a port set: that one or the node does not start; 0: off.
    gateway_port: int | None = None
    gateway_bind: str = "127.0.0.1"
    gateway_api_keys: tuple[str, ...] = field(default=(), repr=False)  # and the file's
    source: Path | None = None  # the file it was read from

    @property
    def control_path(self) -> Path:
        return self.state_dir / "control.sock"


def _default_name() -> str:
    host = socket.gethostname().split(".")[0] or "node"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", host)[:63]


def default_state_dir(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    if env.get("SWARMD_STATE_DIR"):
        return Path(env["SWARMD_STATE_DIR"])
    if env.get("STATE_DIRECTORY"):  # systemd StateDirectory=; may list several
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "swarmd"


def default_config_path(env: dict[str, str] | None = None) -> Path | None:
    env = dict(os.environ) if env is None else env
    if env.get("SWARMD_CONFIG"):
        return Path(env["SWARMD_CONFIG"])
    for candidate in (Path("/etc/swarmd/swarmd.toml"), Path.home() / ".config/swarmd/swarmd.toml"):
        if candidate.is_file():
            return candidate
    return None


def split_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


class _Table:
    """Typed access to one TOML table with errors that say where."""

    def __init__(self, where: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a table")
        self.where, self.data, self.used = where, data, set[str]()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        is_bool = isinstance(value, bool)  # bool is an int subclass: only if asked for
        if (is_bool and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(f"{self.where} {key}: expected {names}, got {value!r}")
        return value

    def convert(self, key: str, fn: Any, default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        try:
            return fn(self.data[key])
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{self.where} {key}: {exc}") from None

    def check_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.where}: unknown key(s) {', '.join(unknown)}")


def load(path: Path | None, overrides: dict[str, Any], state_dir: Path | None = None) -> Config:
    """Read ``path`` (if any), apply non-None ``overrides`` (flag values), validate."""
    label = str(path) if path else "defaults"
    top = _Table(label, _read_toml(path))
    values = _node_values(top, label)
    gpus = _hardware(top, label, values)
    models = _models(top, label)
    probe = _probe(top, label)
    g = _Table(f"{label} [gossip]", top.get("gossip", dict, {}))
    gossip = _gossip_config(g)
    g.check_unknown()
    t = _Table(f"{label} [tasks]", top.get("tasks", dict, {}))
    retention = _retention(t)
    grouping = _grouping(t)
    t.check_unknown()
    budgets = _budgets(top, label)
    _gateway(top, label, values)
    top.check_unknown()

    values.update({k: v for k, v in overrides.items() if v is not None and v != ()})
    if overrides.get("join"):
        values["join"] = tuple(overrides["join"])
    sd = state_dir or Path(values.pop("state_dir", None) or default_state_dir())
    values.pop("state_dir", None)
    cfg = Config(
        state_dir=sd,
        gpus=tuple(gpus),
        models=tuple(models),
        probe=probe,
        gossip=gossip,
        retention=retention,
        budgets=budgets,
        source=path,
        **grouping,
        **values,
    )
    try:
        _validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    return cfg


def _read_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except RecursionError:  # tomllib recurses once per level of [ or {
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None


def _node_values(top: _Table, label: str) -> dict[str, Any]:
    """The ``[node]`` table as Config keyword arguments."""
    node = _Table(f"{label} [node]", top.get("node", dict, {}))
    values: dict[str, Any] = {}
    for key, kind in (
        ("name", str),
        ("bind", str),
        ("port", int),
        ("advertise", str),
        ("mdns", bool),
        ("log_level", str),
        ("max_concurrency", int),
        ("max_queue", int),
        ("allow_shell", bool),
        ("cost_per_hour", (int, float)),
        ("on_battery", str),
        ("state_dir", str),
        ("metrics_port", int),
        ("metrics_bind", str),
        ("metrics_token", str),
        ("dashboard_port", int),
        ("dashboard_bind", str),
        ("dashboard_token", str),
    ):
        if (value := node.get(key, kind)) is not None:
            values[key] = value
    if (grace := node.convert("drain_grace", parse_duration)) is not None:
        values["drain_grace_s"] = grace
    if (max_artifacts := node.convert("max_artifacts", parse_size)) is not None:
        values["max_artifact_bytes"] = max_artifacts
    if (join := node.get("join", list)) is not None:
        if not all(isinstance(seed, str) for seed in join):
            raise ConfigError(f'{node.where} join: expected a list of "HOST:PORT" strings')
        values["join"] = tuple(join)
    node.check_unknown()
    return values


def _hardware(top: _Table, label: str, values: dict[str, Any]) -> list[DeclaredGpu]:
    """The declared GPUs of ``[hardware]``; its ``speed`` goes into ``values``."""
    hardware = _Table(f"{label} [hardware]", top.get("hardware", dict, {}))
    gpus = []
    for i, item in enumerate(hardware.get("gpus", list, [])):
        gpu = _Table(f"{label} [hardware] gpus[{i}]", item)
        name = gpu.get("name", str)
        if not name:
            raise ConfigError(f"{gpu.where}: name is required")
        vram = gpu.convert("vram", parse_size)
        if vram is None:
            raise ConfigError(f'{gpu.where}: vram is required (e.g. "24GiB")')
        gpu.check_unknown()
        try:
            gpus.append(DeclaredGpu(name, vram))
        except ValueError as exc:
            raise ConfigError(f"{gpu.where}: {exc}") from None
    if (speed := hardware.get("speed", (int, float))) is not None:
        if not math.isfinite(speed) or not 0.0 < speed <= 1000.0:
            raise ConfigError(f"{hardware.where} speed: expected a number > 0 and <= 1000")
        values["speed"] = float(speed)
    hardware.check_unknown()
    return gpus


_PROBE_KEYS = ("probe", "probe_interval")  # the keys of [models] that are not profiles


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


def _gossip_config(g: _Table) -> GossipConfig:
    d = DetectorConfig()
    detector = DetectorConfig(
        phi_threshold=float(g.get("phi_threshold", (int, float), d.phi_threshold)),
        min_std_s=g.convert("min_std", parse_duration, d.min_std_s),
        acceptable_pause_s=g.convert("acceptable_pause", parse_duration, d.acceptable_pause_s),
        suspicion_s=g.convert("suspicion", parse_duration, d.suspicion_s),
    )
    base = GossipConfig()
    return GossipConfig(
        interval_s=g.convert("interval", parse_duration, base.interval_s),
        fanout=g.get("fanout", int, base.fanout),
        forget_after_s=g.convert("forget_after", parse_duration, base.forget_after_s),
        detector=detector,
    )


MIN_KEEP_S = 60.0  # a finished task stays long enough for `submit --wait` to read it


def parse_age(value: Any) -> float:
    """A duration as parse_duration reads it, or whole/fractional days: "7d", "1.5d"."""
    if isinstance(value, str) and (m := re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*d\s*", value)):
        return float(m.group(1)) * DAY_S
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(f"bad duration {value!r}: expected e.g. 7d, 12h, 30m") from None


def _retention(t: _Table) -> Retention:
    """[tasks] keep = "7d" (how long a finished task is kept), keep_tasks = 10000 and
    keep_subtasks = 100000 (at most this many finished tasks, and subtasks in them, are
    kept; the oldest are forgotten first)."""
    base = Retention()
    keep_s = t.convert("keep", parse_age, base.keep_s)
    if keep_s < MIN_KEEP_S:
        raise ConfigError(f"{t.where} keep: {keep_s:g} s is too short, expected at least 1m")
    keep_tasks = t.get("keep_tasks", int, base.keep_tasks)
    if keep_tasks < 1:
        raise ConfigError(f"{t.where} keep_tasks: expected at least 1, got {keep_tasks}")
    keep_subtasks = t.get("keep_subtasks", int, base.keep_subtasks)
    if keep_subtasks < 1:
        raise ConfigError(f"{t.where} keep_subtasks: expected at least 1, got {keep_subtasks}")
    return Retention(keep_s=keep_s, keep_tasks=keep_tasks, keep_subtasks=keep_subtasks)


def _budgets(top: _Table, label: str) -> dict[str, Budget]:
    """``[gateway] budget = { "API key" = "N tokens/day" | "$N/day" }``, by key id (the
    rest of ``[gateway]`` is read, and checked for unknown keys, with the gateway)."""
    gateway = _Table(f"{label} [gateway]", top.get("gateway", dict, {}))
    if "budget" not in gateway.data:
        return {}
    try:
        return parse_budgets(gateway.data["budget"])
    except ValueError as exc:
        raise ConfigError(f"{gateway.where} budget: {exc}") from None


def _gateway(top: _Table, label: str, values: dict[str, Any]) -> None:
    """``[gateway]`` port, bind, api_keys, api_keys_file (read here: one key a line)."""
    gw = _Table(f"{label} [gateway]", top.get("gateway", dict, {}))
    if (port := gw.get("port", int)) is not None:
        values["gateway_port"] = port
    if (bind := gw.get("bind", str)) is not None:
        values["gateway_bind"] = bind
    gw.used.add("budget")  # read by _budgets
    keys = gw.get("api_keys", list, [])
    if not all(isinstance(k, str) and k.strip() for k in keys):
        raise ConfigError(f"{gw.where} api_keys: expected a list of non-empty strings")
    if (path := gw.get("api_keys_file", str)) is not None:
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{gw.where} api_keys_file: cannot read {path}: {exc}") from None
        lines = [line.strip() for line in text.splitlines()]
        from_file = [k for k in lines if k and not k.startswith("#")]
        if not from_file:
            raise ConfigError(f"{gw.where} api_keys_file: {path} holds no keys")
        keys = [*keys, *from_file]
    if keys:
        values["gateway_api_keys"] = tuple(k.strip() for k in keys)
    gw.check_unknown()


def _check_gateway(cfg: Config) -> None:
    if cfg.gateway_port is not None and not 0 <= cfg.gateway_port < 65536:
        raise ConfigError(f"[gateway] port {cfg.gateway_port}: expected 0 (off) or 1-65535")
    if cfg.gateway_port == 0 or cfg.gateway_api_keys:
        return
    try:
        loopback = (
            cfg.gateway_bind == "localhost" or ipaddress.ip_address(cfg.gateway_bind).is_loopback
        )
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"[gateway] bind {cfg.gateway_bind!r} is not a loopback address: set api_keys "
            "or api_keys_file too (every request must then carry a key as "
            "Authorization: Bearer KEY), or port = 0 to turn the gateway off"
        )


def _grouping(t: _Table) -> dict[str, Any]:
    """[tasks] llm_grouping = true (small llm subtasks for one model profile, ready
    together, go to one node up to its free concurrency) and llm_group_max_tokens = 512
    (small: the prompt estimate + max_tokens at most this)."""
    base = Config(state_dir=Path())
    grouping = t.get("llm_grouping", bool, base.llm_grouping)
    max_tokens = t.get("llm_group_max_tokens", int, base.llm_group_max_tokens)
    if max_tokens < 0:
        raise ConfigError(f"{t.where} llm_group_max_tokens: expected 0 or more, got {max_tokens}")
    return {"llm_grouping": grouping, "llm_group_max_tokens": max_tokens}


def _validate(cfg: Config) -> None:
    if not _NAME_RE.match(cfg.name):
        raise ConfigError(f"name {cfg.name!r}: use letters, digits, '-', '_', '.' (max 63)")
    if not 0 < cfg.port < 65536:
        raise ConfigError(f"port {cfg.port}: expected 1-65535")
    for seed in cfg.join:
        try:
            split_host_port(seed)
        except ValueError as exc:
            raise ConfigError(f"join: {exc}") from None
    if cfg.advertise is not None:
        try:
            split_host_port(cfg.advertise)
        except ValueError as exc:
            raise ConfigError(f"advertise: {exc}") from None
    if cfg.on_battery not in ("pause", "run"):
        raise ConfigError(f"on_battery {cfg.on_battery!r}: expected pause or run")
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level {cfg.log_level!r}: expected debug, info, warning or error")
    ports = (
        ("metrics", cfg.metrics_port, cfg.metrics_bind, cfg.metrics_token),
        ("dashboard", cfg.dashboard_port, cfg.dashboard_bind, cfg.dashboard_token),
    )
    for what, port, bind, token in ports:  # the opt-in HTTP ports, when they are on
        if port is None:
            continue
        if not 0 < port < 65536:
            raise ConfigError(f"{what}_port {port}: expected 1-65535")
        try:
            check_access(what, bind, token)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    _check_gateway(cfg)
    if cfg.max_concurrency < 1:
        raise ConfigError("max_concurrency: expected at least 1")
    if cfg.max_queue is not None and not 0 <= cfg.max_queue <= 10_000:
        raise ConfigError(f"max_queue {cfg.max_queue}: expected 0-10000")
    if cfg.gossip.interval_s <= 0 or cfg.gossip.fanout < 1:
        raise ConfigError("[gossip]: interval must be > 0 and fanout >= 1")
