"""The node's optional outward services, each started from the config: the metrics and
health port, the dashboard, mDNS discovery. Each either starts or raises
:class:`StartupError` with what went wrong (discovery only warns: seeds still work)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from zeroconf import NonUniqueNameException

from .config import Config
from .core.gossip import IdentityConflict
from .discovery import Discovery, Sighting
from .membership import Membership
from .statedir import LocalIdentity, StartupError


async def serve_http(node: Any) -> Any:
    """``[node] metrics_port``: /metrics and /healthz (:mod:`.httpapi`)."""
    from .httpapi import HttpApi

    cfg: Config = node.config
    http = HttpApi(node, log=node.log.getChild("http"))
    try:
        await http.start(cfg.metrics_bind, cfg.metrics_port)
    except OSError as exc:
        where = f"{cfg.metrics_bind}:{cfg.metrics_port}"
        raise StartupError(f"cannot serve metrics on {where}: {exc}") from None
    return http


async def serve_dashboard(node: Any) -> Any:
    """``[node] dashboard_port``: the web dashboard (:mod:`.dashboard`)."""
    from .dashboard import Dashboard, DashboardError

    cfg: Config = node.config
    try:
        dashboard = Dashboard(
            node,
            bind=cfg.dashboard_bind,
            port=cfg.dashboard_port or 0,
            token=cfg.dashboard_token,
            log=node.log.getChild("dashboard"),
        )
        await dashboard.start()
    except DashboardError as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        where = f"{cfg.dashboard_bind}:{cfg.dashboard_port}"
        raise StartupError(f"cannot serve the dashboard on {where}: {exc}") from None
    node.log.info("dashboard on %s", dashboard.url)
    return dashboard


async def serve_gateway(node: Any) -> tuple[Any, Any] | None:
    """``[gateway]``: the OpenAI-compatible API (:mod:`.gateway`), unless its port is 0.
    On the default port a port in use only turns it off (with a warning), so that
    several nodes can run on one machine; a port that was asked for must be had."""
    from .config import DEFAULT_GATEWAY_PORT

    cfg: Config = node.config
    if cfg.gateway_port == 0:
        return None
    try:
        from .gateway.app import LIMITS, Gateway
        from .gateway.auth import ApiKeys
        from .gateway.errors import error_body
        from .web import WebServer
    except ImportError as exc:  # a build without the HTTP stack
        if cfg.gateway_port is not None:
            raise StartupError(f"cannot serve the gateway: {exc}") from None
        node.log.warning("gateway off: this build lacks its HTTP stack (%s)", exc)
        return None
    port = DEFAULT_GATEWAY_PORT if cfg.gateway_port is None else cfg.gateway_port
    log = node.log.getChild("gateway")
    usage = getattr(node, "usage", None)  # [gateway] budget: 429 once a key's day is spent
    budget = usage.check_budget if usage is not None else None
    gateway = Gateway(
        node, ApiKeys(cfg.gateway_api_keys), budget=budget, log=log, bind=cfg.gateway_bind
    )
    server = WebServer(
        gateway.app(),
        cfg.gateway_bind,
        port,
        LIMITS,
        counters=gateway.counters,
        prefix="gateway",
        error_body=error_body,
    )
    try:
        await server.start()
    except OSError as exc:
        gateway.detach()
        where = f"{cfg.gateway_bind}:{port}"
        if cfg.gateway_port is not None:
            raise StartupError(f"cannot serve the gateway on {where}: {exc}") from None
        log.warning("gateway off: cannot serve on %s (%s); set [gateway] port", where, exc)
        return None
    keys = f"{len(gateway.keys)} API key(s)" if gateway.keys.required else "no API keys"
    where = f"{cfg.gateway_bind}:{server.port}"
    node.log.info("OpenAI-compatible gateway on http://%s/v1 (%s)", where, keys)
    return gateway, server


async def discover(
    cfg: Config,
    identity: LocalIdentity,
    membership: Membership,
    interfaces: list[str],
    on_sighting: Callable[[Sighting], None],
    log: logging.Logger,
    on_error: Callable[[str], None] = lambda _why: None,
) -> Discovery | None:
    """Advertise and browse over mDNS; None when mDNS is unavailable (``on_error`` is
    told why) or our name and id are already advertised by another live node (a copied
    state dir: a conflict)."""
    discovery = Discovery(
        node_id=membership.node_id,
        name=cfg.name,
        port=cfg.port,
        fingerprint=identity.keys.fingerprint,
        interfaces=interfaces,
        on_sighting=on_sighting,
        log=log.getChild("mdns"),
    )
    try:
        await asyncio.wait_for(discovery.start(), 10.0)
    except NonUniqueNameException:
        membership.on_identity_conflict(IdentityConflict("(mDNS)", membership.generation))
        return None
    except Exception as exc:
        log.warning("mDNS unavailable (%r); relying on --join seeds", exc)
        on_error(f"{type(exc).__name__}: {exc}"[:1000])
        return None
    return discovery


async def stop_discovery(discovery: Discovery | None) -> None:
    if discovery is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(discovery.stop(), 3.0)
