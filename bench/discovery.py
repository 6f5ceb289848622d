"""Discovery and gossip convergence with real daemons on loopback.

    python -m bench.discovery [--quick] [--sizes 5,10,20,30] [--trials 5]

1. **Join**: a cluster of k daemons (k = 3, 10) is formed and settled; then one new
   daemon is started, and we time until every one of the k lists it ``alive`` (and
   until it lists all k alive). Two clocks start: ``spawn`` (``time.monotonic()``
   just before ``Popen``: includes the Python interpreter start and imports, ~0.5-1 s
   of CPU here) and ``answers`` (the first time its control socket answers a
   ``peers`` request, polled every 10 ms). Both discovery paths are measured: ``seed``
   (``--join`` the first node's address, ``--no-mdns``) and ``mdns`` (no seed: python-
   zeroconf on 127.0.0.1). Each trial is a brand-new node (fresh state dir); the one
   before it leaves with SIGTERM.
2. **Convergence**: N daemons (N = 5, 10, 20, 30) are spawned at once; we time until
   every node lists all N alive, from the last spawn and from the moment the last
   control socket answers. Seeded (every node ``--join`` the first one) and, for the
   sizes listed in ``mdns_sizes``, by mDNS alone.

Views are read over each daemon's unix control socket (``peers``), round-robin over the
nodes that do not yet see what we wait for: a time is the first poll that sees it, so
its resolution is one polling sweep (recorded as ``sweep_ms``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Poller, daemons, fmt_summary, load, save, summary, table
from tests.harness import Daemon, new_secret

FORM_TIMEOUT_S = 120.0


def _args(mode: str, seed: Daemon | None) -> tuple[str, ...]:
    if mode == "mdns":
        return ()
    return ("--no-mdns",) if seed is None else ("--no-mdns", "--join", seed.address)


def _wait_views(
    pollers: dict[str, Poller], want: dict[str, dict[str, str]], timeout: float, interval: float
) -> tuple[dict[str, float], float]:
    """Poll until each node's view contains ``want[node]``; (node -> the first time it
    did, mean seconds per polling sweep)."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    sweeps, swept = 0, 0.0
    while len(seen) < len(pollers):
        t = time.monotonic()
        if t > deadline:
            missing = sorted(set(pollers) - set(seen))
            raise TimeoutError(f"after {timeout} s, {missing} do not see what we wait for")
        for name, poller in pollers.items():
            if name in seen:
                continue
            view = poller.states()
            if view is not None and all(view.get(k) == v for k, v in want[name].items()):
                seen[name] = time.monotonic()
        sweeps += 1
        swept += time.monotonic() - t
        if len(seen) < len(pollers):
            time.sleep(interval)
    return seen, swept / max(1, sweeps)


def _everyone(pollers: dict[str, Poller], names: list[str]) -> dict[str, dict[str, str]]:
    return {p: {n: "alive" for n in names} for p in pollers}


def _wait_answers(poller: Poller, timeout: float, interval: float = 0.01) -> float:
    deadline = time.monotonic() + timeout
    while poller.states() is None:
        if time.monotonic() > deadline:
            raise TimeoutError("the control socket did not answer")
        time.sleep(interval)
    return time.monotonic()


# ---------------------------------------------------------------- joining a cluster


def join_trials(k: int, mode: str, trials: int) -> dict[str, Any]:
    """k settled daemons, then ``trials`` new ones joining one after another."""
    out: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="swarmd-bench-join-") as tmp:
        root = Path(tmp)
        secret = new_secret()
        first = Daemon(root, "c0", secret=secret, args=_args(mode, None))
        members = [first] + [
            Daemon(root, f"c{i}", secret=secret, args=_args(mode, first)) for i in range(1, k)
        ]
        joiners = [
            Daemon(root, f"new{t}", secret=secret, args=_args(mode, first)) for t in range(trials)
        ]
        with daemons(members + joiners):
            for d in members:
                d.start()
            pollers = {d.name: Poller(d.state_dir) for d in members}
            try:
                names = [d.name for d in members]
                _wait_views(pollers, _everyone(pollers, names), FORM_TIMEOUT_S, 0.05)
                time.sleep(2.0)  # a settled cluster: a few seconds of heartbeats
                for new in joiners:
                    own = Poller(new.state_dir)
                    try:
                        t_spawn = time.monotonic()
                        new.start()
                        t_answers = _wait_answers(own, 60)
                        want = {p: {new.name: "alive"} for p in pollers}
                        want[new.name] = {n: "alive" for n in names}
                        seen, sweep = _wait_views({**pollers, new.name: own}, want, 60, 0.005)
                    finally:
                        own.close()
                    t_sees_all = seen.pop(new.name)
                    t_all = max(seen.values())
                    out.append(
                        {
                            "spawn_to_answers_s": round(t_answers - t_spawn, 4),
                            "spawn_to_all_see_it_s": round(t_all - t_spawn, 4),
                            "answers_to_all_see_it_s": round(t_all - t_answers, 4),
                            "answers_to_it_sees_all_s": round(t_sees_all - t_answers, 4),
                            "sweep_ms": round(sweep * 1000, 1),
                        }
                    )
                    new.signal(signal.SIGTERM)
                    new.wait_exit(30)
            finally:
                for p in pollers.values():
                    p.close()
    keys = list(out[0]) if out else []
    return {
        "k": k,
        "mode": mode,
        "trials": out,
        **{key: summary(t[key] for t in out) for key in keys},
    }


# ---------------------------------------------------------------- N daemons at once


