"""`swarmctl mcp` driven by the MCP SDK's own client over stdio, against real daemons."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.harness import ROOT, Daemon, free_port, new_secret, wait_until

TOOLS = {
    "submit_prompt",
    "submit_command",
    "submit_job",
    "list_tasks",
    "get_task",
    "get_result",
    "cancel_task",
    "explain_task",
    "list_peers",
    "wait_task",
}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Daemon]]:
    secret = new_secret()
    nodes = [Daemon(tmp_path, "n1", secret=secret), Daemon(tmp_path, "n2", secret=secret)]
    for d in nodes:
        d.start()
    try:
        for d in nodes:
            d.wait_ready()
        everyone = {"n1": "alive", "n2": "alive"}
        wait_until(lambda: all(d.states() == everyone for d in nodes), 15, what="cluster")
        yield nodes
    finally:
        for d in nodes:
            d.stop()


def server_params(
    state_dir: Path, *extra: str, mcp: tuple[str, ...] = (), cwd: Path = ROOT
) -> StdioServerParameters:
    """``swarmctl [--state-dir ... EXTRA] mcp [MCP]``, started in ``cwd``."""
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "swarmctl", "--state-dir", str(state_dir), *extra, "mcp", *mcp],
        env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1"),
        cwd=str(cwd),
    )


def is_error(result: Any) -> bool:
    # mcp 2.x names it is_error, 1.x isError
    return bool(getattr(result, "is_error", getattr(result, "isError", False)))


def text(result: Any) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", None) == "text")


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool call that must succeed; its JSON result."""
    result = await session.call_tool(tool, arguments)
    assert not is_error(result), f"{tool}: {text(result)}"
    body: dict[str, Any] = json.loads(text(result))
    return body


async def call_error(session: ClientSession, tool: str, **arguments: Any) -> str:
    """A tool call that must fail; its error text."""
    result = await session.call_tool(tool, arguments)
    assert is_error(result), f"{tool} should have failed: {text(result)}"
    return text(result)


