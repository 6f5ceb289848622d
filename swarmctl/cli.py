"""``swarmctl``: talk to a swarmd node (CONTRACT.md).

Exit codes: 0 success; 1 the task failed or was cancelled; 2 bad usage or input;
3 no daemon reachable or not allowed.
"""

from __future__ import annotations

import json
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from protocol import codec
from protocol.control import MAX_TOKEN_TTL_S
from protocol.messages import (
    ControlReply,
    ControlRequest,
    DrainReply,
    DrainRequest,
    JoinTokenReply,
    JoinTokenRequest,
    PeersReply,
    PeersRequest,
    PeerView,
    RevokeReply,
    RevokeRequest,
    StatsReply,
    StatsRequest,
)
from swarmd import __version__
from swarmd.config import default_state_dir, parse_age
from swarmd.credentials import NODE_ID_RE

from .client import Client, RequestFailed, Unreachable, UsageError

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class Ctx:
    def __init__(self, state_dir: Path, node: str | None, as_json: bool, timeout: float) -> None:
        self.state_dir, self.node, self.as_json, self.timeout = state_dir, node, as_json, timeout

    def fail(self, code: int, message: str) -> NoReturn:
        click.echo(f"swarmctl: {message}", err=True)
        sys.exit(code)

    @contextmanager
    def client(self) -> Iterator[Client]:
        try:
            client = Client(self.state_dir, self.node, self.timeout)
        except Unreachable as exc:
            self.fail(EXIT_UNREACHABLE, str(exc))
        except UsageError as exc:
            self.fail(EXIT_USAGE, str(exc))
        try:
            yield client
        finally:
            client.close()

    def call(self, request: ControlRequest, timeout_s: float | None = None) -> ControlReply:
        with self.client() as client, self._failures():
            return client.request(request, timeout_s)
        raise AssertionError("unreachable")  # _failures exits

    def watch(self, task: str, seen: int) -> dict[str, Any]:
        """The task's summary when the daemon says it changed (see Client.watch)."""
        with self.client() as client, self._failures():
            return client.watch(task, seen)
        raise AssertionError("unreachable")

    @contextmanager
    def _failures(self) -> Iterator[None]:
        try:
            yield
        except Unreachable as exc:
            self.fail(EXIT_UNREACHABLE, str(exc))
        except RequestFailed as exc:
            message = str(exc)
            if message.startswith("bad_request: "):
                self.fail(EXIT_USAGE, message.removeprefix("bad_request: "))
            self.fail(EXIT_FAILED, message)

    def emit_json(self, value: Any) -> None:
        click.echo(json.dumps(codec.to_builtins(value), indent=2, sort_keys=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    envvar="SWARMD_STATE_DIR",
    help="the local node's state dir (default as swarmd)",
)
@click.option("--node", metavar="HOST:PORT", help="talk to this member node instead")
@click.option("--json", "as_json", is_flag=True, help="one JSON document on stdout")
@click.option(
    "--timeout", type=float, default=3.0, show_default=True, help="seconds to wait for a reply"
)
@click.version_option(__version__, prog_name="swarmctl")
@click.pass_context
def main(
    ctx: click.Context, state_dir: Path | None, node: str | None, as_json: bool, timeout: float
) -> None:
    """Control a swarmd cluster."""
    ctx.obj = Ctx(state_dir or _local_state_dir(), node, as_json, timeout)


SERVICE_STATE_DIRS = (Path("/var/lib/swarmd"), Path("/var/lib/private/swarmd"))


def _local_state_dir() -> Path:
    """The default state dir, or the system service's when only that one has a daemon
    (``sudo swarmctl peers`` after install.sh, with no flags)."""
    default = default_state_dir()
    if not (default / "control.sock").exists():
        for service in SERVICE_STATE_DIRS:
            if (service / "control.sock").exists():
                return service
    return default


# ---------------------------------------------------------------- peers


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n = n / 1024  # type: ignore[assignment]
    return str(n)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


def power_cell(power: dict[str, Any] | None) -> str:
    """What a node runs on: "🔌" on AC, "🔋 54 %" on battery, "-" no battery or unknown."""
    if not power or (power.get("on_ac") is None and power.get("battery_percent") is None):
        return "-"
    percent = power.get("battery_percent")
    level = "" if percent is None else f" {percent:.0f} %"
    return "🔌" if power.get("on_ac") else f"🔋{level}"


def _width(text: str) -> int:
    """Columns on a terminal: wide characters (the 🔌 and 🔋) take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def _state(p: PeerView) -> str:
    """The state, and why it takes no new work: refusing (its disk), draining, or
    paused by its power and presence policy (battery, user-active)."""
    if p.refusing or p.draining:
        return p.state + (" (refusing)" if p.refusing else " (draining)")
    return p.state + (f" (paused: {p.paused})" if p.paused else "")


def peers_table(peers: list[PeerView]) -> str:
    headers = ["NAME", "ID", "STATE", "ADDRESS", "CPU", "RAM", "GPU (free/total)", "MODELS", "RTT"]
    headers += ["SEEN", "POWER"]
    rows = []
    for p in peers:
        cores, load = p.cpu.get("cores"), p.cpu.get("load")
        cpu = f"{cores}c {load:.2f}" if cores is not None and load is not None else "?"
        ram = f"{_size(p.memory.get('available'))}/{_size(p.memory.get('total'))}"
        gpus = ", ".join(
            f"{g['name']} {_size(g['vram_free'])}/{_size(g['vram_total'])}"
            + ("*" if g["source"] == "declared" else "")
            for g in p.gpus
        )
        models = ", ".join(
            f"{m['name']}[{','.join(m['capabilities'])}]"
            + (f" {m['latency_ms']:.0f}ms" if m.get("latency_ms") is not None else "")
            for m in p.models
        )
        rtt = "-" if p.rtt_ms is None else f"{p.rtt_ms:.1f}ms"
        name = p.name + (" *" if p.is_self else "")
        seen = "-" if p.is_self else _ago(p.last_seen_s)
        rows.append([name, p.id[:8], _state(p), p.address, cpu, ram, gpus or "-", models or "-"])
        rows[-1] += [rtt, seen, power_cell(p.power)]
    widths = [max(_width(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(_pad(str(c), w) for c, w in zip(r, widths, strict=True)) for r in rows]
    head = "  ".join(_pad(h, w) for h, w in zip(headers, widths, strict=True))
    alive = sum(p.state == "alive" for p in peers)
    asleep = sum(p.state == "sleeping" for p in peers)
    counts = f"{alive} alive" + (f", {asleep} sleeping" if asleep else "")
    footer = f"{len(peers)} node(s), {counts}.  * this node; GPU* declared, not measured"
    held = [
        f"{p.name} takes no new work: {p.refusing or p.pause_detail or p.paused}"
        for p in peers
        if p.refusing or (p.paused is not None and p.paused != "draining")
    ]
    engines = [engine_line(p.name, e) for p in peers for e in p.engines]
    return "\n".join([head.rstrip(), *(line.rstrip() for line in lines), footer, *held, *engines])


def engine_line(node: str, e: dict[str, Any]) -> str:
    """One engine a node fronts: ``desk fronts slurm "hpc": 30 CPUs, 2 GPUs idle, ..."``."""
    head = f'{node} fronts {e.get("kind")} "{e.get("name")}"'
    if not e.get("ok"):
        return f"{head}: not answering" + (f" ({e['error']})" if e.get("error") else "")
    overflow = ", overflow only" if e.get("overflow_only") else ""
    return (
        f"{head}: {e.get('cpus_idle', 0)} CPUs, {e.get('gpus_idle', 0)} GPUs idle; "
        f"{e.get('running', 0)} running, {e.get('queue', 0)} queued "
        f"(wait ~{e.get('est_wait_s', 0):.0f} s){overflow}"
    )


@main.command()
@click.option("--watch", is_flag=True, help="refresh in place every second (Ctrl-C to stop)")
@click.option("--interval", type=float, default=1.0, hidden=True)
@click.pass_obj
def peers(obj: Ctx, watch: bool, interval: float) -> None:
    """List the nodes of the cluster and their capacity."""
    fetch: Callable[[], list[PeerView]] = lambda: _peers(obj)  # noqa: E731
    if not watch:
        result = fetch()
        if obj.as_json:
            obj.emit_json(result)
        else:
            click.echo(peers_table(result))
        return
    tty = sys.stdout.isatty()
    try:
        while True:
            result = fetch()
            if obj.as_json:
                click.echo(json.dumps(codec.to_builtins(result)))  # one document per line
            else:
                stamp = time.strftime("%H:%M:%S")
                screen = f"swarmctl peers — {stamp}\n{peers_table(result)}"
                click.echo(("\x1b[H\x1b[J" if tty else "") + screen)
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


def _peers(obj: Ctx) -> list[PeerView]:
    reply = obj.call(PeersRequest())
    assert isinstance(reply, PeersReply)
    return reply.peers


# ---------------------------------------------------------------- cluster membership


def _ttl(_ctx: object, _param: object, value: str) -> float:
    try:
        seconds = parse_age(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not 0 < seconds <= MAX_TOKEN_TTL_S:
        raise click.BadParameter(f"{value!r}: expected more than 0 and at most 365d")
    return seconds


@main.command("join-token")
@click.option(
    "--ttl",
    default="24h",
    show_default=True,
    metavar="DURATION",
    callback=_ttl,
    help="how long the token may be used: 30m, 24h, 7d, ...",
)
@click.option("--single-use", is_flag=True, help="the token admits one machine, then no more")
@click.option(
    "--admin",
    is_flag=True,
    help="the new machine gets the cluster secret: it can issue join tokens and revoke",
)
@click.pass_obj
def join_token(obj: Ctx, ttl: float, single_use: bool, admin: bool) -> None:
    """Print a token that lets a new machine join this cluster until it expires (once
    with --single-use). It holds no cluster secret: the new node redeems it with this
    node, which must be reachable from it then, and gets a membership (or, with
    --admin, the cluster secret). Only on an admin node (one holding cluster.secret)."""
    reply = obj.call(JoinTokenRequest(ttl_s=ttl, single_use=single_use, admin=admin))
    assert isinstance(reply, JoinTokenReply)
    if obj.as_json:
        obj.emit_json(
            {"token": reply.token, "expires": reply.expires, "single_use": reply.single_use}
        )
        return
    click.echo(reply.token)
    until = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(reply.expires))
    uses = "one machine" if reply.single_use else "any number of machines"
    kind = ", as admins (they get the cluster secret)" if admin else ""
    click.echo(f"valid until {until}, for {uses}{kind}", err=True)
    click.echo(f"on the new machine: swarmd --join-token {reply.token}", err=True)


@main.command()
@click.argument("node")
@click.pass_obj
def revoke(obj: Ctx, node: str) -> None:
    """Shut NODE (a name, an id prefix of a member, or a full node id) out of the
    cluster for good; the rest keep their keys. Run it on a member's own machine."""
    if obj.node is not None:
        obj.fail(EXIT_USAGE, "revoke is made on a member's own machine (no --node)")
    try:
        node_id = _resolve(_peers(obj), node).id
    except click.UsageError:
        if not NODE_ID_RE.match(node):
            raise
        node_id = node  # not (or no longer) a member it knows: a full id is taken as is
    reply = obj.call(RevokeRequest(node=node_id))
    assert isinstance(reply, RevokeReply)
    if obj.as_json:
        obj.emit_json({"node": reply.node, "added": reply.added, "revoked": reply.revoked})
    else:
        click.echo(f"{reply.node}: {'revoked' if reply.added else 'was already revoked'}")


@main.command()
@click.pass_obj
def stats(obj: Ctx) -> None:
    """Counters of the node: messages received, dropped by reason, peers by state."""
    reply = obj.call(StatsRequest())
    assert isinstance(reply, StatsReply)
    if obj.as_json:
        obj.emit_json({"node": reply.node, "name": reply.name, "counters": reply.counters})
        return
    click.echo(f"node {reply.name} ({reply.node})")
    for key, value in reply.counters.items():
        click.echo(f"  {key:32} {value}")


def _resolve(peers: list[PeerView], wanted: str) -> PeerView:
    """A member by exact name, else by unique id prefix."""
    found = [p for p in peers if p.name == wanted] or [p for p in peers if p.id.startswith(wanted)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise click.UsageError(f"no member named {wanted!r} or with an id starting so")
    ids = ", ".join(f"{p.name} ({p.id[:8]})" for p in found)
    raise click.UsageError(f"{wanted!r} matches several members: {ids}")


def _drain(obj: Ctx, node: str | None, draining: bool) -> None:
    target = obj
    if node is not None:
        peer = _resolve(_peers(obj), node)
        if not peer.is_self:
            if peer.state not in ("alive", "suspect"):
                obj.fail(EXIT_UNREACHABLE, f"{peer.name} is {peer.state}")
            target = Ctx(obj.state_dir, peer.address, obj.as_json, obj.timeout)
    reply = target.call(DrainRequest(draining=draining))
    assert isinstance(reply, DrainReply)
    if obj.as_json:
        keys = ("node", "name", "draining", "running")
        obj.emit_json({k: getattr(reply, k) for k in keys})
    elif draining:
        click.echo(f"{reply.name}: draining, no new work; {reply.running} attempt(s) still running")
    else:
        click.echo(f"{reply.name}: taking work again")


@main.command()
@click.argument("node", required=False)
@click.pass_obj
def drain(obj: Ctx, node: str | None) -> None:
    """Stop placing new work on NODE (a name or id prefix; default this node);
    running work finishes."""
    _drain(obj, node, True)


@main.command()
@click.argument("node", required=False)
@click.pass_obj
def undrain(obj: Ctx, node: str | None) -> None:
    """Let NODE (default this node) take new work again."""
    _drain(obj, node, False)


# ---------------------------------------------------------------- agents


@main.command("mcp")
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="read job inputs only from inside DIR (default: the working directory, "
    "unless that is /: then none)",
)
@click.pass_obj
def mcp_command(obj: Ctx, root: Path | None) -> None:
    """Serve the Model Context Protocol on stdio: tools for coding agents (MCP clients)."""
    try:
        from .mcp_server import default_root, serve
    except ImportError as exc:  # the mcp package is a dependency; say so if it is missing
        obj.fail(EXIT_USAGE, f"swarmctl mcp needs the mcp package (pip install mcp): {exc}")
    serve(obj.state_dir, obj.node, obj.timeout, root.resolve() if root else default_root())


# These register submit, status, logs ... and usage.
from . import doctor_command, task_commands, usage_command  # noqa: E402, F401

if __name__ == "__main__":  # pragma: no cover
    main()
