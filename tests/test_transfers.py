"""A blob fetched in chunks (swarmd.transfers with real files): the window, a corrupted
chunk or artifact refused, a lost chunk asked again, a restart resumed; the worker's
collection spills to a blob past the inline limit and enforces its file-count limit."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from protocol.messages import CHUNK_BYTES, AttemptResult, BlobChunk, BlobWant, Message
from swarmd import blobs
from swarmd.core import template
from swarmd.core.transfer import WINDOW, Pull
from swarmd.executors import workdir
from swarmd.transfers import Received, Transfers

SIZE = 5 * CHUNK_BYTES + 12345


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 60))

    return run


def make_blob(root: Path) -> tuple[blobs.Spooled, bytes]:
    data = hashlib.sha256(b"seed").digest() * (SIZE // 32 + 1)
    data = data[:SIZE]
    src = root / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(data)
    writer = blobs.BlobWriter(root / "spool")
    writer.add_bytes("small.txt", b"hello")
    assert writer.add_file("big.bin", src / "big.bin", 1 << 30) == SIZE
    return writer.finish(), data


class Rig:
    """A Transfers on a temp dir, with the worker's side played by the test."""

    def __init__(self, root: Path, spooled: blobs.Spooled) -> None:
        self.spooled = spooled
        self.wants: list[BlobWant] = []
        self.delivered: list[Received] = []
        self.counters: Counter[str] = Counter()
        self.transfers = self.new(root)
        self.head = AttemptResult(
            task="t1", subtask="s1", attempt=1, node="w", exit_code=0, blob=spooled.ref
        )

    def new(self, root: Path) -> Transfers:
        def send(_node: str, m: Message) -> bool:
            assert isinstance(m, BlobWant)
            self.wants.append(m)
            return True

        def deliver(_m: AttemptResult, r: Received) -> None:
            self.delivered.append(r)

        log = logging.getLogger("test")
        return Transfers(root, send, lambda _m: True, deliver, self.counters, log)

    def chunk(self, offset: int, corrupt: bool = False) -> BlobChunk:
        data = blobs.read_chunk(self.spooled.path, self.spooled.ref, offset)
        sha = hashlib.sha256(data).digest()
        if corrupt:
            data = bytes([data[0] ^ 1]) + data[1:]
        return BlobChunk(task="t1", subtask="s1", attempt=1, offset=offset, data=data, sha256=sha)

    async def serve(self, now: float, skip: set[int] | None = None) -> None:
        """Answer every want so far (but the chunks at ``skip``) until none is left."""
        while self.wants:
            want = self.wants.pop(0)
            for i in range(want.count):
                offset = want.offset + i * CHUNK_BYTES
                if offset < self.spooled.ref.size and offset not in (skip or set()):
                    self.transfers.on_chunk(self.chunk(offset), now)

    async def settle(self, now: float = 0.0) -> None:
        """Serve wants until something is delivered (the check runs in a thread)."""
        deadline = time.monotonic() + 30
        while not self.delivered:
            assert time.monotonic() < deadline, "nothing delivered"
            await self.serve(now)
            await asyncio.sleep(0.01)


