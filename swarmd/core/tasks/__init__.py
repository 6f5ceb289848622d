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

The tables in :mod:`~swarmd.core.tasks.transitions` make this diagram exact (with the
task's and the attempt's, and the moves a template error, a deadline and a restore
make): every state change goes through
:func:`~swarmd.core.tasks.transitions.advance`, which raises :class:`IllegalTransition`
for a move the table does not have.

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

Where things are (one concern per module)::

    transitions.py    the state tables (task, subtask, attempt) and advance()
    records.py        the records (task, subtask, attempt), Result, the configuration
    effects.py        the effects a call returns, and the Batch one call collects
    graph.py          a job as a task record (dependants, urgency); rendering templates
    backlog.py        the ready subtasks: queue, backoff waits, kinds of demand queued
    finished.py       the finished tasks held, in order, for retention
    bookkeeping.py    what a coordinator holds; a call's changes as journal snapshots
    lifecycle.py      ready, dispatch, attempt failed (retry), settle, close, stop
    scheduler.py      the schedule pass: price each ready subtask, dispatch the winner
    worker_events.py  accepted, progress, refused, result, peer dead (with fencing)
    timeouts.py       deadlines, leases, next wakeup
    views.py          status, result, explain, tasks, summary, load per node
    outlook.py        deadlines: admission at submit, the running tasks' outlook
    restore.py        journal replay
    adoption.py       taking over a dead coordinator's tasks (replica), giving them up
    coordinator.py    Coordinator: the parts put together; submit, cancel, forget, expire
"""

from swarmd.core.tasks.coordinator import Coordinator
from swarmd.core.tasks.effects import (
    Ack,
    CancelAttempt,
    Dispatch,
    Effect,
    Journal,
    Quarantine,
    TaskFinished,
)
from swarmd.core.tasks.outlook import Admission
from swarmd.core.tasks.records import (
    Attempt,
    CoordinatorConfig,
    NodeLoad,
    Result,
    SubtaskRecord,
    TaskRecord,
    UnknownTask,
)
from swarmd.core.tasks.transitions import (
    FINAL_SUBTASK,
    FINAL_TASK,
    IN_FLIGHT,
    AttemptState,
    IllegalTransition,
    SubtaskState,
    TaskState,
)

__all__ = [
    "FINAL_SUBTASK",
    "FINAL_TASK",
    "IN_FLIGHT",
    "Ack",
    "Admission",
    "Attempt",
    "AttemptState",
    "CancelAttempt",
    "Coordinator",
    "CoordinatorConfig",
    "Dispatch",
    "Effect",
    "IllegalTransition",
    "Journal",
    "NodeLoad",
    "Quarantine",
    "Result",
    "SubtaskRecord",
    "SubtaskState",
    "TaskFinished",
    "TaskRecord",
    "TaskState",
    "UnknownTask",
]
