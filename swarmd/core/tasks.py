"""The coordinator's task state machine: DAG, ready queue, attempts, leases, fencing.

Sans-I/O: a :class:`Coordinator` is fed events (``submit``, ``on_accepted``,
``on_result``, ``on_peer_dead``, ``tick`` ...) with the time ``now`` and returns
*effects*, values the asyncio shell carries out: :class:`Dispatch`,
:class:`CancelAttempt`, :class:`Ack`, :class:`TaskFinished` and :class:`Journal`.

Life of a subtask::

    waiting --(all `after` done)--> ready --(schedule: priced, winner)--> dispatched
    dispatched --(accepted / progress)--> running --(result)--> done | failed
    dispatched|running --(peer dead / lease lapsed / worker error)--> ready (backoff) | failed
    dispatched --(refused)--> dispatched on the next candidate | ready (wait a little)
    any unfinished --(cancel)--> cancelled;  waiting --(an upstream failed)--> cancelled

Rules:

* **Attempts and fencing.** Every dispatch is a new attempt, numbered 1, 2, 3 ... per
  subtask; a worker's messages name the attempt. Only a result for the *current*
  attempt, from the node it was sent to, of a subtask that is not final is committed:
  exactly one committed result per subtask, whatever order messages arrive in. Any
  other result is stale: counted (``counters["stale_results"]``) and acknowledged
  anyway, so the worker drops it from its outbox. ``accepted``/``progress`` for a
  stale attempt answer :class:`CancelAttempt` (that work is no longer wanted).
* **Leases.** A dispatched attempt holds a lease of ``lease_s``; ``accepted`` and every
  ``progress`` renew it to ``now + lease_s``. Workers must report progress well within
  ``Dispatch.lease_s`` (every third of it, say) for as long as they hold the attempt,
  queued or running; the subtask's own ``timeout_s`` is enforced by the worker, which
  reports it as an application failure.
* **Node failures** end the attempt: ``on_peer_dead`` and a lapsed lease mark it
  "lost"; a result that carries an ``error`` but is not an application failure
  (endpoint down, executor crashed) marks it "failed" and is never committed. The
  subtask is retried up to ``spec.retries`` times, on another peer while another is
  feasible, after an exponential backoff (``backoff_base_s * backoff_factor ** (n - 1)``,
  at most ``backoff_max_s``, for the n-th failure) — except when the first failure is
  a lost attempt: that retry goes at once (the peer is gone, not the subtask at fault).
  Then it fails with every reason kept.
* **Application failures** (``Result.app_failed``: non-zero exit, HTTP 4xx, an
  exception in a python call) are committed as the subtask's failed result, unless
  ``retry_on_error``: then they are retried like node failures.
* **Refusals** (the worker is full) are not failures: the next feasible candidate of
  the same placement gets a new attempt at once; when every candidate refused, the
  subtask waits ``refused_wait_s`` for a later ``schedule`` pass.
* **Unplaceable** subtasks stay ready; their last :class:`Placement` is kept for
  ``explain``. A task whose deadline passes fails ("deadline exceeded").
* **Dependencies.** A subtask becomes ready when everything in ``after`` is done;
  ``{{ ID.stdout }}`` placeholders are then rendered from committed upstream results.
  A failed or cancelled subtask cancels everything downstream of it
  ('upstream "lint" failed'); independent branches run on, and the task ends
  ``failed`` when nothing is left to run.
* **Task state**: pending until a subtask is dispatched, then running; done when every
  subtask is done, failed when all are final and one is not done, cancelled by
  :meth:`Coordinator.cancel`.

Time: ``now`` is one clock for everything (leases, backoff, deadlines, and the
``submitted``/``finished`` times status shows). Journaled times are on that clock, so
across restarts it should be a monotonic clock anchored to the wall clock at process
start (``wall0 + monotonic() - mono0``): epoch seconds that never jump back.

Driving it (the shell): see :class:`Coordinator`. Persistence: every change that must
survive a restart comes out as a :class:`Journal` record, a snapshot keyed by
:attr:`Journal.key` (the last record per key wins); :meth:`Coordinator.restore` rebuilds
the state from them. In every returned list the Journal records come first: persist
them (one transaction) before sending anything else, so a dispatch or an ack never goes
out for state that a crash could lose.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, TypeAlias

from swarmd.core import template
from swarmd.core.jobspec import (
    DEFAULT_MAX_TOKENS,
    PRIORITY_RANK,
    JobError,
    JobSpec,
    SubtaskSpec,
    job_to_data,
    parse_job,
    topological_order,
)
from swarmd.core.pricing import (
    Candidate,
    Demand,
    PeerCapacity,
    Placement,
    PricingConfig,
    ThroughputTracker,
    estimate_llm_tokens,
    explain_table,
    price,
)
from swarmd.core.queue import DEFAULT_AGING_S, Key, ReadyQueue
from swarmd.core.retention import Retention, to_forget

__all__ = [
    "Ack",
    "Attempt",
    "CancelAttempt",
    "Coordinator",
    "CoordinatorConfig",
    "Dispatch",
    "Effect",
    "Journal",
    "NodeLoad",
    "Result",
    "SubtaskRecord",
    "TaskFinished",
    "TaskRecord",
    "UnknownTask",
]

TaskState = Literal["pending", "running", "done", "failed", "cancelled"]
SubtaskState = Literal["waiting", "ready", "dispatched", "running", "done", "failed", "cancelled"]
AttemptState = Literal["dispatched", "running", "done", "failed", "lost", "cancelled"]

FINAL_TASK: Final[frozenset[str]] = frozenset({"done", "failed", "cancelled"})
FINAL_SUBTASK: Final[frozenset[str]] = frozenset({"done", "failed", "cancelled"})
IN_FLIGHT: Final[frozenset[str]] = frozenset({"dispatched", "running"})

_REFUSALS_KEPT: Final = 8  # refusal notes kept per subtask for explain


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    lease_s: float = 15.0  # no word from the worker for this long: the attempt is lost
    backoff_base_s: float = 0.5  # wait before the first retry
    backoff_factor: float = 2.0
    backoff_max_s: float = 10.0
    refused_wait_s: float = 1.0  # every candidate refused: wait this long, then price again
    restore_grace_s: float | None = None  # lease given to re-adopted attempts (None: lease_s)
    aging_s: float = DEFAULT_AGING_S  # ready queue aging, see swarmd.core.queue
    placements_kept: int = 8  # winning placements kept per subtask for explain
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
            state=data["state"],
            error=data.get("error"),
            ended=data.get("ended"),
        )


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
    refusal_notes: deque[str] = field(default_factory=lambda: deque(maxlen=_REFUSALS_KEPT))
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

    @property
    def final(self) -> bool:
        return self.state in FINAL_TASK


# ---------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send this attempt to ``node_id`` (the worker answers accepted or refused)."""

    task_id: str
    subtask_id: str
    attempt: int
    node_id: str
    spec: SubtaskSpec  # placeholders rendered from the upstream results
    lease_s: float  # the worker reports progress well within this
    model: str | None  # the model profile chosen on that node (llm)
    upstream: Mapping[str, Mapping[str, Any]]  # results for rendering input files, if any


