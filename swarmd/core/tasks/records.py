"""The coordinator's records: what it knows of each task, subtask and attempt, and the
values workers report (:class:`Result`); its configuration.

Plain data, changed only by the coordinator (its state fields only through
:mod:`swarmd.core.tasks.transitions`); each record knows how to snapshot itself for the
journal (``to_data``) and, where restore needs it, how to read a snapshot back.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from swarmd.core.jobspec import JobSpec, SubtaskSpec
from swarmd.core.pricing import Candidate, Demand, Placement
from swarmd.core.pricing_eft import Held
from swarmd.core.queue import DEFAULT_PATIENCE_S, DEFAULT_SHARES
from swarmd.core.retention import Retention
from swarmd.core.tasks.transitions import (
    ATTEMPT,
    FINAL_SUBTASK,
    FINAL_TASK,
    AttemptState,
    SubtaskState,
    TaskState,
)

REFUSALS_KEPT: Final = 8  # refusal notes kept per subtask for explain
_NONE: Final[frozenset[str]] = frozenset()


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    lease_s: float = 15.0  # no word from the worker for this long: the attempt is lost
    backoff_base_s: float = 0.5  # wait before the first retry
    backoff_factor: float = 2.0
    backoff_max_s: float = 10.0
    refused_wait_s: float = 1.0  # every candidate refused: wait this long, then price again
    # No word yet on a dispatch (its start, a refusal, its result) after this long: send
    # it again (a worker ignores a duplicate, or answers with the result it kept).
    dispatch_resend_s: float = 2.0
    restore_grace_s: float | None = None  # lease given to re-adopted attempts (None: lease_s)
    adopt_grace_s: float = 5.0  # lease of the attempts of a task a successor adopts
    # rank -> guaranteed minimum share of the starts (swarmd.core.queue: class shares)
    shares: tuple[tuple[int, float], ...] = tuple(DEFAULT_SHARES.items())
    patience_s: float = DEFAULT_PATIENCE_S  # a class waiting this long is owed its share
    placements_kept: int = 8  # winning placements kept per subtask for explain
    # Small llm subtasks of one kind, ready together, go to one node up to its free
    # concurrency (swarmd.core.tasks.grouping); small: est_tokens at most this.
    llm_grouping: bool = True
    group_max_tokens: int = 512
    retention: Retention = field(default_factory=Retention)  # when tasks are forgotten

    def backoff(self, failures: int) -> float:
        """The wait before retrying after the ``failures``-th failure (1-based)."""
        exponent = max(0, failures - 1)
        try:
            delay = self.backoff_base_s * self.backoff_factor**exponent
        except OverflowError:
            delay = math.inf
        return min(self.backoff_max_s, delay)


# ---------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Result:
    """What a worker reports for one attempt.

    Three outcomes: success (``error is None and not app_failed``); an application
    failure (``app_failed``: non-zero exit, HTTP 4xx, exception in a python call) that
    is the subtask's answer; or a worker error (``error`` set, not ``app_failed``: the
    endpoint was down, the executor broke) that is treated like a node failure.
    ``duration_s`` (run time measured by the worker) and ``latency_s`` (time to the
    first token) feed the throughput tracker for llm subtasks.
    """

    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    output: str | None = None  # llm text, python return value (as text)
    usage: Mapping[str, Any] | None = None  # llm token counts (OpenAI "usage")
    artifacts: tuple[str, ...] = ()
    error: str | None = None
    app_failed: bool = False
    duration_s: float | None = None
    latency_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.app_failed

    @property
    def worker_error(self) -> bool:
        return self.error is not None and not self.app_failed

    def template_fields(self) -> dict[str, Any]:
        """What ``{{ ID.FIELD }}`` placeholders read."""
        return {
            "stdout": self.stdout,
            "stderr": self.stderr,
            "output": self.output,
            "exit_code": self.exit_code,
        }

    def describe(self) -> str:
        """A short reason for a failed result."""
        if self.error:
            return self.error
        if self.exit_code is not None:
            return f"exit code {self.exit_code}"
        return "failed"

    def to_data(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "output": self.output,
            "usage": None if self.usage is None else dict(self.usage),
            "artifacts": list(self.artifacts),
            "error": self.error,
            "app_failed": self.app_failed,
            "duration_s": self.duration_s,
            "latency_s": self.latency_s,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Result:
        usage = data.get("usage")
        return cls(
            exit_code=data.get("exit_code"),
            stdout=data.get("stdout") or "",
            stderr=data.get("stderr") or "",
            output=data.get("output"),
            usage=dict(usage) if isinstance(usage, Mapping) else None,
            artifacts=tuple(data.get("artifacts") or ()),
            error=data.get("error"),
            app_failed=bool(data.get("app_failed", False)),
            duration_s=data.get("duration_s"),
            latency_s=data.get("latency_s"),
        )


@dataclass(slots=True)
class Attempt:
    """One dispatch of a subtask to a node. Refused dispatches are not kept here."""

    number: int
    node_id: str
    peer: str  # the node's name when it was chosen
    model: str | None  # the model profile chosen on it (llm)
    started: float  # when it was dispatched
    lease_until: float
    state: AttemptState = "dispatched"
    error: str | None = None
    ended: float | None = None
    resend_at: float | None = None  # no word from its worker yet: dispatch again then
    engine: str | None = None  # run as a job of this engine its node fronts
    # What the engine says of the job, as its worker last told ("queued on hpc (job
    # 1234, reason Resources)"); not journaled.
    engine_note: str | None = None

    def to_data(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "node_id": self.node_id,
            "peer": self.peer,
            "model": self.model,
            "started": self.started,
            "state": self.state,
            "error": self.error,
            "ended": self.ended,
            **({} if self.engine is None else {"engine": self.engine}),
            **({} if self.engine_note is None else {"engine_note": self.engine_note}),
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any], lease_until: float) -> Attempt:
        return cls(
            number=int(data["number"]),
            node_id=str(data["node_id"]),
            peer=str(data.get("peer") or data["node_id"]),
            model=data.get("model"),
            started=float(data["started"]),
            lease_until=lease_until,
            state=ATTEMPT.parse(data["state"]),
            error=data.get("error"),
            ended=data.get("ended"),
            engine=data.get("engine") if isinstance(data.get("engine"), str) else None,
        )


@dataclass(slots=True)
class GroupNote:
    """Small llm subtasks placed together on one node in one schedule pass (see
    :mod:`swarmd.core.tasks.grouping`): one note, shared by its members."""

    task_id: str  # the lead's task
    lead: str  # the member that was priced; the others joined it
    node_id: str
    peer: str
    model: str | None
    size: int = 1

    def to_data(self) -> dict[str, Any]:
        return {
            "task": self.task_id,
            "lead": self.lead,
            "node_id": self.node_id,
            "peer": self.peer,
            "model": self.model,
            "size": self.size,
        }


@dataclass(slots=True)
class SubtaskRecord:
    task_id: str
    spec: SubtaskSpec
    state: SubtaskState = "waiting"
    attempt: int = 0  # the current attempt number (0: never dispatched)
    attempts: list[Attempt] = field(default_factory=list)  # accepted-or-pending dispatches
    result: Result | None = None  # the committed result
    reasons: list[str] = field(default_factory=list)  # why attempts failed, in order
    error: str | None = None  # why the subtask failed or was cancelled
    failures: int = 0  # failed attempts that count against spec.retries
    refusals: int = 0
    refusal_notes: list[str] = field(default_factory=list)  # the last REFUSALS_KEPT
    not_before: float = -math.inf  # backoff: not dispatched before this time
    retrying: bool = False  # the next dispatch is a retry after a failure
    finished: float | None = None
    # Not persisted: rebuilt when the subtask becomes ready.
    rendered: SubtaskSpec | None = None
    demand: Demand | None = None
    upstream: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    last_placement: Placement | None = None  # the latest pricing, placed or not
    placements: deque[Placement] = field(default_factory=deque)  # one per dispatch, newest last
    priced: int = 0  # pricing passes so far
    round: tuple[Candidate, ...] = ()  # candidates left to try if the current one refuses
    refused_by: set[str] = field(default_factory=set)  # nodes that refused in this round
    group: GroupNote | None = None  # its last placement was with a group (explain)
    held_since: float | None = None  # look-ahead first kept it for a busier peer (not sent)
    input_bytes: int | None = None  # bytes of input files its dispatch carries (locality)
    # (attempt, node id, estimate) of its attempt out, for the scheduler's free_in
    held: tuple[int, str, Held] | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def current(self) -> Attempt | None:
        """The current attempt, if it was not refused."""
        if self.attempts and self.attempts[-1].number == self.attempt:
            return self.attempts[-1]
        return None

    @property
    def final(self) -> bool:
        return self.state in FINAL_SUBTASK

    def failed_nodes(self) -> frozenset[str]:
        if not self.attempts:
            return _NONE
        return frozenset(a.node_id for a in self.attempts if a.state in ("lost", "failed"))

    def to_data(self, task_id: str) -> dict[str, Any]:
        return {
            "task": task_id,
            "subtask": self.id,
            "state": self.state,
            "attempt": self.attempt,
            "attempts": [a.to_data() for a in self.attempts],
            "result": None if self.result is None else self.result.to_data(),
            "reasons": list(self.reasons),
            "error": self.error,
            "failures": self.failures,
            "refusals": self.refusals,
            "not_before": self.not_before if math.isfinite(self.not_before) else None,
            "finished": self.finished,
        }


@dataclass(slots=True)
class TaskRecord:
    id: str
    spec: JobSpec
    state: TaskState
    submitted: float
    finished: float | None
    deadline: float | None  # absolute, on the clock of ``now``
    subtasks: dict[str, SubtaskRecord]  # in file order
    dependants: dict[str, tuple[str, ...]]
    error: str | None = None
    remaining: int = 0  # subtasks not final yet
    # subtask id -> upward rank: estimated seconds from its start to the end of the job
    # along the longest chain through it; the ready queue's urgency (critical path first)
    urgency: dict[str, float] = field(default_factory=dict)
    # subtask id -> estimated seconds of the work that must follow it (its urgency less
    # its own estimate): its own latest finish is the task's deadline less this
    tail: dict[str, float] = field(default_factory=dict)
    # Not journaled (a gateway request: only the client connected to this node waits
    # for it, and it goes with that connection): never restored after a restart.
    ephemeral: bool = False
    # The coordinator epoch: 1 when submitted, one more each time a successor adopts
    # the task (swarmd/core/succession.py); workers refuse messages of an older one.
    epoch: int = 1
    # Who coordinated it, in order: {"node", "name", "epoch", "since"} (explain).
    coordinators: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.state in FINAL_TASK

    def latest_finish(self, subtask_id: str) -> float | None:
        """When the subtask must be done for the task to meet its deadline (the work
        estimated to follow it still to run); None without a deadline."""
        if self.deadline is None:
            return None
        return self.deadline - self.tail.get(subtask_id, 0.0)


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """This coordinator's attempts in flight on one node."""

    slots: int  # shell/python attempts
    models: Mapping[str, int]  # llm attempts per model profile


class UnknownTask(KeyError):
    pass
