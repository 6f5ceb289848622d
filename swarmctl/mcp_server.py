"""``swarmctl mcp``: a Model Context Protocol server on stdio for coding agents.

An agent in an MCP client (Claude Desktop, an IDE, …) gets tools to hand work to the
swarm through the local node: one prompt for the best model with a capability, one
shell command, or a whole job (a DAG of subtasks, the JSON form of a job file), and to
follow, read, cancel and explain its tasks and see the peers.

Every tool talks to the daemon with the same synchronous control client as the other
``swarmctl`` commands (``--state-dir`` / ``--node`` / ``--timeout``), in a worker
thread. A failure — no daemon, a refused job, an unknown task — is a tool error whose
text says what is wrong; it never stops the server. Nothing but the protocol is
written to stdout.

Files: ``submit_job`` ships its ``inputs`` from a ``workdir`` that must lie inside the
server's root (``swarmctl mcp --root DIR``; by default the directory it was started
in), with the same checks as ``swarmctl submit`` (no symlink out of the workdir, only
regular files). A server started in ``/`` without ``--root`` ships no files at all:
clients such as Claude Desktop start their servers there, and ``/`` confines nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread

try:  # mcp 2.x renamed FastMCP to MCPServer
    from mcp.server.mcpserver import MCPServer as _Server
    from mcp.server.mcpserver.exceptions import ToolError
except ImportError:  # pragma: no cover - mcp 1.x
    from mcp.server.fastmcp import FastMCP as _Server  # type: ignore[no-redef,attr-defined]
    from mcp.server.fastmcp.exceptions import (  # type: ignore[no-redef,import-not-found]
        ToolError,
    )

from protocol import codec
from protocol.messages import (
    ControlReply,
    ControlRequest,
    PeersReply,
    PeersRequest,
    SubmitReply,
    SubmitRequest,
    TaskReply,
    TaskRequest,
    TasksReply,
    TasksRequest,
    WatchReply,
    WatchRequest,
)
from swarmd.core.jobspec import (
    JobError,
    JobSpec,
    job_to_data,
    parse_job,
    single_command_job,
    single_prompt_job,
)

from .client import Client, RequestFailed, Unreachable, UsageError

T = TypeVar("T")
Priority = Literal["critical", "high", "normal", "low"]
FINAL_STATES = ("done", "failed", "cancelled")
WATCH_S = 30.0  # one watch request's longest wait
MAX_WAIT_S = 3600.0

INSTRUCTIONS = """\
This server hands work to a swarmd cluster: the machines the user owns (GPU desktops,
laptops, workstations), each offering CPU slots for shell/python work and LLM endpoints
tagged with capabilities (e.g. "lint", "format", "syntax" on small fast models on the
laptops; "architecture", "security" on a big model on the GPU box). The cluster places
each subtask on the cheapest fitting node and re-runs it if that node dies.