@dataclass(frozen=True, slots=True)
class CancelAttempt:
    """Tell ``node_id`` to stop this attempt (cancelled, or superseded by a newer one)."""

    task_id: str
    subtask_id: str
    attempt: int
    node_id: str


@dataclass(frozen=True, slots=True)
class Ack:
    """Tell ``node_id`` its result for this attempt is settled (committed or dropped as
    stale): it may clear it from its outbox."""

    task_id: str
    subtask_id: str
    attempt: int
    node_id: str
    committed: bool


@dataclass(frozen=True, slots=True)
class TaskFinished:
    task_id: str
    state: TaskState


@dataclass(frozen=True, slots=True)
class Journal:
    """A snapshot to persist. Kinds: "task" (the job, once), "task_state",
    "subtask" and "forget" (drop everything of that task). Within a kind the last
    record per :attr:`key` wins; ``data`` is JSON-able."""

    kind: str
    data: Mapping[str, Any]

    @property
    def key(self) -> tuple[str, str, str]:
        """(kind, task id, subtask id or "") — upsert on this, or append and let the
        last one win on restore."""
        return (self.kind, str(self.data["task"]), str(self.data.get("subtask", "")))


Effect: TypeAlias = Dispatch | CancelAttempt | Ack | TaskFinished | Journal


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """This coordinator's attempts in flight on one node."""

    slots: int  # shell/python attempts
    models: Mapping[str, int]  # llm attempts per model profile


_Kind: TypeAlias = tuple[Demand | None, frozenset[str]]  # a queued demand, failed nodes


class UnknownTask(KeyError):
    pass


# ---------------------------------------------------------------- the coordinator


class _Batch:
    """Effects of one call, with the journal snapshots taken at the end."""

    def __init__(self) -> None:
        self.effects: list[Effect] = []
        self.tasks: dict[str, None] = {}  # task ids whose state changed
        self.subtasks: dict[tuple[str, str], None] = {}


