"""``[gateway]`` of swarmd.toml: the OpenAI-compatible endpoint's port, bind and API
keys, and the daily budgets per key (read by the usage book)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config_table import ConfigError
from .config_table import Table as _Table
from .core.budget import Budget, parse_budgets

if TYPE_CHECKING:
    from .config import Config


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
