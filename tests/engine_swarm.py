"""Two real daemons for the engine end-to-end tests (tests/test_engine_slurm.py,
tests/test_engine_ray_cluster.py): ``login`` fronts an engine (its ``[engines.NAME]``
table given), ``lan`` is a plain peer and coordinates; and what the tests ask of them
through ``swarmctl`` on ``lan``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tests.harness import Daemon, new_secret, swarmctl, wait_until


@contextmanager
def login_and_lan(
    root: Path, engine_toml: str, *, lan_slots: int = 2, alive_s: float = 20.0
) -> Iterator[tuple[Daemon, Daemon]]:
    """``login`` (one slot, fronting the engine) and ``lan`` (``lan_slots``), alive to
    each other within ``alive_s``; stopped on the way out. (The engine benchmarks use
    it too.)"""
    secret = new_secret()
    config = "[node]\nmax_concurrency = 1\n" + engine_toml
    login = Daemon(root, "login", secret=secret, config=config)
    lan = Daemon(root, "lan", secret=secret, config=f"[node]\nmax_concurrency = {lan_slots}\n")
    daemons = [login, lan]
    try:
        for d in daemons:
            d.start()
        for d in daemons:
            d.wait_ready()
        alive = {"login": "alive", "lan": "alive"}
        wait_until(lambda: lan.states() == alive, alive_s, what="two nodes")
        yield login, lan
    finally:
        for d in daemons:
            d.stop()


@dataclass
class EngineSwarm:
    login: Daemon
    lan: Daemon
    root: Path
    finish_s: ClassVar[float] = 60.0  # how long a task may take to end, by default

    def ctl(self, *args: str, timeout: float = 60) -> Any:
        done = swarmctl("--json", *args, state_dir=self.lan.state_dir, timeout=timeout)
        assert done.returncode in (0, 1), done.stderr + self.logs()
        return json.loads(done.stdout)

    def submit(self, job: str, name: str) -> str:
        jobdir = self.root / name
        jobdir.mkdir(exist_ok=True)
        (jobdir / "job.toml").write_text(job)
        done = swarmctl(
            "--json", "submit", "-f", "job.toml", state_dir=self.lan.state_dir, cwd=jobdir
        )
        assert done.returncode == 0, done.stderr
        return str(json.loads(done.stdout)["task"])

    def finished(self, task: str, timeout: float | None = None) -> dict[str, Any]:
        def over() -> dict[str, Any] | None:
            status = self.ctl("status", task)
            return status if status["state"] in ("done", "failed", "cancelled") else None

        limit = self.finish_s if timeout is None else timeout
        return wait_until(over, limit, 0.2, what=f"task {task} to finish")

    def subtask(self, task: str, sid: str) -> dict[str, Any]:
        status = self.ctl("status", task)
        return next(s for s in status["subtasks"] if s["id"] == sid)

    def engines_seen(self) -> list[dict[str, Any]] | None:
        """The engines ``lan`` hears ``login`` front, once the first answered a poll."""
        row = next((p for p in self.lan.peers() if p["name"] == "login"), None)
        engines = row.get("engines") if row else None
        return engines if engines and engines[0].get("ok") else None

    def logs(self) -> str:
        return "".join(f"\n--- {d.name}:\n{d.log()[-3000:]}" for d in (self.login, self.lan))
