"""Forwarded task requests: any node answers for any task (node → node).

A node asked about a task it does not coordinate finds the node that does with
``task_locate`` (sent to every live peer at once; the first ``has`` wins), then hands it
the control request in a ``task_forward`` and relays the ``task_forwarded`` answer.
``tasks`` with ``cluster`` gathers every live node's rows the same way. PROTOCOL.md has
the table and the limits.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from protocol.base import Message, TaskId
from protocol.control import (
    ArtifactReply,
    ArtifactRequest,
    ErrorReply,
    LogsReply,
    LogsRequest,
    TaskReply,
    TaskRequest,
    TasksReply,
    TasksRequest,
    WatchReply,
    WatchRequest,
)

Ref = Annotated[str, Meta(max_length=32)]
# The most a forwarded answer may take encoded: the frame is 16 MiB; what is left is
# room for the envelope. A bigger one is answered with an error that says so.
FORWARD_REPLY_MAX = 15 * 1024 * 1024
# ``tasks`` rows one node sends for a cluster list, and all of them merged, at most.
TASKS_ROWS_MAX_BYTES = 4 * 1024 * 1024
CLUSTER_ROWS_MAX_BYTES = 12 * 1024 * 1024

ForwardedRequest = TaskRequest | WatchRequest | LogsRequest | ArtifactRequest | TasksRequest
ForwardedReply = TaskReply | WatchReply | LogsReply | ArtifactReply | TasksReply | ErrorReply


class TaskLocate(Message, tag="task_locate"):
    """Do you have this task? (A coordinator's own task; later also a replica's.)"""

    ref: Ref
    task: TaskId


class TaskLocated(Message, tag="task_located"):
    ref: Ref
    task: TaskId
    has: bool


class TaskForward(Message, tag="task_forward"):
    """Answer ``request`` as if a member had asked it with ``swarmctl --node``."""

    ref: Ref
    request: ForwardedRequest


class TaskForwarded(Message, tag="task_forwarded"):
    """``found`` false: the task is not (or no longer) there; ``reply`` is then None."""

    ref: Ref
    found: bool
    reply: ForwardedReply | None = None
