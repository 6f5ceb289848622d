"""Chaos engine for swarmd: seeded fault schedules, a task workload, invariant checks.

``tests/test_chaos.py`` drives it; this module holds the parts:

* :func:`make_schedule` turns a seed into a list of :class:`Fault` (when, what, which
  host, for how long, how hard). Everything random comes from one ``random.Random(seed)``
  drawn in a fixed order, so ``SWARMD_CHAOS_SEED`` replays the same schedule and the
  same stream of jobs (only the daemons' own timing differs from run to run).
* :class:`ChaosEngine` (a thread) applies the schedule to a :class:`ChaosCluster` and
  undoes each fault after its duration, logging every injection with its time.
* :class:`Workload` (a thread) submits a stream of small tasks to rotating live
  members and remembers every task id, its coordinator and what it saw of it.
* ``check_*`` functions return the invariant violations found (empty: all good).

Faults (one at a time per host; see :data:`MAX_IMPAIRED`):

=========  ==================================================================
kill       SIGKILL, down for a while, restart with the same state dir
vanish     SIGKILL, down well past failure detection and ``adopt_after_s`` (5 s: the
           successors adopt the tasks it coordinated; it is restarted only at the
           end of its window, so the cluster ends whole)
stop       SIGSTOP for a while (shorter or longer than failure detection), SIGCONT
sleep      a laptop's suspend: SIGUSR1 (the PrepareForSleep path: work handed back,
           ``sleeping`` gossiped), SIGSTOP a second later (the machine is suspended),
           then SIGCONT and SIGUSR2 (wake); a peer must list it ``sleeping``, never
           ``dead``, just before it wakes
term       SIGTERM (drain, hand back, announce ``left``), restart once it exited
partition  nft drop-all in the host's namespace, then heal
loss       nft ``numgen random mod 100 < N drop`` in and out of the host, then heal
delay      every byte to the host held D ms per direction by the userspace forwarder
=========  ==================================================================

Run a probe of an intruder as ``python -m tests.chaos probe SERVER_KEY HOST:PORT...``
(see :func:`probe_main`).
"""

from __future__ import annotations

import contextlib
import datetime
import heapq
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from protocol import codec
from protocol.messages import (
    PeersRequest,
    SubmitReply,
    SubmitRequest,
    TaskReply,
    TaskRequest,
    TasksReply,
    TasksRequest,
)
from swarmctl.client import Client, RequestFailed, Unreachable
from tests.delay import DelayForwarder
from tests.harness import Daemon, new_secret, wait_until
from tests.netns import Lan

KINDS: Final = ("kill", "vanish", "stop", "sleep", "term", "partition", "loss", "delay")
# Faults that take a member out of the cluster (it cannot gossip or work meanwhile).
IMPAIRING: Final = frozenset({"kill", "vanish", "stop", "sleep", "term", "partition"})
# Faults during which a member's control socket does not answer (no submissions there).
UNRESPONSIVE: Final = frozenset({"kill", "vanish", "stop", "sleep", "term"})
WEIGHTS: Final = {
    "kill": 2.0,
    "vanish": 1.0,
    "stop": 2.0,
    "sleep": 1.5,
    "term": 1.5,
    "partition": 1.5,
    "loss": 1.5,
    "delay": 1.5,
}
DURATION_S: Final = {  # how long the fault lasts (kill/term: until the restart)
    "kill": (0.5, 4.0),
    "vanish": (9.0, 12.0),  # dead after ~1.7 s, adopted 5 s later (adopt_after_s)
    "stop": (0.5, 5.0),
    "sleep": (2.0, 9.0),  # past failure detection, at times past adopt_after_s (5 s)
    "term": (4.0, 7.0),
    "partition": (2.0, 7.0),
    "loss": (3.0, 8.0),
    "delay": (3.0, 8.0),
}
RESTART_MARGIN_S: Final = 3.0  # planned time for a restarted daemon to come up
SUSPEND_AFTER_S: Final = 1.0  # sleep: SIGUSR1, then SIGSTOP this much later
GAP_S: Final = (1.0, 3.5)  # between two fault starts
MAX_IMPAIRED: Final = 2  # of 5 members: a majority (3) is always up and connected
DEFER_MAX_S: Final = 20.0  # a fault waits at most this long for its host / the majority
FINAL_TASK: Final = frozenset({"done", "failed", "cancelled"})

PORT: Final = 7946  # each daemon, in its own namespace
FORWARD_PORT: Final = 7947  # the delay forwarder in front of it, which it advertises
MEMBER_CONFIG: Final = '[node]\nmax_concurrency = 2\ndrain_grace = "3s"\n' + (
    # Adoption after 5 s, the default (swarmd/config_succession.py);
    # SWARMD_CHAOS_ADOPT=S sets another grace.
    f"adopt_after_s = {os.environ['SWARMD_CHAOS_ADOPT']}\n"
    if os.environ.get("SWARMD_CHAOS_ADOPT")
    else ""
)


def now_iso() -> str:
    return datetime.datetime.now().isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Fault:
    index: int
    at: float  # seconds after the schedule starts
    kind: str
    host: int
    duration: float
    param: int = 0  # loss: percent dropped; delay: ms per direction

    def describe(self) -> str:
        what = {"loss": f" {self.param}%", "delay": f" {self.param}ms"}.get(self.kind, "")
        return f"#{self.index} {self.kind}{what} h{self.host} for {self.duration:.1f}s"

    @property
    def window(self) -> float:
        """How long the host is planned to be busy with this fault."""
        margin = RESTART_MARGIN_S if self.kind in ("kill", "vanish", "term") else 0.5
        return self.duration + margin


