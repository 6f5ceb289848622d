"""The worker in a real daemon: it enforces its own policy on every dispatch, and the
single-command submit relays the command's output and exit code (as ssh does)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from protocol import codec
from protocol.messages import Bundle, Dispatch, DispatchReply, NodeRef
from swarmd.core.worker import SHELL_DISABLED
from swarmd.identity import ClusterKeys
from swarmd.transport import curve_client
from tests.harness import Daemon, free_port, new_secret, swarmctl, wait_until


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


def test_a_worker_without_allow_shell_refuses_a_dispatched_python_call(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Whatever a coordinator believed: the worker itself refuses (`os:system` is a shell)."""
    secret = new_secret()
    keys = ClusterKeys.from_secret(bytes.fromhex(secret))
    d = Daemon(
        tmp_path, "w", secret=secret, args=("--no-mdns",), config="[node]\nallow_shell = false\n"
    )
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
    out = ctx.socket(zmq.DEALER)
    out.setsockopt(zmq.LINGER, 0)
    curve_client(out, keys)
    out.connect(f"tcp://{d.address}")
    try:
        me = NodeRef("coordinator1", 1, 1, f"127.0.0.1:{port}")
        spec = {"id": "p", "kind": "python", "call": "os:system", "args": ["touch /tmp/pwned"]}
        out.send(
            codec.encode(
                Dispatch(task="t-1", subtask="p", attempt=1, coordinator=me, lease_s=5, spec=spec)
            )
        )
        assert inbox.poll(10_000), "no answer from the worker"
        frame = inbox.recv_multipart()[-1]
        message = codec.decode(frame)
        replies = message.items if isinstance(message, Bundle) else [message]
        assert [(r.accepted, r.reason) for r in replies if isinstance(r, DispatchReply)] == [
            (False, SHELL_DISABLED)
        ]
        assert d.counters().get("worker_refused") == 1
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
    # status --wait: pushed progress until the end, then the status and its exit code.
    task = swarmctl("submit", "--", "sleep", "0.3", state_dir=d.state_dir).stdout.strip()
    waited = swarmctl("status", "--wait", task, state_dir=d.state_dir)
    assert waited.returncode == 0, waited.stderr
    assert f"task {task}" in waited.stdout and "done" in waited.stdout