Use it to delegate: small mechanical subtasks (lint, format, syntax checks, summaries)
to a cheap capability, hard questions (architecture, design review) to the capable
one, long or parallel shell commands (test suites, builds) to idle machines. Call
list_peers first to see which capabilities, models and GPUs exist. Submitting returns
a task id at once; then wait_task (or get_task) until it is done, and get_result for
the output. Tasks are coordinated by this node; ids from other nodes are unknown here.
"""


class SwarmTools:
    """The daemon side of the tools: synchronous calls, run in a worker thread."""

    def __init__(self, state_dir: Path, node: str | None = None, timeout_s: float = 3.0) -> None:
        self.state_dir, self.node, self.timeout_s = state_dir, node, timeout_s

    def call(self, request: ControlRequest, timeout_s: float | None = None) -> ControlReply:
        """One request; every failure is a ToolError with the daemon's or client's words."""
        try:
            client = Client(self.state_dir, self.node, self.timeout_s)
        except (Unreachable, UsageError) as exc:
            raise ToolError(f"swarmd not reachable: {exc}") from None
        try:
            return client.request(request, timeout_s)
        except Unreachable as exc:
            raise ToolError(f"swarmd not reachable: {exc}") from None
        except RequestFailed as exc:
            raise ToolError(str(exc).removeprefix("bad_request: ")) from None
        finally:
            client.close()

    def submit(self, job: JobSpec, files: dict[str, bytes] | None = None) -> dict[str, Any]:
        reply = self.call(SubmitRequest(job=job_to_data(job), files=files or {}))
        assert isinstance(reply, SubmitReply)
        return {"task": reply.task}

    def task(self, task: str, what: str) -> dict[str, Any]:
        reply = self.call(TaskRequest(task=task, what=what))  # type: ignore[arg-type]
        assert isinstance(reply, TaskReply)
        return reply.body

    def watch(self, task: str, seen: int, timeout_s: float) -> dict[str, Any]:
        """The task's summary once it changed after version ``seen`` (pushed)."""
        request = WatchRequest(task=task, seen=seen, timeout_s=timeout_s)
        reply = self.call(request, timeout_s + self.timeout_s)
        assert isinstance(reply, WatchReply)
        return reply.task

    def tasks(self) -> list[dict[str, Any]]:
        reply = self.call(TasksRequest())
        assert isinstance(reply, TasksReply)
        return reply.tasks

    def peers(self) -> list[dict[str, Any]]:
        reply = self.call(PeersRequest())
        assert isinstance(reply, PeersReply)
        rows: list[dict[str, Any]] = codec.to_builtins(reply.peers)
        return rows


def _job_from_argument(job: dict[str, Any] | str) -> JobSpec:
    """The job as the daemon will read it (same source label, so the same messages)."""
    if isinstance(job, str):  # some clients send the object as JSON text
        try:
            data = json.loads(job)
        except json.JSONDecodeError as exc:
            message = f"not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}"
            raise JobError(message, source="job") from None
        except RecursionError:
            raise JobError("not valid JSON: nested too deeply", source="job") from None
        if not isinstance(data, dict):
            raise JobError("expected a JSON object with the job's keys", source="job")
        job = data
    return parse_job(job, source=str(job.get("name", "job")))


def default_root(cwd: Path | None = None) -> Path | None:
    """The root when ``--root`` is not given: the working directory, unless that is
    ``/`` (which would confine nothing): then no root, and no files are shipped."""
    here = (cwd or Path.cwd()).resolve()
    return None if here == Path(here.anchor) else here


def _workdir(root: Path | None, workdir: str | None) -> Path:
    """The directory ``inputs`` are read from: ``workdir`` (relative to ``root``), which
    must lie inside ``root`` once its links are resolved; ``root`` itself by default."""
    if root is None:
        raise JobError(
            "this MCP server reads no files: it was started in / without a root "
            "directory; start it as `swarmctl mcp --root DIR` to ship inputs from DIR"
        )
    try:
        real = (root / workdir).resolve() if workdir else root.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a link loop, a NUL character
        raise JobError(f"workdir {workdir!r}: {exc}") from None
    if not real.is_relative_to(root.resolve()):
        raise JobError(
            f"workdir {workdir!r} is outside this server's root {str(root)!r}: inputs are "
            "read only from inside it (swarmctl mcp --root DIR)"
        )
    if not real.is_dir():
        raise JobError(f"workdir {workdir!r} is not a directory")
    return real


def _collect(job: JobSpec, workdir: str | None, root: Path | None) -> dict[str, bytes]:
    wanted = any(s.inputs for s in job.subtasks)
    if not wanted and not workdir:
        return {}
    base = _workdir(root, workdir)  # a workdir given is checked, inputs or not
    from .inputs import collect_inputs  # the same checks and limits as `submit -f`

    return collect_inputs(job, base) if wanted else {}


def build_server(
    state_dir: Path,
    node: str | None = None,
    timeout_s: float = 3.0,
    root: Path | None = None,
) -> Any:
    """The MCP server with the swarm tools, talking to the node at ``state_dir``;
    ``submit_job`` reads inputs only from inside ``root`` (none without one)."""
    swarm = SwarmTools(state_dir, node, timeout_s)
    server = _Server("swarmd", instructions=INSTRUCTIONS)

    run = _runner()
    _submit_tools(server, swarm, run, root)
    _task_tools(server, swarm, run)
    _swarm_tools(server, swarm, run)
    return server