def make_schedule(
    rng: random.Random, n_faults: int, hosts: Iterable[int], max_impaired: int = MAX_IMPAIRED
) -> list[Fault]:
    """``n_faults`` faults on ``hosts``: one at a time per host, never more than
    ``max_impaired`` impairing ones at once; the first ones cover every kind."""
    hosts = list(hosts)
    busy: dict[int, list[tuple[float, float, str]]] = {h: [] for h in hosts}
    kinds = list(KINDS)
    rng.shuffle(kinds)
    faults: list[Fault] = []
    t = 1.0
    while len(faults) < n_faults:
        t += rng.uniform(*GAP_S)
        first = kinds[len(faults)] if len(faults) < len(kinds) else None
        kind = first or rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
        duration = round(rng.uniform(*DURATION_S[kind]), 2)
        param = rng.randint(10, 40) if kind == "loss" else 0
        param = rng.randint(50, 400) if kind == "delay" else param
        candidate = Fault(len(faults) + 1, round(t, 2), kind, hosts[0], duration, param)
        end = t + candidate.window

        def overlaps(window: tuple[float, float, str], start: float = t, stop: float = end) -> bool:
            return window[0] < stop and start < window[1]

        free = [h for h in hosts if not any(overlaps(w) for w in busy[h])]
        impaired = sum(1 for h in hosts for w in busy[h] if w[2] in IMPAIRING and overlaps(w))
        if kind in IMPAIRING and impaired >= max_impaired:
            free = []
        if not free:
            continue  # try again a little later (t moves on), with a fresh draw
        host = rng.choice(free)
        fault = Fault(candidate.index, candidate.at, kind, host, duration, param)
        busy[host].append((t, end, kind))
        faults.append(fault)
    return faults


# ---------------------------------------------------------------------- log


@dataclass(frozen=True)
class Injection:
    t: float  # seconds since the schedule started
    wall: str
    fault: int
    kind: str
    host: int
    action: str
    detail: str = ""

    def line(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"+{self.t:7.2f}s {self.wall} #{self.fault:<3} h{self.host} {self.action}{extra}"


class ChaosLog:
    """Every injection and recovery, with timestamps; mirrored to a file as it happens."""

    def __init__(self, path: Path, seed: int) -> None:
        self.path = path
        self.seed = seed
        self.entries: list[Injection] = []
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        path.write_text(f"chaos seed {seed}, started {now_iso()}\n")

    def start(self) -> None:
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def add(self, fault: Fault, action: str, detail: str = "") -> Injection:
        entry = Injection(
            self.elapsed(), now_iso(), fault.index, fault.kind, fault.host, action, detail
        )
        with self._lock:
            self.entries.append(entry)
            with self.path.open("a") as f:
                f.write(entry.line() + "\n")
        return entry

    def note(self, text: str) -> None:
        with self._lock, self.path.open("a") as f:
            f.write(f"+{self.elapsed():7.2f}s {now_iso()} {text}\n")

    def text(self) -> str:
        return self.path.read_text()


# ---------------------------------------------------------------------- cluster


class ChaosDaemon(Daemon):
    """A swarmd in host ``host``'s namespace; it advertises its forwarder's address."""

    def __init__(
        self,
        root: Path,
        lan: Lan,
        host: int,
        secret: str,
        *,
        name: str,
        advertise: str | None,
        join: list[str],
    ) -> None:
        super().__init__(root, name, secret=secret, port=PORT, config=MEMBER_CONFIG)
        self.lan = lan
        self.host = host
        self.advertise = advertise
        self.join = join
        self.starts = 0

    @property
    def address(self) -> str:
        return self.advertise or f"{self.lan.ip(self.host)}:{PORT}"

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "swarmd", "run", "--state-dir", str(self.state_dir)]
        argv += ["--bind", self.lan.ip(self.host), "--port", str(PORT), "--name", self.name]
        argv += ["--log-level", "info"]
        if self.advertise:
            argv += ["--advertise", self.advertise]
        for seed in self.join:
            argv += ["--join", seed]
        assert self.config_path is not None
        argv += ["--config", str(self.config_path)]
        return self.lan.command(self.host, argv)

    def start(self) -> ChaosDaemon:
        self.starts += 1
        super().start()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout: float = 2.0) -> Client:
        return Client(self.state_dir, timeout_s=timeout)

    def call(self, message: Any, timeout: float = 2.0) -> Any:
        client = self.client(timeout)
        try:
            return client.request(message)
        finally:
            client.close()