def test_the_window_keeps_at_most_its_chunks_in_flight() -> None:
    pull = Pull(size=20 * CHUNK_BYTES)
    assert pull.wants() == (0, WINDOW)
    assert pull.wants() is None  # all of the window is out
    for i in range(WINDOW // 2):
        assert pull.take(i * CHUNK_BYTES, CHUNK_BYTES, 1.0)
    assert pull.wants() == (WINDOW * CHUNK_BYTES, WINDOW // 2)
    assert not pull.take(0, CHUNK_BYTES, 1.0)  # a duplicate is dropped
    assert pull.stalled(1.0 + pull.stall_s + 0.1)


@in_loop
async def test_a_blob_arrives_and_every_artifact_is_checked(tmp_path: Path) -> None:
    spooled, data = make_blob(tmp_path)
    rig = Rig(tmp_path / "coord", spooled)
    rig.transfers.on_head(rig.head, 0.0)
    await rig.serve(0.0)
    await rig.settle()
    assert rig.delivered == [Received(names=("small.txt", "big.bin"))]
    rig.transfers.install(rig.head)
    kept = tmp_path / "coord" / "artifacts" / "t1" / "s1"
    assert blobs.read_artifact(kept, 5, SIZE) == data


@in_loop
async def test_a_corrupted_chunk_is_refused_and_asked_again(tmp_path: Path) -> None:
    spooled, _ = make_blob(tmp_path)
    rig = Rig(tmp_path / "coord", spooled)
    rig.transfers.on_head(rig.head, 0.0)
    rig.wants.clear()
    rig.transfers.on_chunk(rig.chunk(0, corrupt=True), 0.0)
    assert rig.counters["transfer_bad_chunks"] == 1
    assert not rig.wants  # nothing taken, nothing asked
    rig.transfers.tick(10.0)  # stalled: asked again from the start
    assert rig.wants[0].offset == 0
    await rig.serve(10.0)
    await rig.settle()
    assert rig.delivered == [Received(names=("small.txt", "big.bin"))]


@in_loop
async def test_an_artifact_that_fails_its_sha256_is_fetched_again_then_refused(
    tmp_path: Path,
) -> None:
    spooled, _ = make_blob(tmp_path)
    with open(spooled.path / "data", "r+b") as f:  # damaged on the worker's disk
        f.seek(CHUNK_BYTES)
        f.write(b"XXXX")
    rig = Rig(tmp_path / "coord", spooled)
    rig.transfers.on_head(rig.head, 0.0)
    await rig.settle()
    assert rig.counters["transfer_failed_checks"] == 3  # the first fetch and two more
    (received,) = rig.delivered
    assert received.error is not None and "big.bin" in received.error
    assert "sha256" in received.error


@in_loop
async def test_a_lost_chunk_is_asked_again_after_the_stall(tmp_path: Path) -> None:
    spooled, _ = make_blob(tmp_path)
    rig = Rig(tmp_path / "coord", spooled)
    rig.transfers.on_head(rig.head, 0.0)
    await rig.serve(0.0, skip={2 * CHUNK_BYTES})  # lost with its link
    assert not rig.delivered
    rig.transfers.tick(10.0)
    assert rig.wants[0].offset == 2 * CHUNK_BYTES
    assert rig.counters["transfer_resumed"] == 1
    await rig.serve(10.0)
    await rig.settle()
    assert rig.delivered == [Received(names=("small.txt", "big.bin"))]


@in_loop
async def test_a_restarted_coordinator_goes_on_from_the_chunks_on_disk(tmp_path: Path) -> None:
    spooled, data = make_blob(tmp_path)
    rig = Rig(tmp_path / "coord", spooled)
    rig.transfers.on_head(rig.head, 0.0)
    first = rig.wants.pop(0)
    for i in range(3):  # three chunks arrive, then the coordinator dies
        rig.transfers.on_chunk(rig.chunk(first.offset + i * CHUNK_BYTES), 0.0)
    rig.wants.clear()
    rig.transfers = rig.new(tmp_path / "coord")  # a new process, the same state dir
    rig.transfers.on_head(rig.head, 1.0)  # the worker sends its result again
    assert rig.wants[0].offset == 3 * CHUNK_BYTES
    await rig.serve(1.0)
    await rig.settle()
    assert rig.delivered == [Received(names=("small.txt", "big.bin"))]
    rig.transfers.install(rig.head)
    kept = tmp_path / "coord" / "artifacts" / "t1" / "s1"
    assert blobs.read_artifact(kept, 5, SIZE) == data


def test_collected_outputs_go_to_a_blob_past_the_inline_limit(tmp_path: Path) -> None:
    (tmp_path / "w" / "d").mkdir(parents=True)
    for i in range(blobs.INLINE_FILES + 1):
        (tmp_path / "w" / "d" / f"f{i:04}").write_text(str(i))
    small = workdir.collect_outputs(tmp_path / "w", ["d/f0001"], 1 << 20, tmp_path / "s1")
    assert small.blob is None and small.artifacts == {"d/f0001": b"1"}
    many = workdir.collect_outputs(tmp_path / "w", ["d"], 1 << 20, tmp_path / "s2")
    assert many.artifacts == {} and many.blob is not None
    assert many.blob.ref.files == blobs.INLINE_FILES + 1
    entries = blobs.read_manifest(many.blob.path)
    blobs.verify(many.blob.path, entries)


def test_the_artifact_file_limit_is_enforced_where_they_are_collected(tmp_path: Path) -> None:
    (tmp_path / "w" / "d").mkdir(parents=True)
    for i in range(12):
        (tmp_path / "w" / "d" / f"f{i:02}").write_text(str(i))
    got = workdir.collect_outputs(tmp_path / "w", ["d"], 1 << 20, None, max_files=10)
    assert len(got.artifacts) == 10
    assert got.problems(1 << 20) == ["artifacts over this node's limit of 10 files: 2 left out"]


def test_a_template_is_refused_before_the_string_is_built() -> None:
    results = {"a": {"stdout": "x" * 1_000_000}}
    text = " ".join(["{{ a.stdout }}"] * 300)
    with pytest.raises(template.TooLarge, match="over the limit of 2097152 characters"):
        template.render(text, results, template.RENDER_MAX)
    assert len(template.render("{{ a.stdout }}!", results, template.RENDER_MAX)) == 1_000_001
