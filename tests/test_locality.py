"""Data locality: bandwidth measured on real chunked pulls (swarmd.transfers), turned
into each node's input time (swarmd.core.locality) and priced by the coordinator, so
a subtask with big inputs stays on the node that holds them unless moving them pays."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from protocol.messages import CHUNK_BYTES
from swarmd.core.locality import MIN_INPUT_BYTES, Bandwidth, input_s
from swarmd.core.pricing import PricingConfig
from swarmd.core.tasks import Coordinator, CoordinatorConfig, Dispatch, Result
from tests.capacity import peer
from tests.test_tasks import job, of
from tests.test_transfers import Rig, in_loop, make_blob

MB = 1_000_000


def test_bandwidth_is_a_moving_mean_of_big_transfers_per_peer() -> None:
    bw = Bandwidth(alpha=0.5)
    assert not bw.observe("a", 1000, 0.001)  # a round trip, not a bandwidth
    assert not bw.observe("a", 10 * MB, 0.0) and not bw.observe("a", 10 * MB, math.nan)
    assert bw.measured("a") is None
    assert bw.observe("a", 10 * MB, 1.0)
    assert bw.measured("a") == pytest.approx(10 * MB)
    bw.observe("a", 10 * MB, 0.5)  # 20 MB/s: halfway there
    assert bw.measured("a") == pytest.approx(15 * MB)
    assert bw.snapshot() == {"a": {"bytes_per_s": pytest.approx(15 * MB), "transfers": 2}}


def test_the_link_between_two_nodes_as_this_node_knows_it() -> None:
    bw = Bandwidth(default_bytes_per_s=100 * MB)
    bw.observe("slow", 10 * MB, 1.0)
    assert bw.bytes_per_s("me", "slow", "me") == pytest.approx(10 * MB)
    assert bw.bytes_per_s("slow", "me", "me") == pytest.approx(10 * MB)
    assert bw.bytes_per_s("me", "other", "me") == 100 * MB  # never measured: the default
    assert bw.bytes_per_s("slow", "other", "me") == pytest.approx(10 * MB)  # the slower
    assert bw.bytes_per_s("me", "me", "me") == math.inf


def test_input_s_is_zero_on_the_holder_and_size_over_bandwidth_elsewhere() -> None:
    bw = Bandwidth(default_bytes_per_s=100 * MB)
    bw.observe("slow", 10 * MB, 1.0)
    got = dict(input_s(50 * MB, "me", ["me", "slow", "fast"], bw, "me"))
    assert got == {"slow": pytest.approx(5.0), "fast": pytest.approx(0.5)}
    assert input_s(MIN_INPUT_BYTES - 1, "me", ["me", "slow"], bw, "me") == ()


@in_loop
async def test_a_whole_pull_measures_the_bandwidth_from_its_worker(tmp_path: Path) -> None:
    spooled, _ = make_blob(tmp_path)
    rig = Rig(tmp_path / "coord", spooled)
    seen: list[tuple[str, int, float]] = []
    rig.transfers.on_measured = lambda node, n, s: seen.append((node, n, s))
    rig.transfers.on_head(rig.head, 0.0)
    # One chunk every 10 ms: about 100 MB/s from the first chunk taken to the last.
    sent = 0
    while rig.wants:
        want = rig.wants.pop(0)
        for i in range(want.count):
            offset = want.offset + i * CHUNK_BYTES
            if offset < spooled.ref.size:
                rig.transfers.on_chunk(rig.chunk(offset), 0.01 * sent)
                sent += 1
    await rig.settle()
    ((node, nbytes, seconds),) = seen
    first = CHUNK_BYTES
    assert node == "w" and nbytes == spooled.ref.size - first
    assert seconds == pytest.approx(0.01 * (sent - 1))


@in_loop
async def test_a_pull_that_stalled_measures_nothing(tmp_path: Path) -> None:
    spooled, _ = make_blob(tmp_path)
    rig = Rig(tmp_path / "coord", spooled)
    seen: list[Any] = []
    rig.transfers.on_measured = lambda *a: seen.append(a)
    rig.transfers.on_head(rig.head, 0.0)
    await rig.serve(0.0, skip={2 * CHUNK_BYTES})
    rig.transfers.tick(10.0)  # the lost chunk asked again
    await rig.serve(10.0)
    await rig.settle()
    assert rig.counters["transfer_resumed"] == 1 and seen == []


# ---------------------------------------------------------------- placement


def coordinator(bytes_per_s: float) -> Coordinator:
    c = Coordinator(
        node_id="coord",
        node_name="coord",
        config=CoordinatorConfig(),
        pricing=PricingConfig(max_queue=0),
    )
    c.bandwidth.observe("fast", 100 * MB, 100 * MB / bytes_per_s)
    c.input_bytes = lambda _task, spec: 200 * MB if spec.inputs else 0
    return c


def big_job() -> Any:
    return job(
        {"id": "big", "kind": "shell", "run": ["wc", "data"], "inputs": ["data"], "estimate": "4s"},
        {"id": "small", "kind": "shell", "run": ["true"], "estimate": "4s"},
    )


def test_a_subtask_with_big_inputs_stays_where_they_are_over_a_slow_link() -> None:
    # The coordinator's own node holds the inputs; "fast" runs twice as fast but 200 MB
    # take 20 s to reach it at 10 MB/s: "big" stays; "small" (no inputs) goes to fast.
    c = coordinator(10 * MB)
    c.submit("t1", big_job(), now=0.0)
    home, fast = peer("coord", slots_total=1), peer("fast", speed=2.0, slots_total=1)
    sent = {d.subtask_id: d.node_id for d in of(c.schedule([home, fast], now=0.0), Dispatch)}
    assert sent == {"big": "coord", "small": "fast"}
    rows = {r["id"]: r for r in c.explain("t1")["subtasks"]}
    basis = {r["peer"]: r["basis"] for r in rows["big"]["candidates"]}
    assert basis["fast"] == "hint 4 s / speed 2, inputs 20 s"


def test_over_a_fast_link_moving_the_inputs_pays() -> None:
    # At 1 GB/s the 200 MB take 0.2 s: the faster node wins for both.
    c = coordinator(1000 * MB)
    c.submit("t1", big_job(), now=0.0)
    home, fast = peer("coord", slots_total=2), peer("fast", speed=2.0, slots_total=2)
    sent = {d.subtask_id: d.node_id for d in of(c.schedule([home, fast], now=0.0), Dispatch)}
    assert sent == {"big": "fast", "small": "fast"}


def test_upstream_artifacts_taken_in_count_as_inputs() -> None:
    # "use" takes in what "make" left (shipped from the coordinator, which received it):
    # over a slow link it stays with them; "make" itself, with no inputs, goes to fast.
    c = coordinator(10 * MB)
    c.input_bytes = lambda _task, spec: 200 * MB if spec.upstream_inputs else 0
    make = {"id": "make", "kind": "shell", "run": ["true"], "outputs": ["m"], "estimate": "4s"}
    use = {
        "id": "use",
        "kind": "shell",
        "run": ["wc", "m"],
        "after": ["make"],
        "upstream_inputs": ["make/m"],
        "estimate": "4s",
    }
    c.submit("t1", job(make, use), now=0.0)
    home, fast = peer("coord", slots_total=1), peer("fast", speed=2.0, slots_total=1)
    (first,) = of(c.schedule([home, fast], now=0.0), Dispatch)
    assert (first.subtask_id, first.node_id) == ("make", "fast")
    c.on_result("t1", "make", first.attempt, "fast", Result(exit_code=0), 2.0)
    (then,) = of(c.schedule([home, fast], now=2.0), Dispatch)
    assert (then.subtask_id, then.node_id) == ("use", "coord")
    rows = {r["id"]: r for r in c.explain("t1")["subtasks"]}
    basis = {r["peer"]: r["basis"] for r in rows["use"]["candidates"]}
    assert basis["fast"] == "hint 4 s / speed 2, inputs 20 s"