class ChaosCluster:
    """``members`` swarmd hosts on one bridged LAN, each behind a delay forwarder, plus an
    intruder host: another cluster's daemon that dials every member all the time, and a
    probe that knows the cluster's public key but not its secret."""

    def __init__(self, root: Path, members: int = 5) -> None:
        self.root = root
        self.n = members
        self.lan = Lan(members + 1)
        self.forwarder = DelayForwarder()
        self.secret = new_secret()
        self.intruder_host = members + 1
        self.members: dict[int, ChaosDaemon] = {}
        self.intruder: ChaosDaemon | None = None
        self.probe: subprocess.Popen[str] | None = None
        self.probe_report: dict[str, Any] | None = None
        self.paused: set[int] = set()
        self._log_mark: dict[int, int] = {}  # member -> its log's size at its last restart
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        lan = self.lan
        advertised = {h: f"{lan.ip(h)}:{FORWARD_PORT}" for h in self.hosts}
        for h in self.hosts:
            self.forwarder.add(
                f"h{h}",
                (lan.ip(h), FORWARD_PORT),
                (lan.ip(h), PORT),
                socket_factory=lambda h=h: lan.new_socket(h),
            )
            others = [a for o, a in advertised.items() if o != h]
            self.members[h] = ChaosDaemon(
                self.root, lan, h, self.secret, name=f"h{h}", advertise=advertised[h], join=others
            )
        direct = [f"{lan.ip(h)}:{PORT}" for h in self.hosts]
        self.intruder = ChaosDaemon(
            self.root,
            lan,
            self.intruder_host,
            new_secret(),
            name="intruder",
            advertise=None,
            join=[*advertised.values(), *direct],
        )

    @property
    def hosts(self) -> range:
        return range(1, self.n + 1)

    def node_ids(self) -> dict[int, str]:
        return {h: d.node_id() for h, d in self.members.items()}

    def start(self, ready_within: float = 30.0) -> None:
        assert self.intruder is not None
        for d in [*self.members.values(), self.intruder]:
            d.start()
        for d in [*self.members.values(), self.intruder]:
            d.wait_ready(ready_within)

    def start_probe(self) -> None:
        from swarmd.identity import ClusterKeys

        key = ClusterKeys.from_secret(bytes.fromhex(self.secret)).public_z85
        targets = [f"{self.lan.ip(h)}:{p}" for h in self.hosts for p in (PORT, FORWARD_PORT)]
        argv = [sys.executable, "-m", "tests.chaos", "probe", key, *targets]
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        self.probe = self.lan.exec(
            self.intruder_host,
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )

    def stop_probe(self) -> dict[str, Any]:
        if self.probe is None:
            return {}
        if self.probe.poll() is None:
            self.probe.send_signal(signal.SIGTERM)
        try:
            out, _ = self.probe.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.probe.kill()
            out, _ = self.probe.communicate(timeout=5)
        self.probe_report = {"raw": out}
        for line in out.splitlines():
            with contextlib.suppress(ValueError):
                self.probe_report = json.loads(line)
        return self.probe_report

    # ------------------------------------------------------------ faults (ChaosEngine)

    def kill(self, host: int) -> None:
        self.members[host].kill()

    def restart(self, host: int) -> None:
        d = self.members[host]
        self._log_mark[host] = d.log_path.stat().st_size if d.log_path.exists() else 0
        d.start()

    def is_up(self, host: int) -> bool:
        """Whether the member's daemon finished starting (logged "listening on" since
        its last restart)."""
        d = self.members[host]
        with open(d.log_path, "rb") as f:
            f.seek(self._log_mark.get(host, 0))
            return b" listening on " in f.read()

    def pause(self, host: int) -> None:
        self.members[host].signal(signal.SIGSTOP)
        self.paused.add(host)

    def resume(self, host: int) -> None:
        self.members[host].signal(signal.SIGCONT)
        self.paused.discard(host)

    def term(self, host: int) -> None:
        self.members[host].signal(signal.SIGTERM)

    def wait_exit(self, host: int, timeout: float) -> int | None:
        try:
            return self.members[host].wait_exit(timeout)
        except subprocess.TimeoutExpired:
            return None

    def partition(self, host: int) -> None:
        self.lan.partition(host)

    def heal(self, host: int) -> None:
        self.lan.heal(host)

    def add_loss(self, host: int, percent: int) -> None:
        self.lan.add_loss(host, percent)

    def remove_loss(self, host: int) -> None:
        self.lan.remove_loss(host)

    def set_delay(self, host: int, seconds: float) -> None:
        self.forwarder.set_delay(f"h{host}", seconds)

    def ready(self, host: int) -> bool:
        d = self.members[host]
        return d.running and d.try_peers() is not None

    # ------------------------------------------------------------ healing and teardown

    def heal_all(self) -> list[str]:
        """Undo every fault: SIGCONT, nft tables gone, no delay, dead members restarted.
        Returns what it had to do (empty if the engine had already undone everything)."""
        done = []
        for h, d in self.members.items():
            if d.running:
                d.signal(signal.SIGCONT)
            if h in self.paused:
                done.append(f"SIGCONT h{h}")
                self.paused.discard(h)
        if self.lan.partitioned or self.lan.lossy:
            done.append(f"nft partitions {sorted(self.lan.partitioned)} loss {self.lan.lossy}")
        self.lan.heal_all()
        for route in self.forwarder.routes:
            if self.forwarder.delay(route) > 0:
                done.append(f"delay off {route}")
                self.forwarder.set_delay(route, 0.0)
        for h, d in self.members.items():
            if not d.running:
                done.append(f"restart h{h} (exit code {None if d.proc is None else d.proc.poll()})")
                d.start()
        return done

    def close(self) -> None:
        if self.probe is not None and self.probe.poll() is None:
            self.probe.kill()
            self.probe.wait(5)
        for d in [*self.members.values(), *([self.intruder] if self.intruder else [])]:
            if d.running:
                with contextlib.suppress(OSError):
                    d.signal(signal.SIGCONT)
                d.stop()
        self.forwarder.close()
        with contextlib.suppress(Exception):
            self.lan.heal_all()
        self.lan.kill_all()  # orphaned subtask processes, pool workers of killed daemons
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(self.lan.pids(h) for h in self.lan.hosts):
            time.sleep(0.05)
        self.lan.close()


# ---------------------------------------------------------------------- engine


