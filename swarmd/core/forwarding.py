"""Any node answers for any task: the pure part (no I/O, no clock).

A node asked about a task it does not have asks the live peers which one has it
(:mod:`swarmd.forwarding` does the asking). Here: in which order to ask them (the node
whose id the task id starts with first: it submitted the task, and most often still
coordinates it), what to say when none has it, and how the rows of a cluster task list
are labelled, merged and kept within their limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

TASK_ID_PREFIX = 6  # a task id starts with this many characters of its submitter's id


@dataclass(frozen=True)
class Peer:
    """A live peer that can be asked."""

    node_id: str
    name: str
    address: str


def submitter_hint(task_id: str) -> str:
    """The id prefix of the node that made ``task_id`` (``abcdef-0123456789``)."""
    head, sep, _ = task_id.partition("-")
    return head if sep and len(head) == TASK_ID_PREFIX else ""


def ask_order(task_id: str, peers: Iterable[Peer]) -> list[Peer]:
    """Every peer, the task's submitter first (it most likely coordinates the task;
    after a failover another node does, so all are asked), then by name."""
    hint = submitter_hint(task_id)
    return sorted(peers, key=lambda p: (not (hint and p.node_id.startswith(hint)), p.name))


def unknown_task(task_id: str, asked: Sequence[str], silent: Sequence[str], wait_s: float) -> str:
    """The error for a task that no node has: it names who was asked, and who did not
    answer in time (the task may be on one of those)."""
    if not asked:
        return f"unknown task {task_id!r} (on this node, and no other live node to ask)"
    names = ", ".join(asked)
    message = f"unknown task {task_id!r} (asked {len(asked)} node(s): {names})"
    if silent:
        message += f"; no answer within {wait_s:g} s from {', '.join(silent)}"
    return message


def rows_size(rows: Sequence[dict[str, Any]]) -> int:
    return len(msgspec.msgpack.encode(rows))


def newest_within(rows: list[dict[str, Any]], max_bytes: int) -> tuple[list[dict[str, Any]], int]:
    """The newest rows (by ``submitted``; the list stays in its order) whose encoding
    fits ``max_bytes``, and how many older ones were left out."""
    if rows_size(rows) <= max_bytes:
        return rows, 0
    newest_first = sorted(range(len(rows)), key=lambda i: -_submitted(rows[i]))
    keep: set[int] = set()
    used = 5  # the array header
    for i in newest_first:
        size = len(msgspec.msgpack.encode(rows[i]))
        if used + size > max_bytes:
            break
        keep.add(i)
        used += size
    kept = [row for i, row in enumerate(rows) if i in keep]
    return kept, len(rows) - len(kept)


def newest_rows(rows: list[dict[str, Any]], newest: int) -> tuple[list[dict[str, Any]], int]:
    """The last ``newest`` rows (``tasks`` lists oldest first; 0: all) and how many
    were left out."""
    if newest <= 0 or len(rows) <= newest:
        return rows, 0
    return rows[-newest:], len(rows) - newest


def labelled(rows: Iterable[dict[str, Any]], node_id: str, name: str) -> list[dict[str, Any]]:
    """``tasks`` rows with the node that coordinates them: ``coordinator`` its name (as
    in ``status``), ``coordinator_id`` its id."""
    return [{**row, "coordinator": name, "coordinator_id": node_id} for row in rows]


def merged(per_node: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every node's rows in one list, oldest first (as ``tasks`` lists one node's)."""
    rows = [row for node_rows in per_node for row in node_rows]
    rows.sort(key=lambda r: (_submitted(r), str(r.get("id"))))
    return rows


def _submitted(row: dict[str, Any]) -> float:
    value = row.get("submitted")
    return float(value) if isinstance(value, int | float) else 0.0
