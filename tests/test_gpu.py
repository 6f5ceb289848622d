"""The NVML path for real: runs only where an NVIDIA driver answers (skipped elsewhere).

A GPU node and a GPU-less "laptop" (the harness hides NVML from it with
``tests/nonvml/pynvml.py``, which fails to import) form a cluster on loopback. The
laptop must see the real card with its measured VRAM, see free VRAM fall when a process
takes 20 GiB of it (when PyTorch is there to take it), and a ``min_vram`` subtask
submitted on the laptop must run on the GPU node.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon, new_secret, swarmctl, wait_until

GiB = 1 << 30


def _nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception:
        return False
    return True


pytestmark = pytest.mark.skipif(not _nvml_works(), reason="no NVIDIA driver here")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Daemon, Daemon]]:
    secret = new_secret()
    gpu = Daemon(tmp_path, "gpu", secret=secret, real_gpus=True).start().wait_ready()
    # the harness hides NVML from a daemon unless real_gpus (tests/nonvml/pynvml.py)
    laptop = Daemon(tmp_path, "laptop", secret=secret, args=("--join", gpu.address)).start()
    laptop.wait_ready()
    yield gpu, laptop
    for d in (gpu, laptop):
        d.stop()


def _gpu_peer(laptop: Daemon) -> dict[str, Any] | None:
    for p in laptop.peers():
        if p["name"] == "gpu" and p["state"] == "alive" and p.get("gpus"):
            return p
    return None


def test_laptop_sees_the_real_gpu_and_sends_vram_work_there(pair: tuple[Daemon, Daemon]) -> None:
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        total = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
    finally:
        pynvml.nvmlShutdown()
    name = name.decode() if isinstance(name, bytes) else name
    gpu, laptop = pair
    peer = wait_until(lambda: _gpu_peer(laptop), 30, what="the laptop to see the GPU node's GPU")
    card = peer["gpus"][0]
    assert (card["name"], card["vram_total"], card["source"]) == (name, total, "nvml")
    assert not [p for p in laptop.peers() if p["name"] == "laptop" and p.get("gpus")]

    try:
        import torch  # noqa: F401
    except ImportError:
        holder = None
    else:  # take 20 GiB and watch the gossiped free VRAM fall
        free0 = card["vram_free"]
        code = (
            "import time, torch; x = torch.empty(20 << 30, dtype=torch.uint8, device='cuda');"
            "print('held', flush=True); time.sleep(120)"
        )
        holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        if holder is not None:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            wait_until(
                lambda: (p := _gpu_peer(laptop)) and p["gpus"][0]["vram_free"] <= free0 - 19 * GiB,
                30,
                what="the gossiped free VRAM to fall by 20 GiB",
            )
        job = gpu.state_dir.parent / "vram.toml"
        job.write_text(
            'name = "vram"\n[[subtask]]\nid = "a"\nkind = "shell"\n'
            'run = ["nvidia-smi", "-L"]\nmin_vram = "16GiB"\n'
        )
        out = swarmctl("--json", "submit", "-f", str(job), "--wait", state_dir=laptop.state_dir)
        assert out.returncode == 0, out.stderr
        final = json.loads(out.stdout)
        assert final["state"] == "done"
        assert [s["peer"] for s in final["subtasks"]] == ["gpu"]
        res = swarmctl("--json", "result", final["id"], state_dir=laptop.state_dir)
        assert name in json.loads(res.stdout)["subtasks"]["a"]["stdout"]
    finally:
        if holder is not None:
            holder.kill()
            holder.wait(10)