class ChaosEngine(threading.Thread):
    """Apply a schedule to a cluster: each fault at its time (later if its host is still
    busy or a majority would not be up), undone after its duration."""

    def __init__(
        self, cluster: ChaosCluster, schedule: list[Fault], log: ChaosLog, *, term_exit_s: float
    ) -> None:
        super().__init__(name="chaos-engine", daemon=True)
        self.cluster = cluster
        self.schedule = schedule
        self.log = log
        self.term_exit_s = term_exit_s
        self.faulted: dict[int, str] = {}  # host -> kind of the fault on it now
        self.applied: Counter[str] = Counter()
        self.errors: list[str] = []
        self.sleep_states: list[str] = []  # what a peer listed each sleeper as, at its wake
        self.deferred_s = 0.0
        self.term_exit_codes: list[int | None] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0

    # ------------------------------------------------------------ state for the workload

    def busy(self) -> dict[int, str]:
        with self._lock:
            return dict(self.faulted)

    def impaired(self) -> int:
        with self._lock:
            return sum(1 for k in self.faulted.values() if k in IMPAIRING)

    # ------------------------------------------------------------ loop

    def _push(self, at: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, action))

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        for fault in self.schedule:
            self._push(fault.at, lambda f=fault: self._apply(f, fault_deferred=0.0))
        while self._heap and not self._halt.is_set():
            at, _, action = heapq.heappop(self._heap)
            wait = at - self.log.elapsed()
            if wait > 0 and self._halt.wait(wait):  # pacing the schedule, not synchronizing
                break
            try:
                action()
            except Exception as exc:
                self.errors.append(f"+{self.log.elapsed():.2f}s {exc!r}")
                self.log.note(f"ERROR {exc!r}")

    def _apply(self, fault: Fault, fault_deferred: float) -> None:
        h = fault.host
        with self._lock:
            host_busy = h in self.faulted
            majority_at_risk = (
                fault.kind in IMPAIRING
                and sum(1 for k in self.faulted.values() if k in IMPAIRING) >= MAX_IMPAIRED
            )
        if fault.kind == "sleep" and not host_busy and not majority_at_risk:
            # A laptop's suspend means something to a node that is up: one still
            # starting (restarted after a kill) ignores PrepareForSleep and is dead to
            # its peers while suspended (chaos seed 110).
            host_busy = not self.cluster.is_up(h)
        if (host_busy or majority_at_risk) and fault_deferred < DEFER_MAX_S:
            self.deferred_s += 0.25
            self._push(self.log.elapsed() + 0.25, lambda: self._apply(fault, fault_deferred + 0.25))
            return
        if host_busy or majority_at_risk:
            self.errors.append(f"{fault.describe()}: could not be applied for {DEFER_MAX_S} s")
            return
        c = self.cluster
        with self._lock:
            self.faulted[h] = fault.kind
        late = f"deferred {fault_deferred:.2f}s" if fault_deferred else ""
        if fault.kind in ("kill", "vanish"):
            c.kill(h)
            self.log.add(fault, "SIGKILL", late)
        elif fault.kind == "stop":
            c.pause(h)
            self.log.add(fault, "SIGSTOP", late)
        elif fault.kind == "sleep":
            c.members[h].signal(signal.SIGUSR1)
            self.log.add(fault, "SIGUSR1 (prepare for sleep)", late)
            self._push(self.log.elapsed() + SUSPEND_AFTER_S, lambda: self._suspend(fault))
        elif fault.kind == "term":
            c.term(h)
            self.log.add(fault, "SIGTERM", late)
        elif fault.kind == "partition":
            c.partition(h)
            self.log.add(fault, "partition (nft drop all)", late)
        elif fault.kind == "loss":
            c.add_loss(h, fault.param)
            self.log.add(fault, f"loss {fault.param}% (nft numgen)", late)
        elif fault.kind == "delay":
            c.set_delay(h, fault.param / 1000)
            self.log.add(fault, f"delay {fault.param}ms per direction (forwarder)", late)
        self.applied[fault.kind] += 1
        self._push(self.log.elapsed() + fault.duration, lambda: self._recover(fault))

    def _recover(self, fault: Fault) -> None:
        h, c = fault.host, self.cluster
        if fault.kind in ("kill", "vanish"):
            c.restart(h)
            self.log.add(fault, "restart")
            self._when_ready(fault)
            return
        if fault.kind == "term":
            code = c.wait_exit(h, self.term_exit_s)
            self.term_exit_codes.append(code)
            if code is None:
                self.errors.append(
                    f"{fault.describe()}: still running {self.term_exit_s} s after SIGTERM"
                )
                c.kill(h)
            c.restart(h)
            self.log.add(fault, "restart", f"exited {code}")
            self._when_ready(fault)
            return
        if fault.kind == "stop":
            c.resume(h)
            self.log.add(fault, "SIGCONT")
        elif fault.kind == "sleep":
            self._check_sleeping(fault)
            c.resume(h)
            c.members[h].signal(signal.SIGUSR2)
            self.log.add(fault, "SIGCONT, SIGUSR2 (wake)")
        elif fault.kind == "partition":
            c.heal(h)
            self.log.add(fault, "heal partition")
        elif fault.kind == "loss":
            c.remove_loss(h)
            self.log.add(fault, "heal loss")
        elif fault.kind == "delay":
            c.set_delay(h, 0.0)
            self.log.add(fault, "delay off")
        with self._lock:
            self.faulted.pop(h, None)

    def _suspend(self, fault: Fault) -> None:
        self.cluster.pause(fault.host)
        self.log.add(fault, "SIGSTOP (suspended)")

    def _check_sleeping(self, fault: Fault) -> None:
        """Just before it wakes, a live peer lists the sleeper ``sleeping``, not dead."""
        c, name = self.cluster, f"h{fault.host}"
        with self._lock:
            peers = [h for h in c.members if self.faulted.get(h) not in UNRESPONSIVE]
            peers = [h for h in peers if h != fault.host]
        for p in peers:
            try:
                state = c.members[p].states().get(name)
            except Exception:  # that peer is busy: ask another
                continue
            self.sleep_states.append(str(state))
            if state != "sleeping":
                self.errors.append(f"{fault.describe()}: h{p} lists {name} {state!r}")
            return

    def _when_ready(self, fault: Fault) -> None:
        """The host counts as faulted until its restarted daemon answers."""

        def wait() -> None:
            try:
                wait_until(lambda: self.cluster.ready(fault.host), 30, 0.1, f"h{fault.host} ready")
                self.log.add(fault, "answering again")
            except AssertionError as exc:
                self.errors.append(f"{fault.describe()}: {exc}")
            finally:
                with self._lock:
                    self.faulted.pop(fault.host, None)

        threading.Thread(target=wait, name=f"ready-h{fault.host}", daemon=True).start()


