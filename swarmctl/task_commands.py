"""swarmctl's task commands: submit, status, logs, result, tasks, cancel, explain.

They register on :data:`swarmctl.cli.main` (imported there at the end).
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from protocol.messages import (
    ArtifactReply,
    ArtifactRequest,
    LogsReply,
    LogsRequest,
    SubmitReply,
    SubmitRequest,
    TaskReply,
    TaskRequest,
    TasksReply,
    TasksRequest,
)
from swarmd.artifact_names import check_artifact_names
from swarmd.core.jobspec import (
    JobError,
    JobSpec,
    job_format,
    job_to_data,
    load_job_text,
    single_command_job,
    single_prompt_job,
)

from .cli import EXIT_FAILED, EXIT_USAGE, Ctx, main
from .client import Client
from .inputs import collect_inputs


def _build_job(
    job_file: Path | None, prompt: str | None, command: tuple[str, ...], options: dict[str, Any]
) -> JobSpec:
    given = sum(x is not None and x != () for x in (job_file, prompt, command or None))
    if given != 1:
        raise click.UsageError("give exactly one of -f JOBFILE, --prompt TEXT or -- CMD [ARG]...")
    if job_file is not None:
        try:
            text = job_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise JobError(f"cannot read {job_file}: {exc}") from None
        return load_job_text(text, job_format(job_file.name), str(job_file))
    opts = {k: v for k, v in options.items() if v is not None}
    if prompt is not None:
        if "engine" in opts:
            raise JobError("--engine runs a command (-- CMD [ARG]...), not a prompt")
        capability = opts.pop("capability", None)
        return single_prompt_job(prompt, capability, **opts)
    return single_command_job(list(command), **opts)


@main.command(context_settings={"ignore_unknown_options": False})
@click.option("-f", "job_file", type=click.Path(path_type=Path, dir_okay=False), help="job file")
@click.option("--prompt", help="one LLM subtask with this prompt")
@click.option("--wait", is_flag=True, help="show progress and wait for the end")
@click.option("--name")
@click.option("--priority", type=click.Choice(["critical", "high", "normal", "low"]))
@click.option("--deadline", help="e.g. 10m")
@click.option(
    "--deadline-best-effort",
    is_flag=True,
    help="run it even if the deadline cannot be met (else refused at submit, exit 2)",
)
@click.option("--capability")
@click.option("--min-vram", help="e.g. 16GiB")
@click.option("--timeout", "subtask_timeout", help="per subtask, e.g. 2m")
@click.option("--engine", help="run the command as a job of this [engines.NAME] (Slurm, Ray)")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def submit(
    obj: Ctx,
    job_file: Path | None,
    prompt: str | None,
    wait: bool,
    name: str | None,
    priority: str | None,
    deadline: str | None,
    deadline_best_effort: bool,
    capability: str | None,
    min_vram: str | None,
    subtask_timeout: str | None,
    engine: str | None,
    command: tuple[str, ...],
) -> None:
    """Submit a task: -f JOBFILE, --prompt TEXT --capability CAP, or -- CMD [ARG]..."""
    options = {
        "name": name,
        "priority": priority,
        "deadline": deadline,
        "capability": capability,
        "min_vram": min_vram,
        "timeout": subtask_timeout,
        "engine": engine,
    }
    try:
        job = _build_job(job_file, prompt, command, options)
        if deadline_best_effort:
            if job.deadline_s is None:
                raise JobError("--deadline-best-effort needs a deadline (--deadline or the job's)")
            job = replace(job, deadline_best_effort=True)
        files = collect_inputs(job, Path.cwd())
    except JobError as exc:
        obj.fail(EXIT_USAGE, str(exc))
    reply = obj.call(SubmitRequest(job=job_to_data(job), files=files))
    assert isinstance(reply, SubmitReply)
    if not wait:
        if obj.as_json:
            obj.emit_json({"task": reply.task})
        else:
            click.echo(reply.task)
        return
    relay = bool(command) and not obj.as_json  # as `ssh host CMD`: its output, its exit
    if relay:
        click.echo(f"task {reply.task}", err=True)
    status = _wait(obj, reply.task, quiet=relay)
    if obj.as_json:
        obj.emit_json(status)
    elif relay:
        sys.exit(_relay_command(obj, reply.task))
    else:
        _print_status(status)
    sys.exit(0 if status["state"] == "done" else EXIT_FAILED)


def _relay_command(obj: Ctx, task: str) -> int:
    """Write the single command's stdout and stderr; its exit code (1 if it had none)."""
    body = _task(obj, task, "result").body
    for sub in body.get("subtasks", {}).values():
        sys.stdout.write(sub.get("stdout") or "")
        sys.stdout.flush()
        sys.stderr.write(sub.get("stderr") or "")
        code = sub.get("exit_code")
        if isinstance(code, int):
            return code
        reason = sub.get("error") or body.get("state")
        click.echo(f"swarmctl: the command did not run to its end: {reason}", err=True)
    return EXIT_FAILED


