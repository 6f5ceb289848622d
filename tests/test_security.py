"""Members only, and bad input of every kind is dropped and counted, never a crash."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
from pathlib import Path

import msgspec
import pytest
import zmq

from protocol import codec
from protocol.messages import PROTOCOL_VERSION, Dispatch, NodeRef, PeersRequest, Syn
from swarmctl.inputs import collect_inputs
from swarmd.core.jobspec import JobError, load_job_text
from swarmd.identity import ClusterKeys
from tests.harness import Daemon, member_socket, new_secret, swarmctl, wait_until


def test_another_cluster_never_appears_and_cannot_call_members(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    secret = new_secret()
    n1 = Daemon(tmp_path, "n1", secret=secret)
    n2 = Daemon(tmp_path, "n2", secret=secret)
    # Same LAN (loopback mDNS), another cluster, and it even dials n1 directly.
    foreign = Daemon(tmp_path, "foreign", secret=new_secret(), args=("--join", "127.0.0.1:1"))
    foreign.args = ("--join", n1.address, "--join", n2.address)
    daemons += [n1, n2, foreign]
    for d in daemons:
        d.start()
    for d in daemons:
        d.wait_ready()
    wait_until(lambda: n1.states() == {"n1": "alive", "n2": "alive"}, 10, what="n1+n2")

    # The foreign node keeps trying; every attempt fails the CURVE handshake (it encrypts
    # for its own cluster's server key), and n1 saw its mDNS record and ignored it.
    def refused() -> bool:
        c = n1.counters()
        return c.get("handshake_failed_protocol", 0) > 0 and c.get("mdns_foreign_cluster", 0) > 0

    wait_until(refused, 10, what="n1 to refuse the foreign node (ZAP) and see its mDNS record")
    for d in (n1, n2):
        assert "foreign" not in d.states()
    assert foreign.states() == {"foreign": "alive"}

    # The foreign node's secret cannot call a member: exit code 3.
    out = swarmctl("--node", n1.address, "peers", state_dir=foreign.state_dir)
    assert out.returncode == 3, out
    assert "n1" not in out.stdout
    # A member's secret can.
    out = swarmctl("--json", "--node", n1.address, "peers", state_dir=n2.state_dir)
    assert out.returncode == 0, out.stderr


def test_a_client_that_knows_the_server_key_but_not_the_secret_is_never_heard(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The DESIGN pitfall: a CURVE server without an enforced ZAP domain admits anyone.
    A key pair of one's own gets through the handshake (nodes have their own keys), but
    without a credential the cluster secret made, nothing it sends is read."""
    secret = new_secret()
    d = Daemon(tmp_path, "guarded", secret=secret, args=("--no-mdns",))
    daemons.append(d)
    d.start().wait_ready()
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    try:
        s.setsockopt(zmq.LINGER, 0)
        public, private = zmq.curve_keypair()
        s.curve_publickey, s.curve_secretkey = public, private
        s.curve_serverkey = ClusterKeys.from_secret(bytes.fromhex(secret)).public_z85
        s.setsockopt(zmq.ROUTING_ID, f"{d.node_id()} {'00' * 16} 0001".encode())
        s.connect(f"tcp://{d.address}")
        s.send(codec.encode(PeersRequest()))
        wait_until(lambda: d.counters().get("dropped_unauthenticated", 0) >= 1, 10, what="the drop")
        assert not s.poll(500), "a non-member got an answer"
    finally:
        s.close()
        ctx.term()