# ---------------------------------------------------------------------- workload


def mark(path: str, seconds: float = 0.0) -> str:
    """A python subtask (``tests.chaos:mark``): record this execution, return its token."""
    token = uuid.uuid4().hex
    with open(path, "a") as f:
        f.write(token + "\n")
    if seconds:
        time.sleep(seconds)
    return token


def _shell(marker: Path, seconds: float, extra: str = "") -> list[str]:
    """Append a fresh token to ``marker`` (one line per execution) and print it."""
    script = f'n=$(cat /proc/sys/kernel/random/uuid); echo "$n" >> {marker}; '
    if seconds:
        script += f"sleep {seconds}; "
    script += f'echo "$n{(" " + extra) if extra else ""}"'
    return ["sh", "-c", script]


@dataclass
class Submitted:
    task: str
    host: int  # the coordinator
    shape: str  # shell | python | dag
    key: str  # marker file prefix
    subtasks: tuple[str, ...]
    at: float
    early: dict[str, Any] | None = None  # its result when first seen final, during the run
    cancel_requested: bool = False
    status: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    explain: dict[str, Any] | None = None


def make_job(rng: random.Random, markers: Path, key: str) -> tuple[str, dict[str, Any]]:
    """One job of a random shape; every subtask leaves one marker line per execution."""
    shape = rng.choices(["shell", "python", "dag"], weights=[5, 2, 3])[0]
    common = {"retries": 20, "timeout": "60s"}
    sleep = rng.choice([0, 0, 0.3, 1.0, 2.0, 3.0])
    if shape == "shell":
        subtasks = [{"id": "main", "kind": "shell", "run": _shell(markers / f"{key}.main", sleep)}]
    elif shape == "python":
        subtasks = [
            {
                "id": "main",
                "kind": "python",
                "call": "tests.chaos:mark",
                "args": [str(markers / f"{key}.main"), sleep],
            }
        ]
    else:
        m = {s: markers / f"{key}.{s}" for s in "abcd"}
        subtasks = [
            {"id": "a", "kind": "shell", "run": _shell(m["a"], sleep)},
            {
                "id": "b",
                "kind": "shell",
                "run": _shell(m["b"], 0, "{{ a.stdout }}"),
                "after": ["a"],
            },
            {
                "id": "c",
                "kind": "shell",
                "run": _shell(m["c"], 0.2, "{{ a.stdout }}"),
                "after": ["a"],
            },
            {
                "id": "d",
                "kind": "shell",
                "run": _shell(m["d"], 0, "{{ b.stdout }} {{ c.stdout }}"),
                "after": ["b", "c"],
            },
        ]
    for s in subtasks:
        s.update(common)
    return shape, {"name": f"chaos-{shape}-{key}", "subtask": subtasks}