def _wait(obj: Ctx, task: str, quiet: bool = False) -> dict[str, Any]:
    """Show the task's progress as the daemon pushes it; its full status at the end."""
    quiet = quiet or obj.as_json
    tty = sys.stderr.isatty() and not quiet
    last = ""
    seen = 0
    while True:
        row = obj.watch(task, seen)
        seen = row["version"]
        line = _summary_line(row)
        if tty:
            click.echo("\r\x1b[K" + line, nl=False, err=True)
        elif line != last and not quiet:
            click.echo(line, err=True)
        last = line
        if row["state"] in ("done", "failed", "cancelled"):
            if tty:
                click.echo("", err=True)
            return _task(obj, task, "status").body


def _summary_line(row: dict[str, Any]) -> str:
    return (
        f"{row['id']} {row['state']}: {row['done']}/{row['subtasks']} done, "
        f"{row.get('running', 0)} running, {row.get('queued', 0)} queued, {row['failed']} failed"
    )


def _print_succession(body: dict[str, Any]) -> None:
    """Who coordinated the task (a successor adopts it when its coordinator dies), and
    where its replica is."""
    history = body.get("coordinators") or []
    if history:
        chain = " -> ".join(f"{c.get('name')} (epoch {c.get('epoch')})" for c in history)
        click.echo(f"  coordinators: {chain}")
    replica = body.get("replica")
    if isinstance(replica, dict):
        if replica.get("node") is None:
            click.echo(f"  replica: none ({replica.get('note')})")
        else:
            acked = "" if replica.get("acknowledged") else ", not acknowledged yet"
            click.echo(f"  replica: on {replica['node']}{acked}")


def _deadline_line(status: dict[str, Any]) -> str | None:
    """The task's deadline and its outlook, in words (None without a deadline)."""
    deadline = status.get("deadline")
    if not isinstance(deadline, dict) or not isinstance(deadline.get("at"), int | float):
        return None
    at = float(deadline["at"])
    when = time.strftime("%H:%M:%S", time.localtime(at))
    finish = deadline.get("estimated_finish")
    if status.get("state") in ("done", "failed", "cancelled"):
        met = "met" if deadline.get("reachable") else "missed"
        return f"  deadline: {when}, {met}"
    if deadline.get("reachable") is False:
        late = f"{float(finish) - at:.0f} s late" if isinstance(finish, int | float) else "no peer"
        return f"  deadline: {when}, UNREACHABLE: estimated finish {late}"
    if deadline.get("reachable") is None:
        return f"  deadline: {when} (not estimated yet)"
    left = f"{at - float(finish):.0f} s to spare" if isinstance(finish, int | float) else ""
    return f"  deadline: {when}, reachable ({left})"


def _print_status(status: dict[str, Any]) -> None:
    click.echo(f"task {status['id']} ({status.get('name')}): {status['state']}")
    line = _deadline_line(status)
    if line is not None:
        click.echo(line)
    _print_succession(status)
    for sub in status.get("subtasks", []):
        extra = f" exit {sub['exit_code']}" if sub.get("exit_code") is not None else ""
        error = f"  error: {sub['error']}" if sub.get("error") else ""
        if sub.get("engine_note"):  # e.g. queued on hpc (job 1234, reason Resources)
            extra += f"  {sub['engine_note']}"
        click.echo(
            f"  {sub['id']:16} {sub['state']:10} peer={sub.get('peer') or '-'} "
            f"attempts={sub.get('attempts', 0)}{extra}{error}"
        )