def test_garbage_oversized_and_malformed_input_is_dropped_and_counted(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    secret = new_secret()
    d = Daemon(tmp_path, "target", secret=secret, args=("--no-mdns",))
    daemons.append(d)
    d.start().wait_ready()

    # 1. Random bytes and a fake ZMTP greeting straight onto the TCP port.
    for payload in (
        os.urandom(4096),
        b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00CURVE" + os.urandom(64),
    ):
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as raw:
            raw.sendall(payload)
            raw.settimeout(5)
            try:
                while raw.recv(65536):
                    pass
            except (ConnectionResetError, TimeoutError):
                pass
    wait_until(lambda: d.counters().get("handshake_failed_protocol", 0) >= 1, 10, what="count")

    # 2. A member that misbehaves: every kind of bad frame.
    ctx = zmq.Context()
    try:
        s = member_socket(ctx, d, secret)
        bad_frames = {
            "dropped_malformed": [b"\xc1\xc1 not msgpack"],
            "dropped_unknown_type": [
                msgspec.msgpack.encode({"t": "format_disk", "v": PROTOCOL_VERSION})
            ],
            "dropped_version": [msgspec.msgpack.encode({"t": "syn", "v": 99})],
            "dropped_invalid": [
                msgspec.msgpack.encode({"t": "syn", "v": PROTOCOL_VERSION, "seq": -1})
            ],
            "dropped_frames": [b"a", b"b", b"c"],
        }
        for frames in bad_frames.values():
            s.send_multipart(frames)
        # A well-formed Syn whose gossiped state is garbage.
        ref = NodeRef("intruder", 1, 1, "127.0.0.1:9")
        s.send(codec.encode(Syn(sender=ref, seq=1, digest=[])))

        def counted() -> dict[str, int] | None:
            c = d.counters()
            return c if all(c.get(k, 0) >= 1 for k in bad_frames) else None

        counters = wait_until(counted, 10, what="every bad frame to be counted")
        print({k: counters[k] for k in bad_frames})

        # 3. An oversized frame (> MAXMSGSIZE): libzmq disconnects the sender.
        s.send(b"\x00" * (codec.MAX_FRAME_BYTES + 1024))
        # The node still answers a member over TCP, and locally.
        s2 = member_socket(ctx, d, secret)
        s2.send(codec.encode(PeersRequest()))
        assert s2.poll(5000), "no reply after oversized frame"
        reply = codec.decode(s2.recv())
        assert type(reply).__name__ == "PeersReply"
        s.close()
        s2.close()
    finally:
        ctx.term()
    assert d.proc is not None and d.proc.poll() is None
    assert d.states() == {"target": "alive"}


def test_truncated_length_prefix_on_control_socket(tmp_path: Path, daemons: list[Daemon]) -> None:
    """The local control socket is as strict as the network one."""
    d = Daemon(tmp_path, "ctl", args=("--no-mdns",))
    daemons.append(d)
    d.start().wait_ready()
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(str(d.state_dir / "control.sock"))
        raw.sendall(struct.pack(">Q", 2**62) + os.urandom(256))
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"ipc://{d.state_dir / 'control.sock'}")
        s.send(b"\x92\x01\x02")  # msgpack, but an array
        s.send(codec.encode(Syn(sender=NodeRef("x", 1, 1, "1.2.3.4:5"), seq=1, digest=[])))
        # Work is node-to-node: a dispatch on the local socket runs nothing.
        dispatch = Dispatch(
            task="t-1",
            subtask="a",
            attempt=1,
            coordinator=NodeRef("x", 1, 1, "1.2.3.4:5"),
            lease_s=10.0,
            spec={"kind": "shell", "run": ["true"]},
        )
        s.send(codec.encode(dispatch))
        wait_until(
            lambda: (
                d.counters().get("dropped_malformed", 0) >= 1
                and d.counters().get("dropped_gossip_on_control", 0) >= 1
                and d.counters().get("dropped_work_on_control", 0) >= 1
            ),
            10,
            what="control socket drops",
        )
        s.close()
    finally:
        ctx.term()
    assert d.states() == {"ctl": "alive"}


# ---------------------------------------------------------------- what submit ships


def _job_with_inputs(where: Path, *inputs: str) -> Path:
    listed = ", ".join(json.dumps(i) for i in inputs)
    job = where / "job.toml"
    job.write_text(f'[[subtask]]\nid = "a"\nkind = "shell"\nrun = ["true"]\ninputs = [{listed}]\n')
    return job