class Coordinator:
    """The task state machine of one coordinating node.

    The shell calls:

    * :meth:`submit` for a parsed job (after submit-time validation);
    * :meth:`schedule` with the live peer view after anything that may free or need a
      placement (submit, result, refusal, peer change) and on a timer;
    * :meth:`tick` on a timer (``next_wakeup`` says when it is next due) — leases,
      deadlines;
    * ``on_accepted`` / ``on_refused`` / ``on_progress`` / ``on_result`` for the
      worker's messages, :meth:`on_peer_dead` when membership declares a node dead or
      left, or sees it restart with a new generation (it forgot its attempts);
    * :meth:`cancel`, :meth:`status`, :meth:`result`, :meth:`explain`, :meth:`tasks`
      for the control API.

    Every call returns effects; persist the :class:`Journal` records first (they come
    first in the list), then send the rest.
    """

    def __init__(
        self,
        *,
        node_id: str,
        config: CoordinatorConfig | None = None,
        pricing: PricingConfig | None = None,
        throughput: ThroughputTracker | None = None,
        node_name: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.node_name = node_name or node_id
        self.config = config or CoordinatorConfig()
        self.pricing = pricing or PricingConfig()
        self.throughput = throughput
        self.counters: Counter[str] = Counter()
        self._tasks: dict[str, TaskRecord] = {}
        self._queue = ReadyQueue(self.config.aging_s)
        self._in_flight: dict[Key, SubtaskRecord] = {}  # subtasks with an attempt out
        self._open: dict[str, TaskRecord] = {}  # unfinished tasks
        self._backoff: dict[Key, float] = {}  # ready subtasks waiting until a time
        # What each queued subtask asks of a peer, and how many queued ask each: lets a
        # schedule pass stop once every kind of queued demand has found no peer.
        self._queued_kind: dict[Key, _Kind] = {}
        self._queued_kinds: Counter[_Kind] = Counter()
        self._closed: dict[str, float] = {}  # finished tasks -> when, in that order
        self._closed_subtasks = 0  # subtasks in the finished tasks

    # ------------------------------------------------------------ bookkeeping

    def _task(self, task_id: str) -> TaskRecord:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise UnknownTask(task_id) from None

    def _finish(self, batch: _Batch) -> list[Effect]:
        """Journal records first (those added directly, then the snapshots of what
        changed), then the other effects in the order they arose."""
        journal: list[Effect] = [e for e in batch.effects if isinstance(e, Journal)]
        for task_id in batch.tasks:
            task = self._tasks.get(task_id)
            if task is not None:
                journal.append(Journal("task_state", self._task_state_data(task)))
        for task_id, subtask_id in batch.subtasks:
            task = self._tasks.get(task_id)
            if task is not None:
                journal.append(Journal("subtask", task.subtasks[subtask_id].to_data(task_id)))
        return journal + [e for e in batch.effects if not isinstance(e, Journal)]

    @staticmethod
    def _task_state_data(task: TaskRecord) -> dict[str, Any]:
        return {
            "task": task.id,
            "state": task.state,
            "finished": task.finished,
            "error": task.error,
        }

    def _touch(self, batch: _Batch, task: TaskRecord, rec: SubtaskRecord | None = None) -> None:
        if rec is None:
            batch.tasks[task.id] = None
        else:
            batch.subtasks[(task.id, rec.id)] = None

    def _new_task(self, task_id: str, job: JobSpec, submitted: float) -> TaskRecord:
        if len(set(job.ids)) != len(job.subtasks):
            raise JobError("subtask ids must be unique")
        order = topological_order(job)  # JobError on unknown deps or a cycle
        dependants: dict[str, list[str]] = {s.id: [] for s in job.subtasks}
        for s in job.subtasks:
            for dep in dict.fromkeys(s.after):
                dependants[dep].append(s.id)
        specs = {s.id: s for s in job.subtasks}
        urgency: dict[str, float] = {}
        for sid in reversed(order):  # every dependant first
            below = max((urgency[d] for d in dependants[sid]), default=0.0)
            urgency[sid] = self._estimate_s(specs[sid]) + below
        deadline = None if job.deadline_s is None else submitted + job.deadline_s
        return TaskRecord(
            id=task_id,
            spec=job,
            state="pending",
            submitted=submitted,
            finished=None,
            deadline=deadline,
            subtasks={s.id: SubtaskRecord(task_id, s) for s in job.subtasks},
            dependants={k: tuple(v) for k, v in dependants.items()},
            remaining=len(job.subtasks),
            urgency=urgency,
        )

    def _estimate_s(self, spec: SubtaskSpec) -> float:
        """A subtask's run estimate before anything is known of where it runs: its
        ``estimate`` (or the default) for shell/python, its token budget at the default
        rate for llm. Only the ratios matter: it orders a job's ready subtasks."""
        if spec.kind == "llm":
            max_tokens = spec.max_tokens if spec.max_tokens is not None else DEFAULT_MAX_TOKENS
            return max_tokens / self.pricing.default_tokens_per_s
        if spec.estimate_s is not None:
            return spec.estimate_s
        return self.pricing.default_shell_s

    # ------------------------------------------------------------ submit

    def submit(self, task_id: str, job: JobSpec, now: float) -> list[Effect]:
        """Accept a validated job as task ``task_id``. ValueError if the id is taken,
        JobError if the graph is broken (unknown ``after``, cycle)."""
        if task_id in self._tasks:
            raise ValueError(f"task {task_id!r} exists already")
        task = self._new_task(task_id, job, now)
        self._tasks[task_id] = task
        self._open[task_id] = task
        batch = _Batch()
        batch.effects.append(
            Journal(
                "task",
                {
                    "task": task_id,
                    "job": job_to_data(job),
                    "submitted": now,
                    "deadline": task.deadline,
                },
            )
        )
        self._touch(batch, task)
        self.counters["submitted"] += 1
        for rec in task.subtasks.values():
            if not rec.spec.after:
                self._make_ready(batch, task, rec, now)
        self._check_task(batch, task, now)
        return self._finish(batch)

    # ------------------------------------------------------------ readiness

    def _upstream_ids(self, task: TaskRecord, rec: SubtaskRecord) -> list[str]:
        seen: dict[str, None] = {}
        stack = list(rec.spec.after)
        while stack:
            sid = stack.pop()
            if sid in seen:
                continue
            seen[sid] = None
            stack.extend(task.subtasks[sid].spec.after)
        return list(seen)

    def _make_ready(self, batch: _Batch, task: TaskRecord, rec: SubtaskRecord, now: float) -> None:
        """Render the subtask from its upstream results and queue it."""
        error = self._render(task, rec)
        if error is not None:
            self._end_subtask(batch, task, rec, "failed", error, now)
        else:
            self._requeue(batch, task, rec, now, not_before=rec.not_before)

    def _render(self, task: TaskRecord, rec: SubtaskRecord) -> str | None:
        """Set the rendered spec and the pricing demand; an error message if it fails."""
        results = {
            sid: task.subtasks[sid].result.template_fields()  # type: ignore[union-attr]
            for sid in self._upstream_ids(task, rec)
            if task.subtasks[sid].result is not None
        }
        spec = rec.spec
        try:
            rendered = replace(
                spec,
                run=tuple(template.render(arg, results) for arg in spec.run),
                prompt=None if spec.prompt is None else template.render(spec.prompt, results),
                system=None if spec.system is None else template.render(spec.system, results),
            )
        except KeyError as exc:
            return f"template: {exc.args[0]}"
        rec.rendered = rendered
        rec.upstream = results if spec.inputs else {}
        est_tokens = 0
        if spec.kind == "llm":
            max_tokens = spec.max_tokens if spec.max_tokens is not None else DEFAULT_MAX_TOKENS
            est_tokens = estimate_llm_tokens(rendered.prompt or "", max_tokens, rendered.system)
        rec.demand = Demand(
            kind=spec.kind,
            capability=spec.capability,
            model=spec.model,
            min_vram=spec.min_vram,
            min_ram=spec.min_ram,
            node=spec.node,
            est_tokens=est_tokens,
            est_seconds=spec.estimate_s,
        )
        return None

    def _requeue(
        self, batch: _Batch, task: TaskRecord, rec: SubtaskRecord, now: float, not_before: float
    ) -> None:
        rec.state = "ready"
        rec.not_before = not_before
        rec.round = ()
        rec.refused_by.clear()
        key = (task.id, rec.id)
        if not_before > now:
            self._backoff[key] = not_before
        if key not in self._queue:
            rank = PRIORITY_RANK.get(rec.spec.priority, PRIORITY_RANK["normal"])
            self._queue.push(key, rank, task.deadline, now, task.urgency.get(rec.id, 0.0))
        self._unkind(key)
        kind = self._queued_kind[key] = (rec.demand, rec.failed_nodes())
        self._queued_kinds[kind] += 1
        self._touch(batch, task, rec)

    def _unkind(self, key: Key) -> None:
        kind = self._queued_kind.pop(key, None)
        if kind is not None:
            self._queued_kinds[kind] -= 1
            if not self._queued_kinds[kind]:
                del self._queued_kinds[kind]

    def _unqueue(self, key: Key) -> None:
        self._queue.remove(key)
        self._unkind(key)

    # ------------------------------------------------------------ schedule

    def schedule(self, peers: Sequence[PeerCapacity], now: float) -> list[Effect]:
        """One placement pass: walk the ready queue in order, price each subtask that
        is not backing off against ``peers`` and dispatch it to the winner. What cannot
        be placed now stays ready (its placement is kept for explain). Within the pass
        each dispatch counts as one more busy slot (or model request) on its node.

        The pass stops early once every kind of queued demand (demand and failed
        nodes) has found no peer: dispatches only make peers busier, so nothing after
        that could be placed in this pass (and a queue of 10,000 subtasks costs a walk
        of the few first ones, not of all of them, each time a slot frees)."""
        batch = _Batch()
        if not len(self._queue):
            return []
        view = {p.node_id: p for p in peers}
        infeasible: dict[tuple[Demand, frozenset[str]], Placement] = {}
        blocked: set[_Kind] = set()
        for key in self._queue.walk(now):
            task = self._tasks[key[0]]
            rec = task.subtasks[key[1]]
            if rec.not_before > now or rec.demand is None:
                continue
            placement = self._price(rec, list(view.values()), infeasible)
            winner = placement.winner
            if winner is None:
                blocked.add(self._queued_kind[key])
                if len(blocked) == len(self._queued_kinds):
                    break
                continue
            self._unqueue(key)
            rest = tuple(
                c for c in placement.candidates if c.feasible and c.node_id != winner.node_id
            )
            self._dispatch(batch, task, rec, winner, placement, rest, now)
            peer = view.get(winner.node_id)
            if peer is not None:
                view[winner.node_id] = _one_more(peer, winner.model)
        return self._finish(batch)

    def _price(
        self,
        rec: SubtaskRecord,
        peers: Sequence[PeerCapacity],
        infeasible: dict[tuple[Demand, frozenset[str]], Placement],
    ) -> Placement:
        assert rec.demand is not None
        # Prefer peers this subtask has not failed on; fall back to them if none else fits.
        failed = rec.failed_nodes()
        tries = [failed, frozenset()] if failed else [frozenset()]
        placement: Placement | None = None
        for exclude in tries:
            cache_key = (rec.demand, exclude)
            cached = infeasible.get(cache_key)
            if cached is not None:
                placement = cached
                continue
            placement = price(rec.demand, peers, self.pricing, exclude, throughput=self.throughput)
            if placement.winner is not None:
                break
            # Dispatches only make peers busier, so it stays infeasible in this pass.
            infeasible[cache_key] = placement
        assert placement is not None
        rec.last_placement = placement
        rec.priced += 1
        if placement.winner is None:
            self.counters["unplaceable"] += 1
        return placement

    def _dispatch(
        self,
        batch: _Batch,
        task: TaskRecord,
        rec: SubtaskRecord,
        winner: Candidate,
        placement: Placement | None,
        rest: tuple[Candidate, ...],
        now: float,
    ) -> None:
        """A new attempt on ``winner``; ``rest`` are the candidates to fall back on if it
        refuses; ``placement`` is recorded (None: the same one as the last attempt)."""
        assert rec.rendered is not None
        rec.attempt += 1
        attempt = Attempt(
            number=rec.attempt,
            node_id=winner.node_id,
            peer=winner.name,
            model=winner.model,
            started=now,
            lease_until=now + self.config.lease_s,
        )
        rec.attempts.append(attempt)
        rec.state = "dispatched"
        rec.round = rest
        if placement is not None:
            rec.placements.append(placement)
        while len(rec.placements) > max(1, self.config.placements_kept):
            rec.placements.popleft()
        self._in_flight[(task.id, rec.id)] = rec
        self.counters["dispatched"] += 1
        if rec.retrying:
            rec.retrying = False
            self.counters["redispatched"] += 1
        if task.state == "pending":
            task.state = "running"
            self._touch(batch, task)
        self._touch(batch, task, rec)
        batch.effects.append(
            Dispatch(
                task_id=task.id,
                subtask_id=rec.id,
                attempt=attempt.number,
                node_id=winner.node_id,
                spec=rec.rendered,
                lease_s=self.config.lease_s,
                model=winner.model,
                upstream=rec.upstream,
            )
        )

    # ------------------------------------------------------------ worker messages

    def _find(self, task_id: str, subtask_id: str) -> tuple[TaskRecord, SubtaskRecord] | None:
        task = self._tasks.get(task_id)
        if task is None:
            return None
        rec = task.subtasks.get(subtask_id)
        return None if rec is None else (task, rec)

    def _live_attempt(
        self, task_id: str, subtask_id: str, attempt: int, node_id: str
    ) -> tuple[TaskRecord, SubtaskRecord, Attempt] | None:
        """The attempt if it is the current one, in flight, on that node; else None."""
        found = self._find(task_id, subtask_id)
        if found is None:
            return None
        task, rec = found
        current = rec.current
        if (
            rec.final
            or current is None
            or current.number != attempt
            or current.node_id != node_id
            or current.state not in IN_FLIGHT
        ):
            return None
        return task, rec, current

    def _stale(self, task_id: str, subtask_id: str, attempt: int, node_id: str) -> list[Effect]:
        self.counters["stale_messages"] += 1
        return [CancelAttempt(task_id, subtask_id, attempt, node_id)]

    def on_accepted(
        self, task_id: str, subtask_id: str, attempt: int, node_id: str, now: float
    ) -> list[Effect]:
        """The worker took the attempt (it may still queue it): renew the lease."""
        live = self._live_attempt(task_id, subtask_id, attempt, node_id)
        if live is None:
            return self._stale(task_id, subtask_id, attempt, node_id)
        _, rec, current = live
        current.lease_until = now + self.config.lease_s
        if current.state == "dispatched":
            # Not journaled: a restarted coordinator treats dispatched and running alike.
            current.state = "running"
            rec.state = "running"
            rec.round = ()
            rec.refused_by.clear()
        return []

    def on_progress(
        self, task_id: str, subtask_id: str, attempt: int, node_id: str, now: float
    ) -> list[Effect]:
        """A heartbeat for the attempt: renew its lease (counts as accepted)."""
        return self.on_accepted(task_id, subtask_id, attempt, node_id, now)

    def on_refused(
        self, task_id: str, subtask_id: str, attempt: int, node_id: str, reason: str, now: float
    ) -> list[Effect]:
        """The worker will not take the attempt (full): try the next candidate at once."""
        live = self._live_attempt(task_id, subtask_id, attempt, node_id)
        if live is None or live[2].state != "dispatched":
            self.counters["stale_messages"] += 1
            return []
        task, rec, current = live
        batch = _Batch()
        self.counters["refused"] += 1
        rec.refusals += 1
        rec.refusal_notes.append(f"attempt {current.number} refused by {current.peer}: {reason}")
        rec.attempts.pop()  # it never ran; its number stays used
        del self._in_flight[(task.id, rec.id)]
        rec.refused_by.add(node_id)
        rest = tuple(c for c in rec.round if c.node_id not in rec.refused_by)
        if rest:
            self._dispatch(batch, task, rec, rest[0], None, rest[1:], now)
        else:
            self._requeue(batch, task, rec, now, now + self.config.refused_wait_s)
        self._touch(batch, task, rec)
        return self._finish(batch)

    def on_result(
        self,
        task_id: str,
        subtask_id: str,
        attempt: int,
        node_id: str,
        result: Result,
        now: float,
    ) -> list[Effect]:
        """A worker's result. Committed only for the current attempt, from its node, of
        a subtask that is not final; anything else is counted as stale. Always acked."""
        live = self._live_attempt(task_id, subtask_id, attempt, node_id)
        if live is None:
            self.counters["stale_results"] += 1
            return [Ack(task_id, subtask_id, attempt, node_id, committed=False)]
        task, rec, current = live
        batch = _Batch()
        self._observe(rec, current, result)
        if result.ok:
            current.state = "done"
            current.ended = now
            self._end_subtask(batch, task, rec, "done", None, now, result)
        elif result.worker_error or rec.spec.retry_on_error:
            if result.app_failed:
                self.counters["app_failures"] += 1
            else:
                self.counters["worker_errors"] += 1
            # A worker error is never the subtask's answer; the last app failure may be.
            kept = result if result.app_failed else None
            self._attempt_failed(batch, task, rec, current, "failed", result.describe(), now, kept)
        else:
            self.counters["app_failures"] += 1
            current.state = "failed"
            current.error = result.describe()
            current.ended = now
            self._end_subtask(batch, task, rec, "failed", result.describe(), now, result)
        committed = rec.result is result
        batch.effects.append(Ack(task_id, subtask_id, attempt, node_id, committed=committed))
        return self._finish(batch)

    def _observe(self, rec: SubtaskRecord, attempt: Attempt, result: Result) -> None:
        if self.throughput is None or rec.spec.kind != "llm" or attempt.model is None:
            return
        if result.duration_s is None or not result.ok or not result.usage:
            return
        usage = result.usage
        tokens = usage.get("total_tokens")
        if not isinstance(tokens, int):
            parts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
            tokens = sum(p for p in parts if isinstance(p, int))
        self.throughput.observe(
            attempt.node_id, attempt.model, tokens, result.duration_s, latency_s=result.latency_s
        )

    def on_peer_dead(self, node_id: str, now: float) -> list[Effect]:
        """The node is dead, left, or restarted: every attempt out on it is lost."""
        batch = _Batch()
        for rec in list(self._in_flight.values()):
            current = rec.current
            if current is not None and current.node_id == node_id:
                task = self._tasks[rec.task_id]
                self._attempt_failed(batch, task, rec, current, "lost", "node lost", now)
        return self._finish(batch)

    # ------------------------------------------------------------ time

    def tick(self, now: float) -> list[Effect]:
        """Fail tasks past their deadline, then lose attempts whose lease lapsed."""
        batch = _Batch()
        for task in list(self._open.values()):
            if task.deadline is not None and now >= task.deadline and not task.final:
                self.counters["deadline_exceeded"] += 1
                self._stop_task(batch, task, "failed", "deadline exceeded", now)
        for key, rec in list(self._in_flight.items()):
            current = rec.current
            if current is not None and current.lease_until <= now:
                reason = f"no word for {self.config.lease_s:g} s (lease expired)"
                self._attempt_failed(batch, self._tasks[key[0]], rec, current, "lost", reason, now)
        return self._finish(batch)

    def next_wakeup(self, now: float) -> float | None:
        """The earliest time ``tick`` or ``schedule`` has something to do without any
        new event (a lease lapses, a deadline passes, a backoff ends); None if never."""
        times: list[float] = [
            rec.current.lease_until for rec in self._in_flight.values() if rec.current is not None
        ]
        times += [t.deadline for t in self._open.values() if t.deadline is not None]
        for key, not_before in list(self._backoff.items()):
            if not_before > now and key in self._queue:
                times.append(not_before)
                continue
            if key in self._queue:
                # Ended since the last pass looked (a wait that woke a little early):
                # a pass is due now, not at the caller's idle interval.
                times.append(now)
            del self._backoff[key]
        return min(times, default=None)

    # ------------------------------------------------------------ transitions

    def _attempt_failed(
        self,
        batch: _Batch,
        task: TaskRecord,
        rec: SubtaskRecord,
        attempt: Attempt,
        state: Literal["lost", "failed"],
        reason: str,
        now: float,
        result: Result | None = None,
    ) -> None:
        """A node failure (or a retried app failure): retry after a backoff or give up."""
        attempt.state = state
        attempt.error = reason
        attempt.ended = now
        self._in_flight.pop((task.id, rec.id), None)
        if state == "lost":
            self.counters["lost"] += 1
        rec.failures += 1
        rec.reasons.append(f"attempt {attempt.number} on {attempt.peer}: {reason}")
        self._touch(batch, task, rec)
        if rec.failures <= rec.spec.retries:
            self.counters["retries"] += 1
            rec.retrying = True
            # A peer lost with the attempt is not the subtask's fault and that peer is
            # now excluded: the first such retry goes at once. Every later one backs off.
            first_loss = state == "lost" and rec.failures == 1
            delay = 0.0 if first_loss else self.config.backoff(rec.failures)
            self._requeue(batch, task, rec, now, now + delay)
            return
        self.counters["retries_exhausted"] += 1
        tries = len(rec.attempts)
        error = f"gave up after {tries} attempt{'s' if tries != 1 else ''}: " + "; ".join(
            rec.reasons
        )
        self._end_subtask(batch, task, rec, "failed", error, now, result)

    def _end_subtask(
        self,
        batch: _Batch,
        task: TaskRecord,
        rec: SubtaskRecord,
        state: Literal["done", "failed", "cancelled"],
        error: str | None,
        now: float,
        result: Result | None = None,
    ) -> None:
        if result is not None:
            rec.result = result
            self.counters["committed"] += 1
        self._settle(batch, task, rec, state, error, now)
        if state == "done":
            for sid in task.dependants[rec.id]:
                child = task.subtasks[sid]
                if child.state == "waiting" and all(
                    task.subtasks[d].state == "done" for d in child.spec.after
                ):
                    self._make_ready(batch, task, child, now)
        else:
            why = f'upstream "{rec.id}" {state}'
            stack = list(task.dependants[rec.id])
            while stack:
                child = task.subtasks[stack.pop()]
                if not child.final:
                    self._settle(batch, task, child, "cancelled", why, now)
                    stack.extend(task.dependants[child.id])
        self._check_task(batch, task, now)

    def _settle(
        self,
        batch: _Batch,
        task: TaskRecord,
        rec: SubtaskRecord,
        state: Literal["done", "failed", "cancelled"],
        error: str | None,
        now: float,
    ) -> None:
        """The subtask is final: out of the queue and the in-flight set."""
        if not rec.final:
            task.remaining -= 1
        rec.state = state
        rec.error = error
        rec.finished = now
        rec.round = ()
        rec.refused_by.clear()
        key = (task.id, rec.id)
        self._unqueue(key)
        self._in_flight.pop(key, None)
        self._backoff.pop(key, None)
        self._touch(batch, task, rec)

    def _check_task(self, batch: _Batch, task: TaskRecord, now: float) -> None:
        if task.final or task.remaining > 0:
            return
        done = all(r.state == "done" for r in task.subtasks.values())
        self._close_task(batch, task, "done" if done else "failed", now)

    def _close_task(self, batch: _Batch, task: TaskRecord, state: TaskState, now: float) -> None:
        task.state = state
        task.finished = now
        self._open.pop(task.id, None)
        self._closed[task.id] = now
        self._closed_subtasks += len(task.subtasks)
        self.counters[f"tasks_{state}"] += 1
        self._touch(batch, task)
        batch.effects.append(TaskFinished(task.id, state))

    def _stop_task(
        self,
        batch: _Batch,
        task: TaskRecord,
        state: Literal["failed", "cancelled"],
        why: str,
        now: float,
    ) -> None:
        """End every unfinished subtask (cancelling attempts out), then the task."""
        for rec in task.subtasks.values():
            if rec.final:
                continue
            current = rec.current
            if current is not None and current.state in IN_FLIGHT:
                current.state = "cancelled"
                current.error = why
                current.ended = now
                self.counters["cancelled_attempts"] += 1
                batch.effects.append(
                    CancelAttempt(task.id, rec.id, current.number, current.node_id)
                )
            # Deadline: what had started or was ready failed; what still waited is cancelled.
            failed = state == "failed" and rec.state != "waiting"
            self._settle(batch, task, rec, "failed" if failed else "cancelled", why, now)
        task.error = why
        self._close_task(batch, task, state, now)

    def cancel(self, task_id: str, now: float) -> list[Effect]:
        """Cancel a task: CancelAttempt for attempts out, every unfinished subtask
        cancelled. No effect on a finished task. UnknownTask if there is no such task."""
        task = self._task(task_id)
        if task.final:
            return []
        batch = _Batch()
        self._stop_task(batch, task, "cancelled", "cancelled", now)
        return self._finish(batch)

    def forget(self, task_id: str) -> list[Effect]:
        """Drop a finished task from memory (and, through the journal, from disk)."""
        task = self._task(task_id)
        if not task.final:
            raise ValueError(f"task {task_id!r} is still {task.state}")
        del self._tasks[task_id]
        if self._closed.pop(task_id, None) is not None:
            self._closed_subtasks -= len(task.subtasks)
        return [Journal("forget", {"task": task_id})]

    # ------------------------------------------------------------ views

    def load_by_node(self) -> dict[str, NodeLoad]:
        """This coordinator's attempts in flight per node, for building the peer view
        (``peer_from_gossip(slots_busy=..., model_in_flight=...)``)."""
        slots: Counter[str] = Counter()
        models: dict[str, Counter[str]] = {}
        for rec in self._in_flight.values():
            current = rec.current
            if current is None:
                continue
            if rec.spec.kind == "llm" and current.model is not None:
                models.setdefault(current.node_id, Counter())[current.model] += 1
            else:
                slots[current.node_id] += 1
        nodes = set(slots) | set(models)
        return {n: NodeLoad(slots[n], dict(models.get(n, {}))) for n in sorted(nodes)}

    def task_ids(self) -> list[str]:
        return list(self._tasks)

    def record(self, task_id: str) -> TaskRecord:
        """The live record (read it, do not change it)."""
        return self._task(task_id)

    @staticmethod
    def _peer(rec: SubtaskRecord) -> str | None:
        return rec.attempts[-1].peer if rec.attempts else None

    def status(self, task_id: str) -> dict[str, Any]:
        """``swarmctl status TASK --json`` (CONTRACT.md)."""
        task = self._task(task_id)
        return {
            "id": task.id,
            "name": task.spec.name,
            "state": task.state,
            "coordinator": self.node_name,
            "priority": task.spec.priority,
            "submitted": task.submitted,
            "finished": task.finished,
            "subtasks": [
                {
                    "id": rec.id,
                    "kind": rec.spec.kind,
                    "state": rec.state,
                    "peer": self._peer(rec),
                    "attempts": len(rec.attempts),
                    "started": rec.attempts[-1].started if rec.attempts else None,
                    "finished": rec.finished,
                    "exit_code": None if rec.result is None else rec.result.exit_code,
                    "error": rec.error,
                }
                for rec in task.subtasks.values()
            ],
        }

    def result(self, task_id: str) -> dict[str, Any]:
        """``swarmctl result TASK --json`` (CONTRACT.md)."""
        task = self._task(task_id)
        subtasks: dict[str, Any] = {}
        for rec in task.subtasks.values():
            res = rec.result
            subtasks[rec.id] = {
                "state": rec.state,
                "stdout": None if res is None else res.stdout,
                "stderr": None if res is None else res.stderr,
                "exit_code": None if res is None else res.exit_code,
                "output": None if res is None else res.output,
                "usage": None if res is None or res.usage is None else dict(res.usage),
                "artifacts": [] if res is None else list(res.artifacts),
                "peer": self._peer(rec) if res is not None else None,
            }
        return {"id": task.id, "state": task.state, "subtasks": subtasks}

    def explain(self, task_id: str) -> dict[str, Any]:
        """``swarmctl explain TASK``: per subtask the latest candidate table (winner
        first), why it is not placed if it is not, and its attempt history."""
        task = self._task(task_id)
        rows = []
        for rec in task.subtasks.values():
            last = rec.last_placement
            rows.append(
                {
                    "id": rec.id,
                    "state": rec.state,
                    "priced": rec.priced,
                    "placed": len(rec.attempts) + rec.refusals,
                    "reason": None if last is None else last.reason,
                    "candidates": [] if last is None else explain_table(last),
                    "attempts": [a.to_data() for a in rec.attempts],
                    "reasons": list(rec.reasons),
                    "refusals": list(rec.refusal_notes),
                    "error": rec.error,
                }
            )
        return {"id": task.id, "name": task.spec.name, "state": task.state, "subtasks": rows}

    def tasks(self) -> list[dict[str, Any]]:
        """``swarmctl tasks``: one summary row per task, oldest first (in the order they
        were submitted, which the task dict keeps, also across a restore: no sort)."""
        return [self._summary(task) for task in self._tasks.values()]

    def summary(self, task_id: str) -> dict[str, Any]:
        """One task's row of :meth:`tasks`, plus how many subtasks are running, queued."""
        return self._summary(self._task(task_id), running=True)

    @staticmethod
    def _summary(task: TaskRecord, running: bool = False) -> dict[str, Any]:
        states = Counter(r.state for r in task.subtasks.values())
        row = {
            "id": task.id,
            "name": task.spec.name,
            "state": task.state,
            "priority": task.spec.priority,
            "submitted": task.submitted,
            "finished": task.finished,
            "subtasks": len(task.subtasks),
            "done": states["done"],
            "failed": states["failed"],
        }
        if running:
            row["running"] = states["running"] + states["dispatched"]
            row["queued"] = states["waiting"] + states["ready"]
        return row

    # ------------------------------------------------------------ restore

    def restore(self, records: Iterable[Journal], now: float) -> list[Effect]:
        """Rebuild the tasks from journal records (as persisted, oldest first) on a
        fresh coordinator. Finished work is kept, never re-run; attempts that were out
        keep their numbers and get a lease of ``restore_grace_s`` for their workers to
        report (a result for them is committed as usual); ready subtasks are queued
        again. Tasks whose job no longer parses are skipped and counted
        (``restore_errors``). Returns effects for tasks that turn out to be finished.
        Then call ``tick`` and ``schedule`` as usual."""
        if self._tasks:
            raise ValueError("restore needs a coordinator without tasks")
        latest: dict[tuple[str, str, str], Journal] = {}
        for record in records:
            if record.kind == "forget":
                task_id = str(record.data["task"])
                latest = {k: v for k, v in latest.items() if k[1] != task_id}
            else:
                latest[record.key] = record
        grace = self.config.restore_grace_s
        lease = now + (self.config.lease_s if grace is None else grace)
        for key, record in latest.items():
            if key[0] != "task":
                continue
            data = record.data
            try:
                job = parse_job(data["job"], source=f"task {key[1]}")
                task = self._new_task(key[1], job, float(data["submitted"]))
            except (JobError, KeyError, TypeError, ValueError):
                self.counters["restore_errors"] += 1
                continue
            deadline = data.get("deadline")
            task.deadline = None if deadline is None else float(deadline)
            self._tasks[task.id] = task
        for key, record in latest.items():
            owner = self._tasks.get(key[1])
            if owner is None:
                continue
            data = record.data
            if key[0] == "task_state":
                owner.state = data["state"]
                owner.finished = data.get("finished")
                owner.error = data.get("error")
            elif key[0] == "subtask" and key[2] in owner.subtasks:
                self._restore_subtask(owner.subtasks[key[2]], data, lease, now)
        batch = _Batch()
        restored = {
            (t.id, r.id): r.state for t in self._tasks.values() for r in t.subtasks.values()
        }
        for task in self._tasks.values():
            task.remaining = sum(not r.final for r in task.subtasks.values())
            if task.final:
                continue
            self._open[task.id] = task
            for rec in task.subtasks.values():
                if rec.state in IN_FLIGHT:
                    self._in_flight[(task.id, rec.id)] = rec
                    self._render(task, rec)  # for a retry, should this attempt be lost
                elif rec.state in ("waiting", "ready"):
                    ready = all(task.subtasks[d].state == "done" for d in rec.spec.after)
                    if ready:
                        self._make_ready(batch, task, rec, now)
                    else:
                        rec.state = "waiting"
            self._check_task(batch, task, now)
        self.counters["restored_tasks"] += len(self._tasks)
        self._order_closed()
        # Re-queueing is not news; journal only what changed (a template that no longer
        # renders, a task that turns out to be finished).
        batch.subtasks = {
            key: None
            for key in batch.subtasks
            if self._tasks[key[0]].subtasks[key[1]].state != restored[key]
        }
        return self._finish(batch)

    def _restore_subtask(
        self, rec: SubtaskRecord, data: Mapping[str, Any], lease: float, now: float
    ) -> None:
        rec.state = data["state"]
        rec.attempt = int(data.get("attempt", 0))
        rec.attempts = [Attempt.from_data(a, lease) for a in data.get("attempts", ())]
        result = data.get("result")
        rec.result = None if result is None else Result.from_data(result)
        rec.reasons = list(data.get("reasons", ()))
        rec.error = data.get("error")
        rec.failures = int(data.get("failures", 0))
        rec.refusals = int(data.get("refusals", 0))
        not_before = data.get("not_before")
        rec.not_before = (
            -math.inf
            if not_before is None
            else min(float(not_before), now + self.config.backoff_max_s)
        )
        rec.finished = data.get("finished")
        current = rec.current
        if rec.state in IN_FLIGHT and (current is None or current.state not in IN_FLIGHT):
            rec.state = "ready"  # inconsistent record: place it again

    # ------------------------------------------------------------ retention

    def finished_count(self) -> tuple[int, int]:
        """How many finished tasks, and subtasks in them, are held (cheap: call it
        every loop turn)."""
        return len(self._closed), self._closed_subtasks

    def expire(self, now: float) -> list[Effect]:
        """Forget one bounded batch of the finished tasks ``config.retention`` lets go,
        oldest first (:func:`swarmd.core.retention.to_forget`): a "forget" Journal
        record each, which also deletes their rows, inputs and artifacts from disk.
        Call it every ``retention.interval_s`` and whenever ``retention.over_cap``
        (``*finished_count()``) — again at once if it returned anything."""
        rows = ((tid, t, len(self._tasks[tid].subtasks)) for tid, t in self._closed.items())
        count, subtasks = self.finished_count()
        gone = to_forget(rows, count, subtasks, now, self.config.retention)
        effects: list[Effect] = []
        for task_id in gone:
            effects += self.forget(task_id)
        self.counters["forgotten"] += len(gone)
        return effects

    def _order_closed(self) -> None:
        """After a restore: the finished tasks, oldest first (by when they finished)."""
        done = [t for t in self._tasks.values() if t.final]
        done.sort(key=lambda t: t.submitted if t.finished is None else t.finished)
        self._closed = {
            t.id: t.submitted if t.finished is None else float(t.finished) for t in done
        }
        self._closed_subtasks = sum(len(t.subtasks) for t in done)


def _one_more(peer: PeerCapacity, model: str | None) -> PeerCapacity:
    """The peer with one more request on ``model`` (llm) or one more busy slot."""
    if model is not None:
        models = tuple(
            replace(m, in_flight=m.in_flight + 1) if m.name == model else m for m in peer.models
        )
        return replace(peer, models=models)
    return replace(peer, slots_busy=peer.slots_busy + 1)