class Workload(threading.Thread):
    """Submit a job every 0.3-0.8 s to a live member (rotating), cancel one now and then,
    and watch: tasks that finished (their result, to compare with the end), and that the
    intruder never shows up in a member's view."""

    def __init__(
        self,
        cluster: ChaosCluster,
        engine: ChaosEngine,
        seed: int,
        markers: Path,
        intruder_id: str,
        log: ChaosLog,
    ) -> None:
        super().__init__(name="chaos-workload", daemon=True)
        self.cluster = cluster
        self.engine = engine
        self.jobs_rng = random.Random(seed * 7919 + 1)  # the jobs: same for the same seed
        self.rng = random.Random(seed * 7919 + 2)  # targets: depends on who is up
        self.markers = markers
        self.intruder_id = intruder_id
        self.log = log
        self.submitted: list[Submitted] = []
        self.unconfirmed: list[str] = []  # submissions whose reply never came
        self.refused: list[str] = []  # submissions a member answered with an error
        self.cancels = 0
        self.view_checks = 0
        self.intruder_seen: list[str] = []
        self.errors: list[str] = []
        self._halt = threading.Event()
        self._poll = 0

    def stop(self) -> None:
        self._halt.set()

    def live_hosts(self) -> list[int]:
        busy = self.engine.busy()
        return [
            h
            for h, d in self.cluster.members.items()
            if busy.get(h) not in UNRESPONSIVE and d.running
        ]

    def run(self) -> None:
        n = 0
        next_view = 0.0
        while not self._halt.is_set():
            n += 1
            try:
                self._submit_one(n)
                self._watch_one()
                if time.monotonic() >= next_view:
                    next_view = time.monotonic() + 2.0
                    self._check_view()
                if self.submitted and self.jobs_rng.random() < 0.05:
                    self._cancel_one()
            except Exception as exc:  # keep going: a failed call is not a test failure
                self.errors.append(repr(exc))
            self._halt.wait(self.jobs_rng.uniform(0.3, 0.8))  # pacing the workload

    def _submit_one(self, n: int) -> None:
        key = f"j{n:04d}"
        shape, job = make_job(self.jobs_rng, self.markers, key)
        hosts = self.live_hosts()
        if not hosts:
            return
        host = self.rng.choice(hosts)
        d = self.cluster.members[host]
        try:
            reply = d.call(SubmitRequest(job=job), timeout=3.0)
        except Unreachable as exc:
            self.unconfirmed.append(f"{key} to h{host}: {exc}")
            return
        except RequestFailed as exc:
            self.refused.append(f"{key} to h{host}: {exc}")
            return
        if not isinstance(reply, SubmitReply):
            self.refused.append(f"{key} to h{host}: {reply!r}")
            return
        subtasks = tuple(s["id"] for s in job["subtask"])
        self.submitted.append(Submitted(reply.task, host, shape, key, subtasks, self.log.elapsed()))

    def _open_tasks(self) -> list[Submitted]:
        return [s for s in self.submitted if s.early is None]

    def _watch_one(self) -> None:
        """Poll one unfinished task; when it is final, keep its result."""
        live = set(self.live_hosts())
        candidates = [s for s in self._open_tasks() if s.host in live]
        if not candidates:
            return
        self._poll += 1
        s = candidates[self._poll % len(candidates)]
        d = self.cluster.members[s.host]
        with contextlib.suppress(Unreachable, RequestFailed):
            status = d.call(TaskRequest(task=s.task, what="status"))
            if isinstance(status, TaskReply) and status.body["state"] in FINAL_TASK:
                result = d.call(TaskRequest(task=s.task, what="result"))
                if isinstance(result, TaskReply):
                    s.early = result.body

    def _check_view(self) -> None:
        live = self.live_hosts()
        if not live:
            return
        host = self.rng.choice(live)
        peers = self.cluster.members[host].try_peers()
        if peers is None:
            return
        self.view_checks += 1
        if any(p["id"] == self.intruder_id for p in peers):
            self.intruder_seen.append(f"+{self.log.elapsed():.2f}s in h{host}'s view: {peers}")

    def _cancel_one(self) -> None:
        live = set(self.live_hosts())
        candidates = [s for s in self._open_tasks() if s.host in live and not s.cancel_requested]
        if not candidates:
            return
        s = candidates[-1]  # the newest: most likely still running
        with contextlib.suppress(Unreachable, RequestFailed):
            self.cluster.members[s.host].call(TaskRequest(task=s.task, what="cancel"))
            s.cancel_requested = True
            self.cancels += 1


# ---------------------------------------------------------------------- invariants


def fetch(cluster: ChaosCluster, s: Submitted, what: str) -> dict[str, Any] | None:
    """``what`` of the task from whoever coordinates it now: its coordinator, or the
    successor that adopted it (its old coordinator says "moved" once it knows; while
    that one is down, the member that answers with the newest epoch)."""
    for _ in range(len(cluster.members)):
        try:
            reply = cluster.members[s.host].call(TaskRequest(task=s.task, what=what), timeout=3.0)  # type: ignore[arg-type]
        except RequestFailed as exc:
            moved = _moved_to(cluster, str(exc))
            if moved is None or moved == s.host:
                return None
            s.host = moved  # follow it
            continue
        except Unreachable:
            return _search(cluster, s, what)
        if not isinstance(reply, TaskReply):
            return None
        # A node asked about a task it gave up forwards to whoever coordinates it now:
        # the answer names that node (by name: hN).
        coordinator = str(reply.body.get("coordinator") or "")
        now_at = next((h for h in cluster.members if f"h{h}" == coordinator), None)
        if now_at is not None and now_at != s.host and what == "status":
            s.host = now_at  # follow it
        return reply.body
    return None


def _moved_to(cluster: ChaosCluster, message: str) -> int | None:
    """The host a "task ... moved: NODE (ADDR) adopted it" answer names."""
    if "moved: " not in message:
        return None
    node = message.split("moved: ", 1)[1].split(" ", 1)[0]
    return next((h for h, i in cluster.node_ids().items() if i == node), None)


def _search(cluster: ChaosCluster, s: Submitted, what: str) -> dict[str, Any] | None:
    """Its coordinator is down: a successor may have adopted the task (epoch > 1)."""
    found: tuple[int, int, dict[str, Any]] | None = None
    for h, d in cluster.members.items():
        if h == s.host:
            continue
        try:
            status = d.call(TaskRequest(task=s.task, what="status"), timeout=1.0)
        except (Unreachable, RequestFailed):
            continue
        if not isinstance(status, TaskReply) or status.body.get("coordinator") != d.name:
            continue
        epoch = int(status.body.get("epoch", 1))
        if epoch > 1 and (found is None or epoch > found[0]):
            found = (epoch, h, status.body)
    if found is None:
        return None
    s.host = found[1]
    return found[2] if what == "status" else fetch(cluster, s, what)