def _submit_refused(work: Path, *inputs: str) -> str:
    """`swarmctl submit -f` of a job with these inputs: refused (exit 2) before any
    daemon is asked (there is none); the message."""
    _job_with_inputs(work, *inputs)
    out = swarmctl("submit", "-f", "job.toml", state_dir=work / "no-daemon", cwd=work)
    assert out.returncode == 2, out
    assert "TOPSECRET" not in out.stdout + out.stderr
    return out.stderr


def test_submit_follows_no_symlink_out_of_the_submit_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWARMD_TEST_SECRET", "TOPSECRET")  # in swarmctl's /proc/self/environ
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "id_ed25519").write_text("TOPSECRET key\n")
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / "src" / "ok.py").write_text("print('ok')\n")
    (work / "env").symlink_to("/proc/self/environ")
    (work / "ssh").symlink_to(outside)
    (work / "src" / "key").symlink_to(outside / "id_ed25519")

    message = _submit_refused(work, "env")
    assert '"env" is a symbolic link to "/proc/self/environ", outside the submit directory' in (
        message
    ), message
    assert 'subtask "a": inputs' in message
    message = _submit_refused(work, "ssh")  # a linked directory
    assert f'"ssh" is a symbolic link to "{outside}"' in message, message
    message = _submit_refused(work, "ssh/id_ed25519")  # through a linked parent
    assert f'"ssh" is a symbolic link to "{outside}"' in message, message
    message = _submit_refused(work, "src")  # a link inside a shipped directory
    assert f'"src/key" is a symbolic link to "{outside / "id_ed25519"}"' in message, message
    message = _submit_refused(work, ".")  # every refused path, each on its own line
    refused = re.findall(r'inputs: "([^"]+)" is a symbolic link', message)
    assert sorted(refused) == ["env", "src/key", "ssh"], message


def test_submit_refuses_fifos_sockets_and_pseudo_files(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "dir").mkdir(parents=True)
    os.mkfifo(work / "dir" / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(work / "sock"))
        message = _submit_refused(work, "sock")
        assert '"sock" is a socket: only regular files and directories' in message, message
    message = _submit_refused(work, "dir/pipe")
    assert '"dir/pipe" is a named pipe (FIFO)' in message, message
    message = _submit_refused(work, "dir")  # found while walking a directory
    assert '"dir/pipe" is a named pipe (FIFO)' in message, message
    # a submit directory on a pseudo file system: its files describe this machine
    proc = Path("/proc/self")
    out = swarmctl("submit", "-f", str(_job_with_inputs(tmp_path, "status")), cwd=proc)
    assert out.returncode == 2, out
    assert '"status" is on /proc, a pseudo file system' in out.stderr, out.stderr


def test_links_that_stay_inside_are_followed_and_loops_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "a.txt").write_text("A")
    (work / "alias.txt").symlink_to("data/a.txt")
    (work / "more").symlink_to("data")
    job = load_job_text(_job_with_inputs(tmp_path, "alias.txt", "more").read_text(), "toml", "j")
    files = collect_inputs(job, work)
    assert files == {"alias.txt": b"A", "more/a.txt": b"A"}
    (work / "data" / "up").symlink_to("..")
    with pytest.raises(JobError, match=r'"data/up/data" is a symbolic link loop|"data/up" is'):
        collect_inputs(
            load_job_text(_job_with_inputs(tmp_path, "data").read_text(), "toml", "j"), work
        )


@pytest.mark.parametrize("name", ["job.toml", "job.json"])
def test_a_deeply_nested_job_file_exits_2_without_a_traceback(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text(("a = " if name.endswith(".toml") else "") + "[" * 100_000)
    out = swarmctl("submit", "-f", name, state_dir=tmp_path / "no-daemon", cwd=tmp_path)
    assert out.returncode == 2, out
    assert out.stderr == f"swarmctl: {name}: not valid {name[-4:].upper()}: nested too deeply\n"