def test_mcp_tools_over_stdio(cluster: list[Daemon], tmp_path: Path) -> None:
    n1 = cluster[0]
    work = tmp_path / "work"
    work.mkdir()
    (work / "words.txt").write_text("alpha\nbeta\n")

    async def scenario() -> None:
        async with (
            stdio_client(server_params(n1.state_dir, mcp=("--root", str(tmp_path)))) as (
                read,
                write,
            ),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            listed = await session.list_tools()
            assert {t.name for t in listed.tools} == TOOLS
            assert all(t.description for t in listed.tools)

            peers = (await call(session, "list_peers"))["peers"]
            assert {p["name"]: p["state"] for p in peers} == {"n1": "alive", "n2": "alive"}
            assert sum(p["state"] == "alive" for p in peers) == 2

            task = (await call(session, "submit_command", argv=["echo", "hello"]))["task"]
            assert task
            final = await call(session, "wait_task", task=task, timeout_s=60)
            assert final["timed_out"] is False
            assert final["state"] == "done", final
            status = await call(session, "get_task", task=task)
            assert status["id"] == task and status["state"] == "done"
            assert status["subtasks"][0]["peer"] in {"n1", "n2"}
            result = await call(session, "get_result", task=task)
            assert result["subtasks"]["main"]["stdout"] == "hello\n"
            assert result["subtasks"]["main"]["exit_code"] == 0
            listed_tasks = (await call(session, "list_tasks"))["tasks"]
            assert task in {t["id"] for t in listed_tasks}

            # a DAG with a shipped input file and templating, given as a JSON object
            job = {
                "name": "count-words",
                "subtasks": [
                    {
                        "id": "count",
                        "kind": "shell",
                        "run": ["wc", "-l", "words.txt"],
                        "inputs": ["words.txt"],
                    },
                    {
                        "id": "say",
                        "kind": "shell",
                        "run": ["echo", "lines: {{ count.stdout }}"],
                        "after": ["count"],
                    },
                ],
            }
            dag = (await call(session, "submit_job", job=job, workdir=str(work)))["task"]
            assert (await call(session, "wait_task", task=dag))["state"] == "done"
            out = (await call(session, "get_result", task=dag))["subtasks"]
            assert out["say"]["stdout"] == "lines: 2 words.txt\n"

            # an invalid job: the error names the subtasks of the cycle
            cycle = {
                "name": "loop",
                "subtasks": [
                    {"id": "a", "kind": "shell", "run": ["true"], "after": ["b"]},
                    {"id": "b", "kind": "shell", "run": ["true"], "after": ["a"]},
                ],
            }
            message = await call_error(session, "submit_job", job=cycle)
            assert "cycle" in message and 'subtask "a"' in message, message

            # refused by the daemon against the live cluster: nobody offers it
            message = await call_error(
                session, "submit_prompt", prompt="Design it", capability="architecture"
            )
            assert 'subtask "main"' in message and "architecture" in message, message

            # cancel a long command, and an unknown task is an error, not a crash
            slow = (await call(session, "submit_command", argv=["sleep", "60"]))["task"]
            await call(session, "cancel_task", task=slow)
            assert (await call(session, "wait_task", task=slow))["state"] == "cancelled"
            message = await call_error(session, "get_task", task="nosuchtask")
            assert "unknown task" in message
            assert (await call(session, "get_task", task=task))["state"] == "done"

    asyncio.run(scenario())


def test_mcp_unreachable_daemon_is_a_tool_error(tmp_path: Path) -> None:
    nobody = tmp_path / "nobody"
    nobody.mkdir()

    async def scenario() -> None:
        async with (
            stdio_client(server_params(nobody)) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            assert {t.name for t in (await session.list_tools()).tools} == TOOLS
            message = await call_error(session, "list_peers")
            assert "swarmd not reachable" in message and "control socket" in message, message
            message = await call_error(session, "submit_command", argv=["true"])
            assert "swarmd not reachable" in message
            # a job as JSON text too deeply nested to parse: refused before any daemon call
            message = await call_error(session, "submit_job", job="[" * 100_000)
            assert message.endswith("job: not valid JSON: nested too deeply"), message
            # the server is still serving
            message = await call_error(session, "wait_task", task="x", timeout_s=1)
            assert "swarmd not reachable" in message
            assert {t.name for t in (await session.list_tools()).tools} == TOOLS

        # --node with no member listening there: no answer within --timeout
        member = tmp_path / "member"
        member.mkdir()
        (member / "cluster.secret").write_text(new_secret() + "\n")
        os.chmod(member / "cluster.secret", 0o600)
        address = f"127.0.0.1:{free_port()}"
        params = server_params(member, "--node", address, "--timeout", "0.5")
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            message = await call_error(session, "get_result", task="x")
            assert f"no answer from {address} within 0.5 s" in message, message
            message = await call_error(session, "list_tasks")
            assert "swarmd not reachable" in message

    asyncio.run(scenario())


def test_mcp_reads_inputs_only_from_inside_its_root(tmp_path: Path) -> None:
    """submit_job's workdir and inputs stay inside `--root` (the start directory by
    default; nothing when that is /). Refused before any daemon is asked: none runs."""
    nobody = tmp_path / "nobody"
    nobody.mkdir()
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "notes.txt").write_text("fine\n")
    (project / "sub" / "key").symlink_to(tmp_path / "nobody")
    job = {"subtasks": [{"id": "a", "kind": "shell", "run": ["true"], "inputs": ["."]}]}
    hosts = {**job, "subtasks": [{**job["subtasks"][0], "inputs": ["etc/hosts"]}]}
    notes = {**job, "subtasks": [{**job["subtasks"][0], "inputs": ["notes.txt"]}]}

    async def scenario() -> None:
        async with (
            stdio_client(server_params(nobody, mcp=("--root", str(project)))) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            for workdir in ("/", "..", str(tmp_path), "sub/key"):
                message = await call_error(session, "submit_job", job=hosts, workdir=workdir)
                assert f"workdir {workdir!r} is outside this server's root" in message, message
            message = await call_error(session, "submit_job", job=job)
            assert '"sub/key" is a symbolic link to' in message, message
            # inside the root, by default and by a relative workdir: read, then the
            # missing daemon is what fails
            message = await call_error(session, "submit_job", job=notes)
            assert "swarmd not reachable" in message, message
            message = await call_error(session, "submit_job", job=hosts, workdir="sub")
            assert '"etc/hosts" does not exist' in message, message
        # started in / without --root (as Claude Desktop starts servers): no files at all
        async with (
            stdio_client(server_params(nobody, cwd=Path("/"))) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            message = await call_error(session, "submit_job", job=hosts, workdir="/")
            assert "swarmctl mcp --root DIR" in message, message
            message = await call_error(session, "submit_job", job=hosts)
            assert "swarmctl mcp --root DIR" in message, message

    asyncio.run(scenario())
