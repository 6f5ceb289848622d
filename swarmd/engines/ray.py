"""The Ray engine: subtasks as Ray jobs, through the Jobs API of a Ray cluster's
dashboard (plain HTTP: this node needs no Ray installed).

- ``submit``: writes the wrapper (:func:`.ray_jobs.script`) into the attempt's
  directory, then ``POST /api/jobs/`` with the job's CPUs/GPUs/memory as entrypoint
  resources (Ray holds the job PENDING until a node has them) and the configured
  ``runtime_env``;
- ``status``: ``GET /api/jobs/ID``; the exit code from the wrapper's ``exit`` file in
  the directory named by the job's metadata, else from the last line of the job's log
  (``GET /api/jobs/ID/logs``); a job that FAILED with neither was failed by Ray (its
  supervisor died, its runtime env could not be set up, its node was lost): the engine
  failed it. 404: ``unknown``;
- ``cancel``: ``POST /api/jobs/ID/stop`` (Ray sends SIGTERM to the entrypoint and what
  it started, SIGKILL 3 s later: ``RAY_JOB_STOP_WAIT_TIME_S``);
- ``capacity``: ``GET /api/cluster_status`` (each resource's used/total; where the
  autoscaler writes none, the alive nodes' totals from ``GET /api/v0/nodes``) and
  ``GET /api/jobs/`` (jobs running and pending, what swarmd's running ones reserved
  as their metadata says, the lengths of finished ones).

Every request that cannot be made, times out or gets a 5xx raises
:class:`~swarmd.engines.EngineError`, as does a submit Ray refuses (4xx).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import httpx

from . import EngineCapacity, EngineError, JobSpec, JobStatus
from .ray_jobs import (
    EXIT_FILE,
    SCRIPT,
    WORKDIR_KEY,
    Resources,
    capacity_of,
    exit_from_log,
    parse_cluster_status,
    parse_state_nodes,
    phase_of,
    runtime_env_problem,
    script,
    submit_body,
)

CONNECT_TIMEOUT_S: Final = 5.0
REQUEST_TIMEOUT_S: Final = 30.0
TERMINAL_RAY: Final = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


class RayEngine:
    kind = "ray"

    def __init__(
        self,
        name: str,
        *,
        address: str,
        runtime_env: Mapping[str, Any] | None = None,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        if not address.startswith(("http://", "https://")):
            raise ValueError(f"Ray Jobs API address: expected http(s)://HOST:PORT, not {address!r}")
        if runtime_env and (problem := runtime_env_problem(dict(runtime_env))):
            raise ValueError(f"runtime_env: {problem}")
        self.name = name
        self.address = address.rstrip("/")
        self.runtime_env = dict(runtime_env or {})
        self._http = httpx.AsyncClient(
            base_url=self.address,
            timeout=httpx.Timeout(request_timeout_s, connect=CONNECT_TIMEOUT_S),
            trust_env=False,
        )

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise EngineError(f"Ray at {self.address}: {type(exc).__name__}: {exc}") from None

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request whose answer is not a server error."""
        reply = await self._send(method, path, **kwargs)
        if reply.status_code >= 500:
            raise EngineError(
                f"Ray at {self.address}: {method} {path}: HTTP {reply.status_code}: "
                f"{reply.text.strip()[-300:]}"
            )
        return reply

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        reply = await self._request(method, path, **kwargs)
        if reply.status_code != 200:
            raise EngineError(f"Ray: {method} {path}: HTTP {reply.status_code}")
        try:
            return reply.json()
        except ValueError:
            raise EngineError(f"Ray: {method} {path}: not JSON: {reply.text[:200]!r}") from None

    async def submit(self, job: JobSpec) -> str:
        path = job.workdir / SCRIPT
        try:
            path.write_text(script(job))
            path.chmod(0o700)
        except OSError as exc:
            raise EngineError(f"cannot write the job script {path}: {exc}") from None
        body = submit_body(job, self.runtime_env)
        reply = await self._send("POST", "/api/jobs/", json=body)
        if reply.status_code == 200:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                return str(reply.json()["submission_id"])
            raise EngineError(f"Ray: submit: no submission_id in {reply.text[:200]!r}")
        # Ray 2.60 answers 500 with a traceback for a submission id it has
        if "already exists" in reply.text and await self._is_ours(body["submission_id"], job):
            return str(body["submission_id"])  # an earlier submit of this attempt got through
        said = f"HTTP {reply.status_code}: {_last_line(reply.text)}"
        if reply.status_code >= 500:
            raise EngineError(f"Ray at {self.address}: submit: {said}")
        raise EngineError(f"Ray refused the job: {said}")

    async def _is_ours(self, job_id: str, job: JobSpec) -> bool:
        info = await self._info(job_id)
        meta = (info or {}).get("metadata") or {}
        return isinstance(meta, dict) and meta.get(WORKDIR_KEY) == str(job.workdir)

    async def _info(self, job_id: str) -> dict[str, Any] | None:
        """``GET /api/jobs/ID``; None when Ray does not know the job."""
        reply = await self._request("GET", f"/api/jobs/{quote(job_id, safe='')}")
        if reply.status_code == 404:
            return None
        if reply.status_code != 200:
            raise EngineError(f"Ray: job {job_id}: HTTP {reply.status_code}")
        try:
            info = reply.json()
        except ValueError:
            raise EngineError(f"Ray: job {job_id}: not JSON: {reply.text[:200]!r}") from None
        if not isinstance(info, dict):
            raise EngineError(f"Ray: job {job_id}: not an object: {reply.text[:200]!r}")
        return info

    async def status(self, job_id: str) -> JobStatus:
        info = await self._info(job_id)
        if info is None:
            return JobStatus("unknown", "Ray does not know the job (any more)")
        if info.get("status") not in TERMINAL_RAY:
            return phase_of(info, None)
        meta = info.get("metadata") or {}
        workdir = Path(str(meta[WORKDIR_KEY])) if WORKDIR_KEY in meta else None
        code = _read_exit_file(workdir) if workdir is not None else None
        if code is None and info.get("status") != "STOPPED":
            code = await self._exit_from_log(job_id)
        if workdir is not None:
            _ensure_output_files(workdir)
        return phase_of(info, code)

    async def _exit_from_log(self, job_id: str) -> int | None:
        reply = await self._request("GET", f"/api/jobs/{quote(job_id, safe='')}/logs")
        if reply.status_code != 200:
            return None
        try:
            logs = reply.json().get("logs", "")
        except (ValueError, AttributeError):
            return None
        return exit_from_log(logs) if isinstance(logs, str) else None

    async def cancel(self, job_id: str) -> None:
        reply = await self._request("POST", f"/api/jobs/{quote(job_id, safe='')}/stop")
        if reply.status_code not in (200, 404):
            raise EngineError(f"Ray: stop {job_id}: HTTP {reply.status_code}: {reply.text[:200]}")

    async def capacity(self) -> EngineCapacity:
        try:
            res = await self.resources()
            return capacity_of(res, await self._json("GET", "/api/jobs/"))
        except ValueError as exc:
            raise EngineError(f"Ray at {self.address}: {exc}") from None

    async def resources(self, *, state_api: bool = False) -> Resources:
        """The cluster's resources: the autoscaler's report of used/total, else (none
        written, as with autoscaler v2; or ``state_api``) the alive nodes' totals."""
        if not state_api:
            with contextlib.suppress(ValueError):
                return parse_cluster_status(await self._json("GET", "/api/cluster_status"))
        return parse_state_nodes(await self._json("GET", "/api/v0/nodes"))

    async def close(self) -> None:
        await self._http.aclose()


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _read_exit_file(workdir: Path) -> int | None:
    try:
        text = (workdir / EXIT_FILE).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.lstrip("-").isdigit() else None


def _ensure_output_files(workdir: Path) -> None:
    """A job that ended before its command did (stopped, failed by Ray) left no output
    files: empty ones, so that a terminal job always has both (never truncates)."""
    for name in ("stdout", "stderr"):
        with contextlib.suppress(OSError):
            (workdir / name).open("a").close()
