"""This node as a worker: the asyncio shell around :class:`swarmd.core.worker.WorkerCore`.

The core decides (admission, queue, progress, outbox, resends); this shell carries its
effects out: an executor task per started attempt, messages through ``send``, and the
outbox in SQLite, written behind: every OUTBOX_WRITE_S, in one transaction, what is
still unacknowledged then (most results are acknowledged sooner and never written).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from protocol import codec
from protocol.messages import (
    LOG_CHUNK_BYTES,
    STREAM_CHUNK_BYTES,
    AttemptResult,
    BlobWant,
    CancelAttempt,
    Dispatch,
    Message,
    Progress,
    ResultAck,
    StreamChunk,
    TaskClaim,
)

from . import worker_engines
from .core import worker as core
from .core.throughput import HERE, ThroughputTracker
from .core.worker import AttemptKey
from .executors import ExecRequest, ExecResult, Limits, execute
from .executors.output import LiveOutput

if TYPE_CHECKING:
    from .engine_host import EngineHost
from .http_client import HttpPool
from .journal_health import RETRY_S, JournalHealth
from .store import Store
from .worker_blobs import BlobServer

Send = Callable[[str, Message], bool]  # (node address, message) -> queued?
TICK_S = 0.2  # the timer's longest sleep (it wakes early for a start to tell)
LIVE_S = 0.25  # a running shell attempt's new output goes out this often
OUTBOX_WRITE_S = 0.05  # results wait this long for their ack before being written


def request_of(
    d: Dispatch, models: Mapping[str, tuple[str, str, int]], spool: Path | None = None
) -> ExecRequest:
    s = d.spec
    endpoint = model = None
    if s.get("kind") == "llm" and d.model in models:
        endpoint, model, _ = models[d.model]
    return ExecRequest(
        task_id=d.task,
        subtask_id=d.subtask,
        attempt=d.attempt,
        kind=s.get("kind", "shell"),
        run=tuple(s.get("run") or ()),
        env=dict(s.get("env") or {}),
        timeout_s=s.get("timeout_s"),
        inputs=d.inputs,
        outputs=tuple(s.get("outputs") or ()),
        prompt=s.get("prompt"),
        system=s.get("system"),
        max_tokens=int(s.get("max_tokens") or 256),
        endpoint=endpoint,
        model=model,
        call=s.get("call"),
        args=tuple(s.get("args") or ()),
        kwargs=dict(s.get("kwargs") or {}),
        spool=spool,
        api=s.get("api"),
        request=s.get("request"),
    )


def result_message(key: AttemptKey, node_id: str, r: ExecResult) -> AttemptResult:
    usage = dict(r.usage or {})
    usage.setdefault("seconds", r.seconds)
    return AttemptResult(
        task=key[0],
        subtask=key[1],
        attempt=key[2],
        node=node_id,
        exit_code=r.exit_code,
        stdout=r.stdout,
        stderr=r.stderr,
        output=r.output,
        usage=usage,
        artifacts=dict(r.artifacts),
        error=r.error,
        app_failed=r.app_failed,
        blob=None if r.blob is None else r.blob.ref,
    )


class Worker:
    def __init__(
        self,
        *,
        node_id: str,
        store: Store,
        send: Send,
        workdir_root: Path,
        slots: int,
        allow_shell: bool,
        models: Mapping[str, tuple[str, str, int]],  # profile -> (endpoint, model, max)
        log: logging.Logger,
        limits: Limits | None = None,
        queue: int | None = None,
        generation: int | None = None,
        resources: tuple[int | None, int | None] = (None, None),  # RAM, largest GPU's VRAM
        spool_root: Path | None = None,
        health: JournalHealth | None = None,
        engines: EngineHost | None = None,
    ) -> None:
        self.store = store
        self.engines = engines  # [engines.NAME] this node fronts: shell attempts as jobs
        self.health = health
        self.send = send
        self.workdir_root = workdir_root
        self.allow_shell = allow_shell
        self.models = dict(models)
        # The requests this node's endpoints served, for every coordinator: gossiped
        # with the model profiles (OwnState), so every coordinator prices with them.
        self.measured = ThroughputTracker()
        self.log = log
        self.limits = limits or Limits()
        config = core.WorkerConfig(
            slots=slots,
            queue=queue,
            allow_shell=allow_shell,
            models={name: m[2] for name, m in models.items()},
            ram_total=resources[0],
            vram_max=resources[1],
            engines=engines.max_jobs if engines is not None else {},
        )
        self.core = core.WorkerCore(node_id, config, generation)
        self.running: dict[AttemptKey, asyncio.Task[None]] = {}
        self._pool: Any = None
        self._http: httpx.AsyncClient | None = None  # llm attempts' connections, kept
        self._upstream = HttpPool()  # gateway requests' connections to the endpoints, kept
        self._puts: dict[AttemptKey, tuple[str, AttemptResult]] = {}  # outbox, not written yet
        self._drops: set[AttemptKey] = set()
        # Rows on disk: a result written, then re-pointed to a new coordinator (its
        # task adopted: written again later), must still have its row deleted on ack.
        self._written: set[AttemptKey] = set()
        self._flush_due = False
        self._wake = asyncio.Event()  # a start the timer must tell of sooner
        self._asleep_until = 0.0
        self.blobs = BlobServer(
            spool_root or workdir_root.parent / "spool", send, self.core.counters, log
        )
        stored = self._stored_outbox()
        self._written = {core.key_of(m) for _, m in stored}
        self.core.restore(stored, time.monotonic())
        self.blobs.keep_only(core.key_of(m) for _, m in stored if m.blob is not None)

    # ------------------------------------------------------------ views

    @property
    def node_id(self) -> str:
        return self.core.node_id

    @node_id.setter
    def node_id(self, value: str) -> None:  # after an identity conflict
        self.core.node_id = value

    @property
    def counters(self) -> Any:
        return self.core.counters

    @property
    def busy(self) -> int:
        return self.core.busy

    @property
    def load(self) -> int:
        return self.core.load

    @property
    def queued(self) -> int:
        return self.core.queued

    @property
    def queue_limit(self) -> int:
        return self.core.queue_limit

    @property
    def draining(self) -> bool:
        return self.core.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.core.draining = value

    def set_models(self, models: Mapping[str, tuple[str, str, int]]) -> None:
        """The model profiles from now on (profile -> (endpoint, model, max)): local
        servers found or gone. Attempts already running keep their endpoint."""
        self.models = dict(models)
        self.core.set_models({name: m[2] for name, m in models.items()})

    def model_use_by(self) -> dict[str, dict[str, int]]:
        return self.core.model_use_by()

    # ------------------------------------------------------------ messages in

    def on_dispatch(self, d: Dispatch) -> None:
        self._apply(self.core.on_dispatch(d, time.monotonic()))

    # ``by``: the address of the node that sent it, as the transport proved (None: not
    # known); each is taken only from the attempt's own coordinator.
    def on_cancel(self, m: CancelAttempt, by: str | None = None) -> None:
        self._apply(self.core.on_cancel(m, time.monotonic(), by))

    def on_ack(self, m: ResultAck, by: str | None = None) -> None:
        self._apply(self.core.on_ack(m, by))

    def on_claim(self, claim: TaskClaim) -> None:
        """A successor adopted ``claim.task``: its attempts here report there now."""
        known = self.core.epochs.get(claim.task)
        if known is not None and (claim.epoch, claim.coordinator.id) <= known[:2]:
            return
        effects = self.core.on_claim(claim, time.monotonic())
        self.log.info(
            "task %s: now coordinated by %s (epoch %d); %d attempt(s) here report there",
            claim.task,
            claim.coordinator.id,
            claim.epoch,
            sum(isinstance(e, core.Send) for e in effects),
        )
        self._apply(effects)

    def _addr(self, key: AttemptKey, d: Dispatch) -> str:
        """Where the attempt reports now (a successor may have adopted its task)."""
        return self.core.coordinator_addr(key) or d.coordinator.addr

    def on_blob_want(self, m: BlobWant, by: str | None = None) -> None:
        out = self.core.outbox.get((m.task, m.subtask, m.attempt))
        if out is not None and by is not None and by != out.addr:
            self.core.counters["wrong_sender"] += 1
            return
        self.blobs.serve(m, None if out is None else out.addr, None if out is None else out.message)

    # ------------------------------------------------------------ effects

    def _apply(self, effects: list[core.Effect]) -> None:
        for e in effects:
            if isinstance(e, core.Send):
                self.send(e.addr, e.message)
            elif isinstance(e, core.Start):
                self.running[e.key] = asyncio.ensure_future(self._run(e.key, e.dispatch))
                if self._asleep_until > time.monotonic() + self.core.config.start_notice_s:
                    self._wake.set()  # the timer would tell of this start too late
            elif isinstance(e, core.Stop):
                task = self.running.get(e.key)
                if task is not None:
                    task.cancel()
            elif isinstance(e, core.Persist):
                self._drops.discard(e.key)
                self._puts[e.key] = (e.addr, e.message)
                self._flush_soon()
            elif isinstance(e, core.Unpersist):
                self.blobs.drop(e.key)
                if self._puts.pop(e.key, None) is None or e.key in self._written:
                    self._drops.add(e.key)
                    self._flush_soon()

    def _flush_soon(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_later(OUTBOX_WRITE_S, self.flush)

    def flush(self) -> None:
        """Write the outbox changes of the last OUTBOX_WRITE_S in one transaction. A
        result acknowledged before that is never written (write-behind: a crash in
        between only re-runs the attempt, as a crash before it ended would)."""
        self._flush_due = False
        puts, drops = self._puts, self._drops
        self._puts, self._drops = {}, set()
        if puts or drops:
            rows = [(*k, addr, codec.encode(m)) for k, (addr, m) in puts.items()]
            try:
                self.store.update_outbox(rows, list(drops))
            except (sqlite3.Error, OSError) as exc:  # disk full: keep them, try again
                self._puts, self._drops = {**puts, **self._puts}, drops | self._drops
                if self.health is not None:
                    self.health.failed("outbox", exc)
                self._flush_due = True
                asyncio.get_running_loop().call_later(RETRY_S, self.flush)
                return
            self._written = (self._written | puts.keys()) - drops
        if self.health is not None:
            self.health.ok("outbox")

    def _stored_outbox(self) -> list[tuple[str, AttemptResult]]:
        out = []
        for addr, encoded in self.store.outbox():
            try:
                message = codec.decode(encoded)
            except codec.ProtocolError:
                continue  # written by another protocol version: its coordinator moved on
            if isinstance(message, AttemptResult):
                out.append((addr, message))
        return out

    # ------------------------------------------------------------ attempts

    async def _run(self, key: AttemptKey, d: Dispatch) -> None:
        shell = d.spec.get("kind", "shell") == "shell"
        live = LiveOutput() if shell else None
        pump = asyncio.ensure_future(self._stream(key, d, live)) if live else None
        # Only declared outputs can make a blob: no spool path (nor a stat to clean
        # one up) for the many calls without any.
        spool = self.blobs.spool_for(key) if d.spec.get("outputs") else None
        try:
            result = await (
                worker_engines.engine_attempt(self, d, spool, live)
                if d.spec.get("engine")
                else execute(
                    request_of(d, self.models, spool),
                    workdir_root=self.workdir_root,
                    allow_shell=self.allow_shell,
                    limits=self.limits,
                    pool=self._python_pool() if d.spec.get("kind") == "python" else None,
                    http=self._llm_client() if d.spec.get("kind") == "llm" else None,
                    upstream=self._upstream,
                    live=live,
                    relay=self._relay(d) if d.spec.get("api") else None,
                )
            )
        except asyncio.CancelledError:
            # Still report how it ended: the coordinator fences it off if it moved on,
            # and on shutdown it re-dispatches at once instead of waiting for the lease.
            cancelled = self.core.was_cancelled(key)
            why = "cancelled by the coordinator" if cancelled else "worker shutting down"
            self.counters["outcome_cancelled" if cancelled else "outcome_handed_back"] += 1
            self.log.info("attempt %s/%s#%d: %s", *key, why)
            message = self.core.ended_early(key, why)
        except Exception as exc:  # an executor bug must not lose the attempt
            self.log.exception("executor failed")
            failure = ExecResult.failure(f"executor error: {exc}", app_failed=False)
            message = result_message(key, self.node_id, failure)
            self.counters["outcome_error"] += 1
        else:
            outcome = "ok" if result.ok else "app_failed" if result.app_failed else "error"
            self.counters[f"outcome_{outcome}"] += 1
            if d.model is not None and d.spec.get("kind") == "llm" and result.ok and result.usage:
                self.measured.observe_usage(HERE, d.model, result.usage)
            message = result_message(key, self.node_id, result)
        finally:
            self.running.pop(key, None)
            if pump is not None:
                pump.cancel()
        if spool is not None and message.blob is None:
            self.blobs.drop(key)  # a blob it wrote before it failed or was stopped
        self._apply(self.core.on_finished(key, message, time.monotonic()))

    async def _stream(self, key: AttemptKey, d: Dispatch, live: LiveOutput) -> None:
        """A running shell attempt's new output to its coordinator, every LIVE_S (for
        `swarmctl logs -f`); each such progress also renews the lease."""
        sent = [0, 0]
        while True:
            await asyncio.sleep(LIVE_S)
            chunks = []
            for i, buf in enumerate((live.out, live.err)):
                at, data = buf.since(sent[i]) if buf is not None else (sent[i], b"")
                data = data[:LOG_CHUNK_BYTES]
                sent[i] = at + len(data)
                chunks.append((at, data))
            (out_at, out), (err_at, err) = chunks
            if out or err:
                message = Progress(
                    task=d.task,
                    subtask=d.subtask,
                    attempt=d.attempt,
                    node=self.node_id,
                    note="output",
                    load=self.core.load,
                    out=out,
                    out_at=out_at,
                    err=err,
                    err_at=err_at,
                )
                self.send(self._addr(key, d), message)

    def _relay(self, d: Dispatch) -> Callable[[bytes], None]:
        """A gateway request's streamed answer to its coordinator, as it arrives."""
        seq = 0

        def relay(data: bytes) -> None:
            nonlocal seq
            for at in range(0, len(data), STREAM_CHUNK_BYTES):
                piece = data[at : at + STREAM_CHUNK_BYTES]
                message = StreamChunk(
                    task=d.task,
                    subtask=d.subtask,
                    attempt=d.attempt,
                    node=self.node_id,
                    seq=seq,
                    data=piece,
                )
                seq += 1
                self.send(self._addr((d.task, d.subtask, d.attempt), d), message)

        return relay

    def _python_pool(self) -> Any:
        if self._pool is None:
            from .executors.python import PythonPool

            self._pool = PythonPool(max_workers=max(1, self.core.config.slots))
        return self._pool

    def _llm_client(self) -> httpx.AsyncClient:
        """One HTTP client for all llm attempts, so concurrent ones (a group) share its
        kept connections to the endpoint. A client per attempt cost a new connection
        and about 17 ms of CPU each (httpx builds a TLS context per client)."""
        if self._http is None:
            concurrency = sum(m[2] for m in self.models.values())
            limits = httpx.Limits(
                max_connections=None, max_keepalive_connections=max(20, concurrency)
            )
            self._http = httpx.AsyncClient(trust_env=False, limits=limits)
        return self._http

    async def timer_loop(self) -> None:
        """Progress and resends when the core says they are due."""
        worker_engines.readopt(self)
        while True:
            self._apply(self.core.tick(time.monotonic()))
            wakeup = self.core.next_wakeup()
            now = time.monotonic()
            delay = TICK_S if wakeup is None else min(TICK_S, max(0.005, wakeup - now))
            self._asleep_until = now + delay
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def hand_back(self) -> None:
        """Shutting down: queued attempts end at once, running ones are cancelled."""
        self._apply(self.core.hand_back(time.monotonic()))

    async def close(self) -> None:
        self.hand_back()
        tasks = list(self.running.values())
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self.flush()
        await self._upstream.aclose()
        if self._http is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http.aclose(), 5)
        if self._pool is not None:
            with contextlib.suppress(Exception):
                close = self._pool.close()
                if asyncio.iscoroutine(close):
                    await asyncio.wait_for(close, 5)