Run = Callable[..., Awaitable[Any]]


def _runner() -> Run:
    """Run a blocking call to the daemon on a thread; a bad job is a tool error."""

    async def run(fn: Callable[..., T], *args: Any) -> T:
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except JobError as exc:
            raise ToolError(str(exc)) from None

    return run


def _submit_tools(server: Any, swarm: SwarmTools, run: Run, root: Path | None) -> None:
    @server.tool()
    async def submit_prompt(
        prompt: str,
        capability: str | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        priority: Priority = "normal",
    ) -> dict[str, Any]:
        """Ask an LLM in the swarm one question; returns {"task": id} at once.

        Use it to delegate by capability: lint/format/syntax/summary questions to the
        cheap fast models on the laptops (e.g. capability="lint"), architecture or
        security questions to the big model on the GPU machine (e.g.
        capability="architecture"). Give `capability` (a tag; the best node offering it
        answers) or `model` (a model profile name from list_peers). `priority` is one of
        critical, high, normal, low. The prompt must carry all context (no files are
        sent). Then call wait_task and get_result (the answer is in subtasks.main.output).
        """

        def build() -> JobSpec:
            return single_prompt_job(
                prompt,
                capability,
                model=model,
                max_tokens=max_tokens,
                priority=priority,
                source="submit_prompt",
            )

        return await run(lambda: swarm.submit(build()))

    @server.tool()
    async def submit_command(
        argv: list[str],
        min_vram: str | None = None,
        timeout: str | None = None,
        priority: Priority = "normal",
    ) -> dict[str, Any]:
        """Run one command (argv list, no shell; use ["sh", "-c", "..."] for pipes) on an
        idle machine of the swarm; returns {"task": id} at once.

        Use it for long or parallel work you would otherwise run yourself: test suites,
        builds, benchmarks, GPU jobs (`min_vram` like "16GiB" sends it to a node with a
        GPU that big). It runs in an empty scratch directory on the chosen node: no
        files are shipped — use submit_job with `inputs` for that. `timeout` like "10m"
        stops it; `priority` is critical, high, normal or low. Then wait_task and
        get_result (stdout, stderr, exit_code in subtasks.main).
        """

        def build() -> JobSpec:
            return single_command_job(
                argv, min_vram=min_vram, timeout=timeout, priority=priority, source="submit_command"
            )

        return await run(lambda: swarm.submit(build()))

    @server.tool()
    async def submit_job(job: dict[str, Any] | str, workdir: str | None = None) -> dict[str, Any]:
        """Submit a job — a DAG of subtasks — as one task; returns {"task": id}.

        Use it to fan a piece of work out in one go: e.g. lint and format subtasks by
        capability on the laptops, the test suite as a shell subtask, then an
        architecture review on the big GPU that reads their results. `job` is the JSON
        form of a job file: {"name": ..., "priority": ..., "deadline": "10m",
        "subtasks": [{"id": "lint", "kind": "shell", "run": ["ruff", "check", "."],
        "inputs": ["src/"], "outputs": ["report.txt"], "timeout": "2m"}, {"id": "plan",
        "kind": "llm", "capability": "architecture", "prompt": "Lint said:
        {{ lint.stdout }} Propose a refactor.", "after": ["lint"], "max_tokens": 512},
        {"id": "score", "kind": "python", "call": "pkg.mod:fn", "args": [1],
        "after": ["plan"]}]}. Other subtask keys: priority, retries, retry_on_error,
        min_vram, min_ram, capability, model, node (pin), env, system, estimate. A
        deadline the cluster cannot meet is refused with the estimated finish unless
        the job has "deadline_best_effort": true.
        `{{ ID.stdout }}` / `{{ ID.output }}` insert an upstream result. `inputs` are
        paths relative to `workdir`, shipped with the job; `workdir` (absolute, or
        relative to the server's root directory; the root by default) must lie inside
        that root, and no symlink may lead out of it. A bad job (cycle, unknown id, a
        capability nobody offers, …) is an error naming each bad subtask; fix them all
        and resubmit.
        """

        def submit() -> dict[str, Any]:
            spec = _job_from_argument(job)
            return swarm.submit(spec, _collect(spec, workdir, root))

        return await run(submit)


