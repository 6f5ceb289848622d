"""Results bigger than one frame, between 2 real daemons on loopback: a 40 MB artifact
and 12,000 small files arrive in chunks, `swarmctl result --out` streams them back,
and a template that would render past its limit fails with a clear error."""

from __future__ import annotations

import hashlib
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon, new_secret, swarmctl, wait_until

BIG = 40_000_000  # bytes: over the 16 MiB frame, under the 64 MiB artifact limit


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[list[Daemon]]:
    """n1 coordinates (runs no shell work), n2 works."""
    secret = new_secret()
    nodes = [
        Daemon(tmp_path, "n1", secret=secret, config="[node]\nallow_shell = false\n"),
        Daemon(tmp_path, "n2", secret=secret),
    ]
    for d in nodes:
        d.start()
    for d in nodes:
        d.wait_ready()
    wait_until(lambda: nodes[0].states() == {"n1": "alive", "n2": "alive"}, 15, what="pair")
    yield nodes
    for d in nodes:
        d.stop()


def run_job(n1: Daemon, work: Path, job: str, timeout: float = 120) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    (work / "job.toml").write_text(textwrap.dedent(job))
    out = swarmctl(
        "--json", "submit", "--wait", "-f", "job.toml", state_dir=n1.state_dir, cwd=work,
        timeout=timeout,
    )  # fmt: skip
    assert out.stdout, out.stderr
    final: dict[str, Any] = json.loads(out.stdout)
    return final


def fetch(n1: Daemon, task: str, out: Path) -> dict[str, Any]:
    res = swarmctl("--json", "result", task, "--out", str(out), state_dir=n1.state_dir)
    assert res.returncode == 0, res.stderr
    body: dict[str, Any] = json.loads(res.stdout)
    return body


def test_a_40mb_artifact_arrives_in_chunks_and_result_out_streams_it(
    pair: list[Daemon], tmp_path: Path
) -> None:
    n1, n2 = pair
    final = run_job(
        n1,
        tmp_path / "work",
        f"""
        name = "big"
        [[subtask]]
        id = "make"
        kind = "shell"
        run = ["sh", "-c", "yes 0123456789abcdef | head -c {BIG} > big.bin"]
        outputs = ["big.bin"]
        """,
    )
    assert final["state"] == "done", final
    body = fetch(n1, final["id"], tmp_path / "out")
    assert body["subtasks"]["make"]["artifacts"] == ["big.bin"]
    got = (tmp_path / "out" / "make" / "big.bin").read_bytes()
    want = (b"0123456789abcdef\n" * (BIG // 17 + 1))[:BIG]
    assert len(got) == BIG and hashlib.sha256(got).digest() == hashlib.sha256(want).digest()
    counters = n1.counters()
    assert counters["tasks_transfers_done"] == 1
    assert counters["tasks_transfer_chunks"] >= BIG // (1 << 20)
    # The worker dropped its copy once the coordinator acknowledged the result.
    wait_until(lambda: not any((n2.state_dir / "spool").iterdir()), 10, what="spool emptied")
    assert not any((n1.state_dir / "incoming").rglob("data"))


def test_12000_small_files_arrive(pair: list[Daemon], tmp_path: Path) -> None:
    n1 = pair[0]
    make = "import os; os.mkdir('d'); [open(f'd/f{i}', 'w').write(str(i)) for i in range(12000)]"
    final = run_job(
        n1,
        tmp_path / "work",
        f"""
        name = "many"
        [[subtask]]
        id = "many"
        kind = "shell"
        run = ["python3", "-c", "{make}"]
        outputs = ["d"]
        """,
    )
    assert final["state"] == "done", final
    fetch(n1, final["id"], tmp_path / "out")
    files = list((tmp_path / "out" / "many" / "d").iterdir())
    assert len(files) == 12000
    assert (tmp_path / "out" / "many" / "d" / "f11999").read_text() == "11999"


def test_a_template_rendered_past_its_limit_fails_with_a_clear_error(
    pair: list[Daemon], tmp_path: Path
) -> None:
    n1 = pair[0]
    args = ", ".join(['"{{ a.stdout }}"'] * 300)  # 300 x 1 MB
    final = run_job(
        n1,
        tmp_path / "work",
        f"""
        name = "blowup"
        [[subtask]]
        id = "a"
        kind = "shell"
        run = ["sh", "-c", "head -c 1000000 /dev/zero | tr '\\\\0' x"]

        [[subtask]]
        id = "b"
        kind = "shell"
        run = ["echo", {args}]
        after = ["a"]
        """,
    )
    subtasks = {s["id"]: s for s in final["subtasks"]}
    assert subtasks["a"]["state"] == "done", final
    assert subtasks["b"]["state"] == "failed"
    assert "over the limit of 2097152 characters" in subtasks["b"]["error"]
