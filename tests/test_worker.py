"""The worker in a real daemon: it enforces its own policy on every dispatch, and the
single-command submit relays the command's output and exit code (as ssh does)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import zmq

from protocol import codec
from protocol.messages import Bundle, Dispatch, DispatchReply, NodeRef
from swarmctl.client import Client
from swarmd.core.worker import SHELL_DISABLED
from swarmd.identity import ClusterKeys
from tests.harness import Daemon, free_port, member_socket, new_secret, swarmctl, wait_until

PYTHON_CALL = {"id": "p", "kind": "python", "call": "os:system", "args": ["touch /tmp/pwned"]}
BIG_GPU_JOB = {"id": "p", "kind": "shell", "run": ["true"], "min_vram": 80 << 30}


@pytest.mark.parametrize(
    ("config", "spec", "reason"),
    [
        ("[node]\nallow_shell = false\n", PYTHON_CALL, SHELL_DISABLED),  # os:system: a shell
        ("", BIG_GPU_JOB, "min_vram 80 GiB: this node has 0 B of GPU memory on its largest GPU"),
    ],
    ids=["allow_shell", "min_vram"],
)
def test_a_worker_refuses_a_dispatch_its_policy_forbids(
    tmp_path: Path, daemons: list[Daemon], config: str, spec: dict[str, Any], reason: str
) -> None:
    """Whatever a coordinator believed, sent straight to the worker over CURVE."""
    secret = new_secret()
    keys = ClusterKeys.from_secret(bytes.fromhex(secret))
    d = Daemon(tmp_path, "w", secret=secret, args=("--no-mdns",), config=config)
    daemons.append(d)
    d.start().wait_ready()
    ctx = zmq.Context()
    # A stand-in coordinator: the worker answers on its own link to this address.
    inbox = ctx.socket(zmq.ROUTER)
    inbox.setsockopt(zmq.LINGER, 0)
    inbox.curve_server = True
    inbox.curve_secretkey, inbox.curve_publickey = keys.secret_z85, keys.public_z85
    port = free_port()
    inbox.bind(f"tcp://127.0.0.1:{port}")
    out = member_socket(ctx, d, secret, node_id="coordinator1")
    try:
        me = NodeRef("coordinator1", 1, 1, f"127.0.0.1:{port}")
        dispatch = Dispatch(
            task="t-1", subtask="p", attempt=1, coordinator=me, lease_s=5, spec=spec
        )
        # Sent again until answered: the worker's link to a new address takes a moment
        # to connect, and what it cannot send then is dropped (as a coordinator would).
        for _ in range(40):
            out.send(codec.encode(dispatch))
            if inbox.poll(250):
                break
        else:
            raise AssertionError("no answer from the worker")
        frame = inbox.recv_multipart()[-1]
        message = codec.decode(frame)
        replies = message.items if isinstance(message, Bundle) else [message]
        assert [(r.accepted, r.reason) for r in replies if isinstance(r, DispatchReply)] == [
            (False, reason)
        ]
        assert d.counters().get("worker_refused", 0) >= 1
        assert d.counters().get("worker_accepted", 0) == 0
    finally:
        out.close()
        inbox.close()
        ctx.term()


def test_submit_wait_of_one_command_relays_its_output_and_exit_code(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = Daemon(tmp_path, "n1", secret=new_secret(), args=("--no-mdns",))
    daemons.append(d)
    d.start().wait_ready()
    wait_until(lambda: d.states() == {"n1": "alive"}, 10, what="the node alive")
    script = "echo out-line; echo err-line >&2; exit 3"
    done = swarmctl("submit", "--wait", "--", "sh", "-c", script, state_dir=d.state_dir)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "out-line\n"
    assert "err-line" in done.stderr and "task " in done.stderr  # the id goes to stderr
    ok = swarmctl("submit", "--wait", "--", "true", state_dir=d.state_dir)
    assert (ok.returncode, ok.stdout) == (0, "")
    # One watch answered at the end, with the result: a wait in one round trip.
    echo = swarmctl("submit", "--", "echo", "pushed", state_dir=d.state_dir).stdout.strip()
    client = Client(d.state_dir)
    try:
        row = client.watch(echo, 0, 10.0, final_only=True, with_result=True)
    finally:
        client.close()
    assert row["state"] == "done" and row["version"] > 0
    assert [s["stdout"] for s in row["result"]["subtasks"].values()] == ["pushed\n"]
    # status --wait: pushed progress until the end, then the status and its exit code.
    task = swarmctl("submit", "--", "sleep", "0.3", state_dir=d.state_dir).stdout.strip()
    waited = swarmctl("status", "--wait", task, state_dir=d.state_dir)
    assert waited.returncode == 0, waited.stderr
    assert f"task {task}" in waited.stdout and "done" in waited.stdout


def test_logs_follow_a_running_command_live_and_then_print_it_whole(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    secret = new_secret()
    coord = Daemon(tmp_path, "c", secret=secret, config="[node]\nallow_shell = false\n")
    worker = Daemon(tmp_path, "w", secret=secret)
    daemons += [coord, worker]
    for d in daemons:
        d.start()
    for d in daemons:
        d.wait_ready()
    wait_until(lambda: coord.states() == {"c": "alive", "w": "alive"}, 15, what="two nodes")
    script = "for i in 1 2 3 4 5 6; do echo line$i; sleep 0.4; done; echo bye >&2"
    task = swarmctl("submit", "--", "sh", "-c", script, state_dir=coord.state_dir).stdout.strip()
    cmd = [sys.executable, "-m", "swarmctl", "--state-dir", str(coord.state_dir)]
    follow = subprocess.Popen(
        [*cmd, "logs", "-f", task], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert follow.stdout is not None
        first = follow.stdout.readline()  # arrives while the command still runs
        state = json.loads(swarmctl("--json", "status", task, state_dir=coord.state_dir).stdout)
        assert first == "line1\n" and state["state"] == "running", state
        # Not communicate(): it reads the pipes' file descriptors, past what
        # readline() already buffered (a line that came with the first was lost).
        rest = follow.stdout.read()
        assert follow.stderr is not None
        err = follow.stderr.read()
        follow.wait(timeout=30)
    finally:
        follow.kill()
    assert follow.returncode == 0, err
    assert first + rest == "".join(f"line{i}\n" for i in range(1, 7)), err
    assert err == "bye\n"
    # Once it ended, logs (no -f) print it whole, from the committed result.
    done = swarmctl("logs", task, state_dir=coord.state_dir)
    assert (done.stdout, done.stderr) == (first + rest, "bye\n")
    bad = swarmctl("logs", task, "nope", state_dir=coord.state_dir)
    assert bad.returncode == 2 and "has no subtask 'nope'" in bad.stderr
