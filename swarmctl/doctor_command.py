"""``swarmctl doctor``: what breaks discovery and reachability here, and what to do.

The daemon gathers and judges (:mod:`swarmd.doctor`); when no daemon answers, that is
the first finding, and the checks that need none (the interfaces mDNS would use, for
the config file's bind address) still run here. Exit code 0 when nothing failed, 1 when
something did (warnings do not count), 2 bad usage.

Registers on :data:`swarmctl.cli.main` (imported there at the end).
"""

from __future__ import annotations

import json
import sys

import click

from protocol.doctor import DoctorReply, DoctorRequest, Finding
from swarmd.core import diagnosis

from .cli import EXIT_USAGE, Ctx, main
from .client import Client, RequestFailed, Unreachable, UsageError

MARKS = {"ok": "✓", "warn": "!", "fail": "✗"}


def render(findings: list[Finding], who: str) -> str:
    """The readable report: one line per finding, its advice indented below it."""
    lines = []
    for f in findings:
        lines.append(f"{MARKS[f.level]} {f.check}: {f.detail}")
        if f.advice:
            lines.append(f"    → {f.advice}")
    failed = sum(f.level == "fail" for f in findings)
    warned = sum(f.level == "warn" for f in findings)
    if failed:
        lines.append(f"{failed} problem(s) found{who}.")
    else:
        extra = f" ({warned} warning(s))" if warned else ""
        lines.append(f"No problems found{who}{extra}.")
    return "\n".join(lines)


def document(findings: list[Finding]) -> list[dict[str, object]]:
    """``swarmctl doctor --json``: a list of {check, ok, level, detail, advice}."""
    return [
        {
            "check": f.check,
            "ok": f.level != "fail",
            "level": f.level,
            "detail": f.detail,
            "advice": f.advice,
        }
        for f in findings
    ]


def _configured_bind() -> str:
    """The bind address of the config file swarmd would read (default: all interfaces)."""
    from swarmd.config import default_config_path, load

    try:
        return load(default_config_path(), {}).bind
    except Exception:  # no or a broken config: swarmd's default
        return "0.0.0.0"


def local_checks() -> list[Finding]:
    """What needs no daemon: the interfaces mDNS would use for the configured bind."""
    from swarmd.discovery import decide_interfaces
    from swarmd.doctor import is_wsl

    bind = _configured_bind()
    try:
        decisions = decide_interfaces(bind)
    except ValueError as exc:
        return [diagnosis.fail("interfaces", str(exc), "set [node] bind to an IP address")]
    return diagnosis.interfaces(decisions, bind, is_wsl())


def ask_daemon(obj: Ctx, peer_timeout: float) -> tuple[list[Finding], str]:
    """The daemon's findings and its name, or the daemon finding and the local checks."""
    try:
        client = Client(obj.state_dir, obj.node, obj.timeout)
    except UsageError as exc:
        obj.fail(EXIT_USAGE, str(exc))
    except Unreachable as exc:
        return [diagnosis.daemon_unreachable(str(exc)), *local_checks()], ""
    try:
        reply = client.request(DoctorRequest(timeout_s=peer_timeout), peer_timeout + obj.timeout)
    except (Unreachable, RequestFailed) as exc:
        return [diagnosis.daemon_unreachable(str(exc)), *local_checks()], ""
    finally:
        client.close()
    if not isinstance(reply, DoctorReply):
        why = f"unexpected reply {type(reply).__name__}"
        return [diagnosis.daemon_unreachable(why), *local_checks()], ""
    head = diagnosis.ok("daemon", f"{reply.name} ({reply.node}) answers at {_where(obj)}")
    return [head, *reply.findings], reply.name


def _where(obj: Ctx) -> str:
    return obj.node or str(obj.state_dir / "control.sock")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="a JSON list of findings on stdout")
@click.option(
    "--peer-timeout",
    type=click.FloatRange(0.1, 30),
    default=4.0,
    show_default=True,
    help="seconds to wait for the peers' reachability answers",
)
@click.pass_obj
def doctor(obj: Ctx, as_json: bool, peer_timeout: float) -> None:
    """What breaks discovery and reachability here, and what to do (exit 1 if anything)."""
    findings, name = ask_daemon(obj, peer_timeout)
    if as_json or obj.as_json:
        click.echo(json.dumps(document(findings), indent=2, ensure_ascii=False))
    else:
        click.echo(render(findings, f" on {name}" if name else ""))
    sys.exit(0 if diagnosis.healthy(findings) else 1)