def wait_all_final(cluster: ChaosCluster, submitted: list[Submitted], timeout: float) -> list[str]:
    """Invariant 1: every submitted task reaches done/failed/cancelled at its coordinator
    (re-adopted from the journal if that coordinator was restarted)."""
    pending = {s.task: s for s in submitted}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for task, s in list(pending.items()):
            status = fetch(cluster, s, "status")
            if status is not None and status["state"] in FINAL_TASK:
                s.status = status
                del pending[task]
        if pending:
            time.sleep(0.25)
    return [
        f"task {s.task} (h{s.host}, {s.shape}) not final after {timeout:.0f} s: "
        f"{fetch(cluster, s, 'status')}"
        for s in pending.values()
    ]


def check_unknown_tasks(
    cluster: ChaosCluster, known: set[str], timeout: float = 30.0
) -> tuple[list[str], int]:
    """Every task any member coordinates is final too, including submissions whose
    reply was lost (such a task may have started late: it gets ``timeout``).
    Returns (violations, number of tasks the workload did not know)."""
    deadline = time.monotonic() + timeout
    while True:
        violations: list[str] = []
        unknown = 0
        for h, d in cluster.members.items():
            reply = d.call(TasksRequest(), timeout=5.0)
            assert isinstance(reply, TasksReply)
            for row in reply.tasks:
                if row["id"] not in known:
                    unknown += 1
                if row["state"] not in FINAL_TASK:
                    violations.append(f"h{h} coordinates {row['id']} still {row['state']}: {row}")
        if not violations or time.monotonic() >= deadline:
            return violations, unknown
        time.sleep(0.5)


def _token(shape: str, sub: Mapping[str, Any]) -> str | None:
    """The execution token a committed result carries (the first word it printed)."""
    if shape == "python":
        out = sub.get("output")
        return None if out is None else str(json.loads(out))
    stdout = sub.get("stdout") or ""
    words = stdout.split()
    return words[0] if words else None


def check_commits(s: Submitted, markers: Path) -> tuple[list[str], Counter[str]]:
    """Invariant 2 for one finished task: each subtask has exactly one committed result.

    Committed: the result ``result`` reports, from the one attempt ``explain`` lists as
    ``done``, which must be the subtask's last attempt. That result's token must name an
    execution that really happened (a line of the subtask's marker file, exactly once)
    — executions may be more than one (re-dispatch after a lost node), commits never.
    A DAG child's output must quote its parents' committed tokens (so no parent result
    changed after its children were rendered), and a result seen during the run must be
    the one reported at the end (no second commit after the task finished).
    """
    out: list[str] = []
    counts: Counter[str] = Counter()
    assert s.result is not None and s.explain is not None and s.status is not None
    subs = s.result["subtasks"]
    rows = {r["id"]: r for r in s.explain["subtasks"]}
    for sid in s.subtasks:
        where = f"{s.task}/{sid} ({s.shape}, coordinator h{s.host})"
        sub, row = subs[sid], rows[sid]
        lines = []
        marker = markers / f"{s.key}.{sid}"
        if marker.exists():
            lines = [x for x in marker.read_text().split("\n") if x]
        counts["executions"] += len(lines)
        counts["attempts"] += len(row["attempts"])
        for a in row["attempts"]:
            counts[f"attempt_{a['state']}"] += 1
        done_attempts = [a for a in row["attempts"] if a["state"] == "done"]
        state = sub["state"]
        counts[f"subtask_{state}"] += 1
        if state == "done":
            counts["commits"] += 1
            if len(done_attempts) != 1:
                out.append(f"{where}: {len(done_attempts)} attempts done: {row['attempts']}")
            elif row["attempts"][-1]["number"] != done_attempts[0]["number"]:
                out.append(f"{where}: the done attempt is not the last: {row['attempts']}")
            token = _token(s.shape, sub)
            if token is None or lines.count(token) != 1:
                out.append(
                    f"{where}: committed token {token!r} found {lines.count(token or '')} time(s)"
                    f" among the {len(lines)} execution(s) {lines}"
                )
            if sub.get("exit_code") not in (0, None):
                out.append(f"{where}: done with exit code {sub.get('exit_code')}")
        else:
            if done_attempts:
                out.append(f"{where}: {state} but an attempt is done: {row['attempts']}")
            if state == "failed" and sub.get("exit_code") is not None:
                counts["app_failures"] += 1
        if len(lines) > len(row["attempts"]):
            out.append(f"{where}: {len(lines)} executions but {len(row['attempts'])} attempts")
    if s.shape == "dag" and all(subs[x]["state"] == "done" for x in "abcd"):
        tok = {x: (subs[x]["stdout"] or "").split() for x in "abcd"}
        if tok["b"][1:] != tok["a"][:1] or tok["c"][1:] != tok["a"][:1]:
            out.append(f"{s.task}: b/c do not quote a's committed token: {tok}")
        if tok["d"][1:] != tok["b"] + tok["c"]:
            out.append(f"{s.task}: d does not quote b and c: {tok}")
    if s.early is not None:
        early = {k: (v["state"], v["stdout"], v["output"]) for k, v in s.early["subtasks"].items()}
        late = {k: (v["state"], v["stdout"], v["output"]) for k, v in subs.items()}
        if early != late:
            out.append(f"{s.task}: result changed after it finished: {early} -> {late}")
    return out, counts


def membership_views(cluster: ChaosCluster) -> dict[int, dict[str, str] | None]:
    views = {}
    for h, d in cluster.members.items():
        peers = d.try_peers()
        views[h] = None if peers is None else {p["id"]: p["state"] for p in peers}
    return views