def converge(n: int, mode: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="swarmd-bench-conv-") as tmp:
        root = Path(tmp)
        secret = new_secret()
        first = Daemon(root, "m00", secret=secret, args=_args(mode, None))
        nodes = [first] + [
            Daemon(root, f"m{i:02d}", secret=secret, args=_args(mode, first)) for i in range(1, n)
        ]
        pollers = {d.name: Poller(d.state_dir) for d in nodes}
        try:
            with daemons(nodes):
                t_first = time.monotonic()
                for d in nodes:
                    d.start()
                t_spawned = time.monotonic()
                answered = {d.name: _wait_answers(pollers[d.name], 120, 0.02) for d in nodes}
                t_answers = max(answered.values())
                everyone = {d.name: "alive" for d in nodes}
                seen, sweep = _wait_views(
                    pollers, _everyone(pollers, list(everyone)), FORM_TIMEOUT_S, 0.02
                )
                t_conv = max(seen.values())
                # still true a moment later (no flapping during formation)?
                time.sleep(1.0)
                stable = all(p.states() == everyone for p in pollers.values())
                rss = _total_rss_mib(nodes)
        finally:
            for p in pollers.values():
                p.close()
    return {
        "n": n,
        "mode": mode,
        "spawn_all_s": round(t_spawned - t_first, 3),
        "first_spawn_to_last_answers_s": round(t_answers - t_first, 3),
        "last_spawn_to_converged_s": round(t_conv - t_spawned, 3),
        "last_answers_to_converged_s": round(max(0.0, t_conv - t_answers), 3),
        "first_spawn_to_converged_s": round(t_conv - t_first, 3),
        "sweep_ms": round(sweep * 1000, 1),
        "stable_after_1s": stable,
        "total_rss_mib": rss,
    }


def _total_rss_mib(nodes: list[Daemon]) -> float | None:
    import psutil

    total = 0
    for d in nodes:
        if d.proc is None:
            continue
        try:
            total += psutil.Process(d.proc.pid).memory_info().rss
        except psutil.Error:
            return None
    return round(total / 2**20, 1)


# ---------------------------------------------------------------- the section


def run(
    quick: bool = False,
    sizes: tuple[int, ...] | None = None,
    mdns_sizes: tuple[int, ...] | None = None,
    trials: int | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    trials = trials if trials is not None else (1 if quick else 5)
    sizes = sizes if sizes is not None else ((3, 5) if quick else (5, 10, 20, 30))
    mdns_sizes = mdns_sizes if mdns_sizes is not None else (() if quick else (5, 10, 20))
    ks = (3,) if quick else (3, 10)
    modes = ("seed",) if quick else ("seed", "mdns")
    result: dict[str, Any] = {"quick": quick, "load_before": load()}
    result["join"] = [join_trials(k, mode, trials) for mode in modes for k in ks]
    conv = [converge(n, "seed") for n in sizes]
    conv += [converge(n, "mdns") for n in mdns_sizes]
    result["converge"] = conv
    result["load_after"] = load()
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "### Discovery: a new node joins a running cluster (real daemons, loopback)",
        "",
        "*spawn* = just before the process is started (includes interpreter start and "
        "imports); *answers* = its control socket first answers. *all see it* = every "
        "existing member lists it alive; *it sees all* = it lists every member alive. "
        "seed = `--join` the first member, `--no-mdns`; mdns = no seed, mDNS on 127.0.0.1. "
        "Cells: seconds, median (min-max, p90) over "
        f"{max((j.get('spawn_to_answers_s', {}).get('n', 0) for j in result['join']), default=0)}"
        " joins.",
        "",
    ]
    rows = [
        [
            j["mode"],
            j["k"],
            fmt_summary(j.get("spawn_to_answers_s")),
            fmt_summary(j.get("spawn_to_all_see_it_s")),
            fmt_summary(j.get("answers_to_all_see_it_s")),
            fmt_summary(j.get("answers_to_it_sees_all_s")),
        ]
        for j in result["join"]
    ]
    lines.append(
        table(
            [
                "discovery",
                "members",
                "spawn -> answers",
                "spawn -> all see it",
                "answers -> all see it",
                "answers -> it sees all",
            ],
            rows,
        )
    )
    lines += [
        "",
        "### Gossip convergence: N daemons started at once (real processes, loopback)",
        "",
        "Time until every node lists all N alive. *from last answers* starts when the last "
        "control socket first answers (all processes up); *from first spawn* includes "
        "starting N Python processes on this machine's cores.",
        "",
    ]
    rows = [
        [
            c["n"],
            c["mode"],
            f"{c['first_spawn_to_last_answers_s']:.2f}",
            f"{c['last_answers_to_converged_s']:.2f}",
            f"{c['first_spawn_to_converged_s']:.2f}",
            "yes" if c["stable_after_1s"] else "NO",
            c["total_rss_mib"],
        ]
        for c in result["converge"]
    ]
    lines.append(
        table(
            [
                "N",
                "discovery",
                "first spawn -> last answers (s)",
                "last answers -> converged (s)",
                "first spawn -> converged (s)",
                "stable 1 s later",
                "RSS of all (MiB)",
            ],
            rows,
        )
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", help="N for the convergence runs, e.g. 5,10,20,30")
    parser.add_argument("--mdns-sizes", help="N for mDNS-only convergence runs")
    parser.add_argument("--trials", type=int)
    args = parser.parse_args()

    def ints(text: str | None) -> tuple[int, ...] | None:
        return None if text is None else tuple(int(x) for x in text.split(",") if x)

    result = run(args.quick, ints(args.sizes), ints(args.mdns_sizes), args.trials)
    save("discovery", result)
    print(markdown(result))


if __name__ == "__main__":
    main()