def _task_tools(server: Any, swarm: SwarmTools, run: Run) -> None:
    @server.tool()
    async def list_tasks() -> dict[str, Any]:
        """The tasks this node coordinates, oldest first: {"tasks": [{id, name, state,
        priority, submitted, ...}]}. Use it to find a task id you lost or to see what
        is still running."""
        return {"tasks": await run(swarm.tasks)}

    @server.tool()
    async def get_task(task: str) -> dict[str, Any]:
        """Status of a task: its state (running, done, failed, cancelled) and each
        subtask's state, node (peer), attempts, exit code and error. Cheap; use it to
        check on a task without blocking (wait_task blocks until the end)."""
        return await run(swarm.task, task, "status")

    @server.tool()
    async def get_result(task: str) -> dict[str, Any]:
        """Outputs of a task: per subtask its stdout, stderr, exit_code, LLM `output`
        text and token usage, the node that ran it, and the names of artifacts
        (their contents stay on the node: `swarmctl result TASK --out DIR`). Use it
        once wait_task says the task is done (or failed, to read the errors)."""
        return await run(swarm.task, task, "result")

    @server.tool()
    async def cancel_task(task: str) -> dict[str, Any]:
        """Cancel a task you no longer need; running subtasks are stopped on their
        nodes. Returns the task's status."""
        return await run(swarm.task, task, "cancel")

    @server.tool()
    async def explain_task(task: str) -> dict[str, Any]:
        """Why each subtask of a task went to the node it went to (or is not placed):
        every candidate peer, feasible or why not, expected wait, run time, cost and
        score. Use it when a task sits queued or lands somewhere unexpected."""
        return await run(swarm.task, task, "explain")


def _swarm_tools(server: Any, swarm: SwarmTools, run: Run) -> None:
    @server.tool()
    async def list_peers() -> dict[str, Any]:
        """The machines of the swarm: {"peers": [{name, id, state (alive, suspect, sleeping,
        dead), address, cpu, memory, gpus (name, vram_total, vram_free), models (name,
        capabilities, latency_ms, …), draining, rtt_ms, ...}]}. Call it before
        delegating, to learn which capabilities, model profiles and GPUs exist."""
        return {"peers": await run(swarm.peers)}

    @server.tool()
    async def wait_task(task: str, timeout_s: float = 60) -> dict[str, Any]:
        """Wait until a task ends (done, failed or cancelled) or `timeout_s` seconds
        pass (at most 3600), told by the node when it changes; returns the status plus
        "timed_out": true/false. Use it after a submit instead of polling get_task
        yourself; if it timed out, the task is still running — call it again, or do
        other work meanwhile."""
        deadline = time.monotonic() + max(0.0, min(float(timeout_s), MAX_WAIT_S))
        seen = 0
        while True:  # the daemon answers each watch when the task changes: no polling
            left = max(0.0, deadline - time.monotonic())
            row = await run(swarm.watch, task, seen, min(left, WATCH_S))
            seen = row["version"]
            final = row.get("state") in FINAL_STATES
            if final or time.monotonic() >= deadline:
                status: dict[str, Any] = await run(swarm.task, task, "status")
                return {**status, "timed_out": status.get("state") not in FINAL_STATES}


def serve(
    state_dir: Path, node: str | None = None, timeout_s: float = 3.0, root: Path | None = None
) -> None:
    """Serve MCP on stdin/stdout until the client closes stdin."""
    build_server(state_dir, node, timeout_s, root).run("stdio")


__all__ = ["INSTRUCTIONS", "SwarmTools", "ToolError", "build_server", "default_root", "serve"]