def _task(obj: Ctx, task: str, what: str, artifacts: bool = False) -> TaskReply:
    reply = obj.call(TaskRequest(task=task, what=what, artifacts=artifacts))  # type: ignore[arg-type]
    assert isinstance(reply, TaskReply)
    return reply


@main.command()
@click.option("-f", "--follow", is_flag=True, help="print new output until the subtask ends")
@click.argument("task")
@click.argument("subtask", required=False)
@click.pass_obj
def logs(obj: Ctx, follow: bool, task: str, subtask: str | None) -> None:
    """A shell subtask's stdout and stderr (SUBTASK may be left out for a task of
    one); -f follows them live, as the coordinator hears them, until it ends."""
    at = [0, 0]
    collected = [bytearray(), bytearray()]
    while True:
        request = LogsRequest(
            task=task, subtask=subtask or "", out_at=at[0], err_at=at[1], follow=follow
        )
        reply = obj.call(request, request.timeout_s + obj.timeout)
        assert isinstance(reply, LogsReply)
        for i, (start, data) in enumerate(((reply.out_at, reply.out), (reply.err_at, reply.err))):
            if start > at[i]:
                click.echo(f"[swarmd: {start - at[i]} bytes of output were dropped]", err=True)
            at[i] = start + len(data)
            collected[i] += data
            if not obj.as_json and data:
                stream = sys.stdout if i == 0 else sys.stderr
                stream.buffer.write(data)
                stream.flush()
        if reply.final or not follow:
            break
    if obj.as_json:
        text = [bytes(c).decode("utf-8", errors="replace") for c in collected]
        obj.emit_json(
            {"subtask": reply.subtask, "state": reply.state, "stdout": text[0], "stderr": text[1]}
        )


@main.command()
@click.argument("task")
@click.option("--wait", is_flag=True, help="show progress until the task ends")
@click.pass_obj
def status(obj: Ctx, task: str, wait: bool) -> None:
    """State of a task and of each of its subtasks."""
    body = _wait(obj, task) if wait else _task(obj, task, "status").body
    obj.emit_json(body) if obj.as_json else _print_status(body)
    if wait:
        sys.exit(0 if body["state"] == "done" else EXIT_FAILED)


@main.command()
@click.argument("task")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="write artifacts")
@click.pass_obj
def result(obj: Ctx, task: str, out: Path | None) -> None:
    """Outputs of a task's subtasks (stdout, LLM text, artifacts)."""
    reply = _task(obj, task, "result")
    if out is not None:
        subtasks = reply.body.get("subtasks", {})
        for sid, sub in subtasks.items():  # every name checked before anything is written
            bad = check_artifact_names([sid]) or check_artifact_names(sub.get("artifacts") or [])
            if bad is not None or "/" in sid:
                obj.fail(EXIT_FAILED, f"refusing to write {sid}: {bad or 'bad subtask id'}")
        with obj.client() as client, obj._failures():
            for sid, sub in subtasks.items():
                if sub.get("artifacts"):
                    _fetch_artifacts(obj, client, task, sid, out)
    if obj.as_json:
        obj.emit_json(reply.body)
        return
    click.echo(f"task {reply.body['id']}: {reply.body['state']}")
    for sid, sub in reply.body.get("subtasks", {}).items():
        click.echo(f"--- {sid} ({sub.get('state')}, peer {sub.get('peer') or '-'})")
        text = sub.get("output") if sub.get("output") is not None else sub.get("stdout")
        if text:
            click.echo(text.rstrip("\n"))
        if sub.get("stderr"):
            click.echo(sub["stderr"].rstrip("\n"), err=True)


