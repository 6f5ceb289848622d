"""The worker's engine attempts: a shell attempt that names an engine this node fronts
runs as a job of it (swarmd/executors/engine.py), what the engine says goes to the
coordinator as progress notes (``status`` shows them), and after a restart the jobs
submitted before it are followed again (:func:`readopt`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from protocol import codec
from protocol.messages import Dispatch, Progress

from .core import worker as core
from .executors import ExecResult
from .executors import engine as engine_executor
from .executors.output import LiveOutput

if TYPE_CHECKING:
    from .worker import Worker

ENGINE_NOTE = "engine:"  # how an engine's word starts a progress note (worker_events.py)


async def engine_attempt(
    worker: Worker, d: Dispatch, spool: Path | None, live: LiveOutput | None = None
) -> ExecResult:
    """Run ``d`` as a job of the engine its spec names; its result as for any attempt."""
    from .worker import request_of

    name = str(d.spec["engine"])
    host = worker.engines
    if host is None or name not in host.engines:
        return ExecResult.failure(f"no engine {name!r} on this node", app_failed=False)
    if not worker.allow_shell:
        return ExecResult.failure("shell subtasks are disabled here", app_failed=False)
    key = (d.task, d.subtask, d.attempt)

    def told(line: str) -> None:
        note = Progress(
            task=d.task,
            subtask=d.subtask,
            attempt=d.attempt,
            node=worker.node_id,
            note=f"{ENGINE_NOTE} {line}"[:200],
            load=worker.core.load,
        )
        worker.send(worker.core.coordinator_addr(key) or d.coordinator.addr, note)

    min_ram, min_vram = d.spec.get("min_ram") or 0, d.spec.get("min_vram") or 0
    resources = {"mem_mb": int(min_ram) // (1 << 20), "gpus": 1 if min_vram else 0}
    return await engine_executor.run(
        request_of(d, worker.models, spool),
        host.engines[name],
        workdir_root=host.workdirs[name],
        limits=worker.limits,
        progress=told,
        resources=resources,
        keepsake=codec.encode(msgspec.structs.replace(d, inputs={})),
        live=live,
    )


def readopt(worker: Worker) -> None:
    """Follow the engine jobs this node submitted before it restarted (a crash left
    them running): their attempts are held again, nothing is submitted twice."""
    host = worker.engines
    if host is None:
        return
    for name, root in host.workdirs.items():
        for kept in engine_executor.adoptable(root, name):
            try:
                d = codec.decode(kept)
            except codec.ProtocolError:
                continue
            if isinstance(d, Dispatch) and d.spec.get("engine") == name:
                worker.log.info("engine %s: following %s/%s#%d again", name, *core.key_of(d))
                worker._apply(worker.core.readopt(d, time.monotonic()))
