"""The owner-only control socket answers every bad request with an error, at once.

Node-to-node sockets drop and count bad frames (tests/test_security.py); on the local
socket the sender is swarmctl (or a script of the owner's), so it is told what was
wrong instead of waiting out its timeout and reporting "not answering".
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest
import zmq

from protocol import codec
from protocol.messages import (
    PROTOCOL_VERSION,
    Dispatch,
    ErrorReply,
    NodeRef,
    PeersReply,
    PeersRequest,
    Syn,
)
from tests.harness import Daemon, swarmctl

ANSWER_WITHIN_MS = 3000
MIB = 1 << 20
REF = NodeRef("x", 1, 1, "1.2.3.4:5")
DISPATCH = Dispatch(
    task="t-1",
    subtask="a",
    attempt=1,
    coordinator=REF,
    lease_s=10.0,
    spec={"kind": "shell", "run": ["true"]},
)

# (what is sent, what the error message must say)
BAD_REQUESTS: dict[str, tuple[list[bytes], str]] = {
    "not msgpack": ([b"\xc1\xc1 not msgpack"], "bad request (malformed)"),
    "not a map": ([b"\x92\x01\x02"], "bad request (malformed): expected a map"),
    "unknown type": (
        [msgspec.msgpack.encode({"t": "format_disk", "v": PROTOCOL_VERSION})],
        "bad request (unknown_type): message type 'format_disk'",
    ),
    "other version": (
        [msgspec.msgpack.encode({"t": "peers", "v": 99})],
        "bad request (version): protocol version 99",
    ),
    "fails validation": (
        [
            msgspec.msgpack.encode(
                {"t": "task", "v": PROTOCOL_VERSION, "task": "no spaces!", "what": "status"}
            )
        ],
        "bad request (invalid): task:",
    ),
    "two frames": ([b"a", b"b"], "expected one frame, got 2"),
    "gossip": ([codec.encode(Syn(sender=REF, seq=1, digest=[]))], "Syn is not a control request"),
    "work": ([codec.encode(DISPATCH)], "Dispatch is not a control request"),
    "oversized": (
        [b"\x00" * (codec.MAX_FRAME_BYTES + 1)],
        f"request too large: {codec.MAX_FRAME_BYTES + 1} bytes, over the limit of 16 MiB",
    ),
}


@pytest.fixture
def node(tmp_path: Path, daemons: list[Daemon]) -> Daemon:
    d = Daemon(tmp_path, "ctl", args=("--no-mdns",))
    daemons.append(d)
    return d.start().wait_ready()


def test_every_bad_control_request_gets_an_error_reply(node: Daemon) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    try:
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"ipc://{node.state_dir / 'control.sock'}")
        for name, (frames, says) in BAD_REQUESTS.items():
            sent = time.monotonic()
            s.send_multipart(frames)
            assert s.poll(ANSWER_WITHIN_MS), f"{name}: no answer within {ANSWER_WITHIN_MS} ms"
            reply = codec.decode(s.recv())
            print(f"{name}: answered in {(time.monotonic() - sent) * 1000:.1f} ms")
            assert isinstance(reply, ErrorReply), f"{name}: {reply!r}"
            assert reply.code == "bad_request"
            assert says in reply.message, f"{name}: {reply.message!r}"
        # The same connection still works, and the node still counts what it refused.
        s.send(codec.encode(PeersRequest()))
        assert s.poll(ANSWER_WITHIN_MS)
        assert isinstance(codec.decode(s.recv()), PeersReply)
    finally:
        s.close()
        ctx.term()
    counters = node.counters()
    for counter in (
        "dropped_malformed",
        "dropped_unknown_type",
        "dropped_version",
        "dropped_invalid",
        "dropped_frames",
        "dropped_oversized",
        "dropped_gossip_on_control",
        "dropped_work_on_control",
    ):
        assert counters.get(counter, 0) >= 1, counter
    assert node.states() == {"ctl": "alive"}


def test_swarmctl_prints_the_refusal_and_exits_2_at_once(node: Daemon, tmp_path: Path) -> None:
    # A task id the daemon's schema refuses: it used to be dropped without a word.
    started = time.monotonic()
    out = swarmctl("--timeout", "20", "status", "no spaces!", state_dir=node.state_dir)
    took = time.monotonic() - started
    print(f"refused in {took:.2f} s")
    assert out.returncode == 2, out
    assert "bad request (invalid)" in out.stderr and "$.task" in out.stderr, out.stderr
    assert took < 10, f"took {took:.1f} s: waited for the timeout?"

    # Asking a member over CURVE, whose socket drops bad frames: refused before sending.
    out = swarmctl("--node", node.address, "status", "no spaces!", state_dir=node.state_dir)
    assert out.returncode == 2 and "bad request (invalid)" in out.stderr, out

    # A request over the frame limit is refused before it is sent, naming the limit.
    job = tmp_path / "big.toml"
    job.write_text(f'[[subtask]]\nid = "a"\nkind = "shell"\nrun = ["echo", "{"x" * 17 * MIB}"]\n')
    started = time.monotonic()
    out = swarmctl("--timeout", "20", "submit", "-f", str(job), state_dir=node.state_dir)
    took = time.monotonic() - started
    assert out.returncode == 2, out
    assert "request too large" in out.stderr and "16 MiB" in out.stderr, out.stderr
    assert took < 10, f"took {took:.1f} s"
