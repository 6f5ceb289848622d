"""The largest result delivered: one artifact of SIZE bytes, made on a worker, fetched
by its coordinator in chunks, then written out by ``swarmctl result --out``.

    python bench/big_result.py [--size 1GiB]

Two daemons on loopback (n1 coordinates and runs no shell work, n2 works), with
``[node] max_artifacts`` raised to fit. Reports the seconds from submit to done, the
seconds ``result --out`` takes, and each daemon's peak RSS (VmHWM) before and after.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from swarmd.core.units import parse_size
from tests.harness import Daemon, new_secret, swarmctl, wait_until


def peak_rss_mib(d: Daemon) -> float:
    assert d.proc is not None
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    size = parse_size(sys.argv[sys.argv.index("--size") + 1]) if "--size" in sys.argv else 1 << 30
    limit = f'[node]\nmax_artifacts = "{size + (1 << 20)}"\n'
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        secret = new_secret()
        n1 = Daemon(root, "n1", secret=secret, config=limit + "allow_shell = false\n")
        n2 = Daemon(root, "n2", secret=secret, config=limit)
        try:
            for d in (n1, n2):
                d.start()
            for d in (n1, n2):
                d.wait_ready()
            wait_until(lambda: n1.states() == {"n1": "alive", "n2": "alive"}, 20, what="pair")
            idle = {d.name: peak_rss_mib(d) for d in (n1, n2)}
            work = root / "work"
            work.mkdir()
            (work / "job.toml").write_text(
                'name = "big"\n[[subtask]]\nid = "make"\nkind = "shell"\n'
                f'run = ["sh", "-c", "head -c {size} /dev/zero > big.bin"]\n'
                'outputs = ["big.bin"]\ntimeout = "1h"\n'
            )
            started = time.monotonic()
            out = swarmctl(
                "--json", "submit", "--wait", "-f", "job.toml",
                state_dir=n1.state_dir, cwd=work, timeout=3600,
            )  # fmt: skip
            delivered_s = time.monotonic() - started
            final = json.loads(out.stdout)
            assert final["state"] == "done", final
            started = time.monotonic()
            res = swarmctl(
                "result", final["id"], "--out", str(root / "out"), state_dir=n1.state_dir,
                timeout=3600,
            )  # fmt: skip
            fetched_s = time.monotonic() - started
            assert res.returncode == 0, res.stderr
            got = root / "out" / "make" / "big.bin"
            digest = hashlib.sha256()
            with open(got, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            assert got.stat().st_size == size
            zeros = hashlib.sha256()
            for _ in range(size >> 20):
                zeros.update(bytes(1 << 20))
            zeros.update(bytes(size % (1 << 20)))
            assert digest.digest() == zeros.digest()
            report = {
                "size_bytes": size,
                "submit_to_done_s": round(delivered_s, 2),
                "result_out_s": round(fetched_s, 2),
                "peak_rss_mib": {
                    d.name: {"idle": round(idle[d.name], 1), "after": round(peak_rss_mib(d), 1)}
                    for d in (n1, n2)
                },
                "coordinator_counters": {
                    k: v for k, v in n1.counters().items() if k.startswith("tasks_transfer")
                },
            }
            print(json.dumps(report, indent=2))
        finally:
            for d in (n1, n2):
                d.stop()


if __name__ == "__main__":
    main()
