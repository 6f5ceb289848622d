"""``swarmd [run] [options]``: start a node (CONTRACT.md)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from . import __version__
from .config import ConfigError, default_config_path, load
from .core.units import parse_duration


def _setup_logging(name: str, level: str) -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s swarmd[{name}] %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries: warnings only
    log = logging.getLogger("swarmd")
    log.setLevel(level.upper())
    return log


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("action", required=False, type=click.Choice(["run"]), default="run")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="swarmd.toml")
@click.option("--state-dir", type=click.Path(path_type=Path), help="node id, secret, journal")
@click.option("--name", help="node name shown to peers (default: hostname)")
@click.option("--bind", help="address to listen on (default 0.0.0.0)")
@click.option("--port", type=click.IntRange(1, 65535), help="port to listen on (default 7946)")
@click.option("--advertise", help="HOST:PORT peers should dial (default: from --bind)")
@click.option("--join", multiple=True, help="seed peer HOST:PORT (repeatable)")
@click.option("--no-mdns", is_flag=True, default=None, help="find peers by --join seeds only")
@click.option("--join-token", envvar="SWARMD_JOIN_TOKEN", help="join the cluster of this token")
@click.option(
    "--join-timeout",
    envvar="SWARMD_JOIN_TIMEOUT",
    callback=lambda _c, _p, v: None if v is None else _duration(v),
    help="how long to try reaching the token's issuer (default 60s)",
)
@click.option(
    "--gateway-port",
    type=click.IntRange(0, 65535),
    help="port of the OpenAI-compatible API (default 7950; 0 turns it off)",
)
@click.option("--gateway-bind", help="address of the OpenAI-compatible API (default 127.0.0.1)")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.version_option(__version__, prog_name="swarmd")
def main(
    action: str,
    config_path: Path | None,
    state_dir: Path | None,
    name: str | None,
    bind: str | None,
    port: int | None,
    advertise: str | None,
    join: tuple[str, ...],
    no_mdns: bool | None,
    join_token: str | None,
    join_timeout: float | None,
    gateway_port: int | None,
    gateway_bind: str | None,
    log_level: str | None,
) -> None:
    """Run a swarmd node: find peers, gossip capacity, take work."""
    overrides = {
        "name": name,
        "bind": bind,
        "port": port,
        "advertise": advertise,
        "join": join,
        "mdns": False if no_mdns else None,
        "join_token": join_token,
        "join_timeout_s": join_timeout,
        "log_level": log_level,
        "gateway_port": gateway_port,
        "gateway_bind": gateway_bind,
    }
    try:
        config = load(config_path or default_config_path(), overrides, state_dir=state_dir)
    except ConfigError as exc:
        click.echo(f"swarmd: {exc}", err=True)
        sys.exit(2)
    log = _setup_logging(config.name, config.log_level)
    from .node import Node  # heavy imports only once the config is good

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        runner = asyncio.run
    sys.exit(runner(Node(config, log).run()))


if __name__ == "__main__":  # pragma: no cover
    main()
