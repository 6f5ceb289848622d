"""``swarmctl usage``: llm requests, tokens and cost, summed over every live node's book.

Registers on :data:`swarmctl.cli.main` (imported there at the end).
"""

from __future__ import annotations

import time
from typing import Any

import click

from protocol.messages import UsageReply, UsageRequest, UsageRow
from swarmd.config import parse_age
from swarmd.core.usage import DIMENSIONS

from .cli import EXIT_USAGE, Ctx, main

_FIELDS = ("requests", "errors", "tokens_in", "tokens_out", "cost")
_ROW_DIMS = {"profile": "profile", "model": "model", "node": "node", "key": "client"}


def _sum(rows: list[UsageRow], key: Any) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = {}
    for r in rows:
        g = out.setdefault(key(r), {f: 0 for f in _FIELDS} | {"name": r.node_name})
        for f in _FIELDS:
            g[f] += getattr(r, f)
    return out


def usage_document(reply: UsageReply, by: str | None) -> dict[str, Any]:
    """``swarmctl usage --json`` (CONTRACT.md)."""
    totals = _sum(reply.rows, lambda _r: "all").get("all", {f: 0 for f in _FIELDS})
    totals.pop("name", None)
    doc: dict[str, Any] = {
        "since": reply.since,
        "until": reply.until,
        "rows": [{f: getattr(r, f) for f in UsageRow.__struct_fields__} for r in reply.rows],
        "totals": totals,
        "by": by,
        "nodes": [{"id": n.id, "name": n.name} for n in reply.nodes],
        "missing": [{"id": n.id, "name": n.name, "why": n.why} for n in reply.missing],
    }
    if by is not None:
        field = _ROW_DIMS[by]
        groups = _sum(reply.rows, lambda r: getattr(r, field))
        doc["groups"] = [
            {"value": value, **g, "name": g["name"] if by == "node" else value}
            for value, g in sorted(
                groups.items(), key=lambda kv: -kv[1]["tokens_in"] - kv[1]["tokens_out"]
            )
        ]
    return doc


def _table(doc: dict[str, Any]) -> str:
    by = doc["by"]
    if by is None:
        head = ["MODEL", "PROFILE", "NODE", "KEY"]
        lines = [[r["model"], r["profile"], r["node_name"], r["client"]] for r in doc["rows"]]
        counts = doc["rows"]
    else:
        head = [by.upper()]
        lines = [[g["name"]] for g in doc["groups"]]
        counts = doc["groups"]
    head += ["REQUESTS", "ERRORS", "TOKENS IN", "TOKENS OUT", "COST"]
    for line, c in zip(lines, counts, strict=True):
        line += [str(c["requests"]), str(c["errors"]), f"{c['tokens_in']:,}"]
        line += [f"{c['tokens_out']:,}", f"{c['cost']:.4f}"]
    t = doc["totals"]
    total = ["total"] + [""] * (len(head) - 6)
    total += [str(t["requests"]), str(t["errors"]), f"{t['tokens_in']:,}", f"{t['tokens_out']:,}"]
    total += [f"{t['cost']:.4f}"]
    table = [head, *lines, total]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    text = [
        "  ".join(
            cell.ljust(w) if i < len(head) - 5 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in table
    ]
    since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(doc["since"]))
    text.append(f"since {since}; books of {len(doc['nodes'])} node(s) summed")
    for n in doc["missing"]:
        text.append(f"missing: {n['name']} ({n['id'][:8]}): {n['why']}")
    return "\n".join(text)


@main.command("usage")
@click.option(
    "--since", "since", default="1d", show_default=True, help="how far back (30m, 12h, 7d)"
)
@click.option("--by", type=click.Choice(sorted(DIMENSIONS)), help="sum by one dimension")
@click.option("--json", "as_json", is_flag=True, help="one JSON document on stdout")
@click.option(
    "--peer-timeout",
    type=float,
    default=3.0,
    show_default=True,
    help="seconds to wait for each peer's book",
)
@click.pass_obj
def usage(obj: Ctx, since: str, by: str | None, as_json: bool, peer_timeout: float) -> None:
    """LLM requests, tokens in/out, errors and cost, summed over the cluster's live
    nodes (each node counts what it coordinated). Buckets are UTC hours for the last
    two days and UTC days before; --since counts every bucket that ends after it."""
    try:
        window = parse_age(since)
    except ValueError as exc:
        obj.fail(EXIT_USAGE, str(exc))
    if not 0 < peer_timeout <= 30:
        obj.fail(EXIT_USAGE, "--peer-timeout: expected seconds in (0, 30]")
    request = UsageRequest(since=max(0.0, time.time() - window), timeout_s=peer_timeout)
    reply = obj.call(request, peer_timeout + obj.timeout)
    assert isinstance(reply, UsageReply)
    doc = usage_document(reply, by)
    if as_json or obj.as_json:
        obj.emit_json(doc)
    else:
        click.echo(_table(doc))
