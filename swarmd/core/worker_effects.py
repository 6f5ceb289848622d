"""The worker core's effects: what :class:`swarmd.core.worker.WorkerCore` returns for
the asyncio shell to carry out."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.messages import AttemptResult, Dispatch, WorkItem

AttemptKey = tuple[str, str, int]  # (task, subtask, attempt)


@dataclass(frozen=True, slots=True)
class Start:
    """Run the attempt's executor now; call ``on_finished`` when it ends."""

    key: AttemptKey
    dispatch: Dispatch


@dataclass(frozen=True, slots=True)
class Stop:
    """Cancel the attempt's executor; it still ends through ``on_finished``."""

    key: AttemptKey


@dataclass(frozen=True, slots=True)
class Send:
    addr: str
    message: WorkItem


@dataclass(frozen=True, slots=True)
class Persist:
    """Keep this result durably until ``Unpersist`` (the outbox)."""

    key: AttemptKey
    addr: str
    message: AttemptResult


@dataclass(frozen=True, slots=True)
class Unpersist:
    key: AttemptKey


Effect = Start | Stop | Send | Persist | Unpersist