def _fetch_artifacts(obj: Ctx, client: Client, task: str, subtask: str, out: Path) -> None:
    """Write a subtask's artifacts under OUT/SUBTASK, streamed a piece (≤ 1 MiB) per
    request, each artifact checked against its sha256 when complete."""
    root = out.resolve()
    index = offset = 0
    digest = hashlib.sha256()
    while True:
        request = ArtifactRequest(task=task, subtask=subtask, index=index, offset=offset)
        reply = client.request(request)
        assert isinstance(reply, ArtifactReply)
        for piece in reply.pieces:
            target = (out / subtask / piece.name).resolve()
            if not target.is_relative_to(root / subtask) or target == root / subtask:
                obj.fail(EXIT_FAILED, f"refusing artifact path {piece.name!r}")
            if piece.offset == 0:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b"")
                digest = hashlib.sha256()
            with open(target, "r+b") as f:
                f.seek(piece.offset)
                f.write(piece.data)
            digest.update(piece.data)
            if piece.offset + len(piece.data) >= piece.size and digest.digest() != piece.sha256:
                obj.fail(EXIT_FAILED, f"artifact {subtask}/{piece.name} failed its sha256 check")
        if reply.done or not reply.pieces:
            return
        index, offset = reply.index, reply.offset


@main.command()
@click.option("--all", "everywhere", is_flag=True, help="every live node's tasks")
@click.pass_obj
def tasks(obj: Ctx, everywhere: bool) -> None:
    """The tasks this node coordinates; --all: the whole cluster's, each with the node
    that coordinates it (nodes that did not answer are named on stderr)."""
    reply = obj.call(TasksRequest(cluster=everywhere))
    assert isinstance(reply, TasksReply)
    for why in reply.missing:
        click.echo(f"swarmctl: not listed: {why}", err=True)
    if reply.truncated:
        click.echo(f"swarmctl: {reply.truncated} older task(s) left out (too many)", err=True)
    if obj.as_json:
        obj.emit_json(reply.tasks)
        return
    columns = ("id", "name", "state", "priority", *(("coordinator",) if everywhere else ()))
    for t in reply.tasks:
        click.echo("  ".join(str(t.get(k, "")) for k in columns))


@main.command()
@click.argument("task")
@click.pass_obj
def cancel(obj: Ctx, task: str) -> None:
    """Cancel a task; running attempts are stopped on their peers."""
    body = _task(obj, task, "cancel").body
    obj.emit_json(body) if obj.as_json else _print_status(body)


def _grouped(task: str, subtask: str, g: dict[str, Any]) -> str:
    """One line on a subtask placed with a group of small llm subtasks."""
    size = g.get("size", 1)
    where = f"on {g.get('peer')} ({g.get('model')})"
    lead = g.get("lead")
    if g.get("task") == task and lead == subtask:
        return f"grouped: priced for a group of {size} small llm subtasks {where}"
    if g.get("task") != task:
        lead = f"{g.get('task')}/{lead}"
    return f"grouped: joined {lead}'s group of {size} {where}, not priced alone"


@main.command()
@click.argument("task")
@click.pass_obj
def explain(obj: Ctx, task: str) -> None:
    """Why each subtask went where it went: every peer, feasible or why not, scores."""
    body = _task(obj, task, "explain").body
    if obj.as_json:
        obj.emit_json(body)
        return
    click.echo(f"task {body.get('id')} ({body.get('name')}): {body.get('state')}")
    _print_succession(body)
    for sub in body.get("subtasks", []):
        click.echo(f"\n{sub['id']} ({sub.get('state')}): priced {sub.get('priced', 0)} time(s)")
        if sub.get("reason"):
            click.echo(f"  {sub['reason']}")
        if sub.get("grouped"):
            click.echo(f"  {_grouped(str(body.get('id')), sub['id'], sub['grouped'])}")
        rows = [["", "PEER", "FEASIBLE", "WAIT", "RTT", "RUN", "COST", "SCORE", "WHY NOT / BASIS"]]
        for c in sub.get("candidates", []):
            num = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            rows.append(
                [
                    "*" if c.get("chosen") else "",
                    c.get("peer") or c.get("node_id", "?")[:8],
                    "yes" if c.get("feasible") else "no",
                    num(c.get("wait_s")),
                    num(c.get("rtt_s")),
                    num(c.get("run_s")),
                    num(c.get("cost")),
                    num(c.get("score")),
                    c.get("why_not") or c.get("basis") or "",
                ]
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            click.echo(
                "  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
            )
