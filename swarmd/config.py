"""swarmd.toml, command-line flags and environment, resolved into one :class:`Config`.

Precedence: flags > config file > built-in defaults. Every flag has a config key.
Errors name the file, the table and the key (``ConfigError``); the CLI exits 2 on them.
"""

from __future__ import annotations

import math
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_engines import EngineConfig, engines_config
from .config_gateway import _budgets, _check_gateway, _gateway
from .config_models import (
    DEFAULT_PROBES,
    MAX_PROBES,
    ModelConfig,
    ProbeConfig,
    _models,
    _probe,
    is_loopback_url,
)
from .config_power import presence_values
from .config_queue import queue_config
from .config_succession import DEFAULT_ADOPT_AFTER_S, adopt_after
from .config_table import ConfigError
from .config_table import Table as _Table
from .core.budget import Budget
from .core.crash import CrashConfig
from .core.failure import DetectorConfig
from .core.gossip import GossipConfig
from .core.presence import Power, PresencePolicy
from .core.queue import DEFAULT_PATIENCE_S, DEFAULT_SHARES
from .core.retention import DAY_S, Retention
from .core.units import parse_duration, parse_size
from .hardware import DeclaredGpu
from .http_head import check_access

DEFAULT_PORT = 7946
DEFAULT_GATEWAY_PORT = 7950
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


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
    presence: PresencePolicy = field(default_factory=PresencePolicy)  # on_battery, user
    battery_override: Power | None = None  # [node] battery_override: a test hook
    hardware_interval_s: float = 5.0
    metrics_port: int | None = None  # /metrics and /healthz over HTTP; off unless set
    metrics_bind: str = "127.0.0.1"
    metrics_token: str | None = None  # required when metrics_bind is not loopback
    drain_grace_s: float = 20.0  # on SIGTERM: how long running work may finish
    adopt_after_s: float = DEFAULT_ADOPT_AFTER_S  # a coordinator down this long: adopted
    max_artifact_bytes: int = 64 * 1024 * 1024  # [node] max_artifacts: one attempt's outputs
    dashboard_port: int | None = None  # the web dashboard (swarmd/dashboard.py); off unless set
    dashboard_bind: str = "127.0.0.1"
    dashboard_token: str | None = None  # required when dashboard_bind is not loopback
    gpus: tuple[DeclaredGpu, ...] = ()
    speed: float = 1.0  # [hardware] speed: relative speed for shell/python run estimates
    models: tuple[ModelConfig, ...] = ()
    engines: tuple[EngineConfig, ...] = ()  # [engines.NAME]: clusters this node fronts
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    retention: Retention = field(default_factory=Retention)  # [tasks] keep, keep_tasks
    budgets: Mapping[str, Budget] = field(default_factory=dict)  # [gateway] budget, by key id
    llm_grouping: bool = True  # [tasks] llm_grouping: small llm subtasks go out in groups
    llm_group_max_tokens: int = 512  # [tasks] llm_group_max_tokens: "small"
    # [tasks] shares, starved_after: the ready queue's guaranteed shares (config_queue.py)
    queue_shares: tuple[tuple[int, float], ...] = tuple(DEFAULT_SHARES.items())
    starved_after_s: float = DEFAULT_PATIENCE_S
    # [gateway]: the OpenAI-compatible API. port None: the default port if it is free
    # (a warning if not); a port set: that one or the node does not start; 0: off.
    gateway_port: int | None = None
    gateway_bind: str = "127.0.0.1"
    gateway_api_keys: tuple[str, ...] = field(default=(), repr=False)  # and the file's
    source: Path | None = None  # the file it was read from

    @property
    def control_path(self) -> Path:
        return self.state_dir / "control.sock"

    @property
    def on_battery(self) -> str:
        """``[node] on_battery`` as written back: run, pause or below:N."""
        return str(self.presence.on_battery)


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
    queue = queue_config(t)
    t.check_unknown()
    budgets = _budgets(top, label)
    engines = engines_config(top, label)
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
        engines=engines,
        probe=probe,
        gossip=gossip,
        retention=retention,
        budgets=budgets,
        source=path,
        **grouping,
        **queue,
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
    adopt_after(node, values)
    if (max_artifacts := node.convert("max_artifacts", parse_size)) is not None:
        values["max_artifact_bytes"] = max_artifacts
    values.update(presence_values(node))
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
        crash=_crash_config(g),
    )


def _crash_config(g: _Table) -> CrashConfig:
    """``[gossip] crash_probes``: refused probes after a dropped link that make a peer
    dead at once (core/crash.py); 0 turns the crash path off (accrual detector only)."""
    probes = g.get("crash_probes", int, CrashConfig().probes)
    if not 0 <= probes <= 10:
        raise ConfigError(f"{g.where} crash_probes: expected 0 (off) to 10, got {probes}")
    return CrashConfig(enabled=probes > 0, probes=max(1, probes))


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


__all__ = [
    "DEFAULT_PROBES",
    "MAX_PROBES",
    "Config",
    "ConfigError",
    "ModelConfig",
    "ProbeConfig",
    "is_loopback_url",
    "load",
]