def views_agree(cluster: ChaosCluster, member_ids: set[str]) -> bool:
    """Invariant 4: every member lists exactly the members, all alive."""
    views = membership_views(cluster)
    return all(v is not None and v == dict.fromkeys(member_ids, "alive") for v in views.values())


def check_outsiders(
    cluster: ChaosCluster, intruder_id: str, member_ids: set[str], probe: Mapping[str, Any]
) -> list[str]:
    """Invariant 3: nothing from outside the cluster was accepted."""
    out: list[str] = []
    for h, view in membership_views(cluster).items():
        if view is not None and intruder_id in view:
            out.append(f"h{h} lists the intruder {intruder_id}: {view}")
    assert cluster.intruder is not None
    iview = cluster.intruder.try_peers() or []
    if any(p["id"] in member_ids for p in iview):
        out.append(f"the intruder lists members: {iview}")
    for h, d in cluster.members.items():
        if intruder_id in d.log():
            out.append(f"h{h}'s log mentions the intruder's id {intruder_id}")
    if not probe.get("attempts"):
        out.append(f"the probe made no attempts: {probe}")
    if probe.get("replies"):
        out.append(f"a member answered the probe (no secret, right server key): {probe}")
    return out


def check_logs(cluster: ChaosCluster) -> list[str]:
    """No member logged an error or a traceback (an internal task failing, an executor
    bug, an identity conflict after a restart with the same state dir ...)."""
    out = []
    for h, d in cluster.members.items():
        for line in d.log().splitlines():
            if " ERROR " in line or "Traceback" in line or " CRITICAL " in line:
                out.append(f"h{h}: {line}")
    return out


def denial_counters(cluster: ChaosCluster) -> dict[int, dict[str, int]]:
    out = {}
    for h, d in cluster.members.items():
        c = d.counters()
        out[h] = {
            "handshake_failed": sum(v for k, v in c.items() if k.startswith("handshake_failed")),
            "zap_denied": c.get("zap_denied", 0),
            "dropped_unauthenticated": c.get("dropped_unauthenticated", 0),
            "mdns_foreign_cluster": c.get("mdns_foreign_cluster", 0),
        }
    return out


def read_journal(db: Path) -> dict[str, dict[str, Any]]:
    """task -> {"state": ..., "subtasks": {id: journal record}} from a stopped node's
    SQLite file, opened read-only."""
    import msgspec

    tasks: dict[str, dict[str, Any]] = {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for kind, task, subtask, data in conn.execute(
            "SELECT kind, task, subtask, data FROM journal ORDER BY seq"
        ):
            rec = msgspec.msgpack.decode(data)
            entry = tasks.setdefault(task, {"state": None, "subtasks": {}})
            if kind == "task_state":
                entry["state"] = rec["state"]
            elif kind == "subtask":
                entry["subtasks"][subtask] = rec
    finally:
        conn.close()
    return tasks


def outbox_size(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        conn.close()


def check_journal(cluster: ChaosCluster, submitted: list[Submitted]) -> list[str]:
    """After the members stopped: each coordinator's journal says what the API said —
    the final state, and for each subtask at most one done attempt and the same result."""
    out: list[str] = []
    journals = {h: read_journal(d.state_dir / "swarmd.db") for h, d in cluster.members.items()}
    for s in submitted:
        entry = journals[s.host].get(s.task)
        if entry is None:
            out.append(f"{s.task}: not in h{s.host}'s journal")
            continue
        assert s.status is not None and s.result is not None
        if entry["state"] != s.status["state"]:
            out.append(f"{s.task}: journal says {entry['state']}, status said {s.status['state']}")
        for sid in s.subtasks:
            rec = entry["subtasks"].get(sid)
            if rec is None:
                out.append(f"{s.task}/{sid}: no subtask record in the journal")
                continue
            done = [a for a in rec["attempts"] if a["state"] == "done"]
            if len(done) > 1 or (rec["state"] == "done") != (len(done) == 1):
                out.append(
                    f"{s.task}/{sid}: journal {rec['state']} with attempts {rec['attempts']}"
                )
            api = s.result["subtasks"][sid]
            res = rec.get("result") or {}
            if rec["state"] == "done" and res.get("stdout") != api["stdout"]:
                out.append(f"{s.task}/{sid}: journal result {res} != reported {api}")
    return out


# ---------------------------------------------------------------------- intruder probe


def probe_main(argv: list[str]) -> int:
    """``python -m tests.chaos probe SERVER_KEY HOST:PORT...``: until SIGTERM, dial each
    target as a CURVE client with the cluster's *public* key but a key pair of its own
    (not the secret), ask for the peer list, and count the replies (members must give
    none: without a credential signed by the cluster's authority every request but an
    enrollment is dropped and counted as ``dropped_unauthenticated``). Prints one JSON
    line at the end."""
    import zmq

    server_key, targets = argv[0].encode(), argv[1:]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ctx = zmq.Context()
    attempts = replies = 0
    request = codec.encode(PeersRequest())
    while not stop.is_set():
        for target in targets:
            if stop.is_set():
                break
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            public, secret = zmq.curve_keypair()
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.curve_serverkey = server_key
            sock.connect(f"tcp://{target}")
            sock.send(request)
            attempts += 1
            if sock.poll(400, zmq.POLLIN):
                sock.recv()
                replies += 1
            sock.close(linger=0)
    ctx.term()
    print(json.dumps({"attempts": attempts, "replies": replies, "targets": targets}), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "probe":
        sys.exit(probe_main(sys.argv[2:]))
    print("usage: python -m tests.chaos probe SERVER_KEY HOST:PORT...", file=sys.stderr)
    sys.exit(2)
