"""Every benchmark in one command: JSON and a markdown report.

    python -m bench.run_all [--quick] [--only a,b] [--skip a,b] [--binary PATH] [--out DIR]

Runs the sections below in order. Each is a module with ``run(quick: bool = False) ->
dict`` and ``markdown(result: dict) -> str``. A section that raises is recorded as
``{"error": ..., "traceback": ...}`` and the others still run; a section whose module
cannot be imported is recorded as skipped with the reason. Writes ``all.json`` (machine,
per section: result, seconds, status) and ``RESULTS.md`` (a machine header, then each
section's tables) into ``bench/results/`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Section:
    name: str
    module: str
    title: str


SECTIONS: tuple[Section, ...] = (
    Section("failover", "bench.failover", "Failure detection and re-dispatch"),
    Section("discovery", "bench.discovery", "Discovery and convergence (real daemons)"),
    Section("simconv", "bench.simconv", "Convergence at scale (simulator)"),
    Section("footprint", "bench.footprint", "Footprint"),
    Section("compare", "bench.compare", "Dispatch side by side (Ray, Dask, Celery)"),
    Section("scheduling", "bench.scheduling", "Scheduling quality (HEFT SLR, agent workload)"),
    Section("llm_batching", "bench.llm_batching", "Small llm prompts grouped vs not (llama.cpp)"),
    Section("gateway", "bench.gateway", "OpenAI gateway overhead (vs direct, vs LiteLLM)"),
)

Runner = Callable[[bool], dict[str, Any]]
Renderer = Callable[[dict[str, Any]], str]
Loader = Callable[[str], tuple[Runner, Renderer]]


def load_module(module: str) -> tuple[Runner, Renderer]:
    mod = importlib.import_module(module)
    return mod.run, mod.markdown


# ---------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip()


def machine() -> dict[str, Any]:
    import psutil

    status = _git("status", "--porcelain", "--untracked-files=no")
    one, five, fifteen = os.getloadavg()
    return {
        "cpu": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "swarmd_commit": _git("rev-parse", "HEAD"),
        "swarmd_dirty": bool(status) if status is not None else None,
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "load_at_start": [round(one, 2), round(five, 2), round(fifteen, 2)],
    }


# ---------------------------------------------------------------- running


def select(names: Iterable[str], only: str | None, skip: str | None) -> list[str]:
    """The section names to run, in order; unknown names in --only/--skip are an error."""
    names = list(names)

    def parse(text: str | None) -> list[str]:
        got = [x.strip() for x in (text or "").split(",") if x.strip()]
        unknown = [x for x in got if x not in names]
        if unknown:
            raise SystemExit(f"unknown section(s) {unknown}; sections: {', '.join(names)}")
        return got

    chosen = parse(only) or names
    skipped = set(parse(skip))
    return [n for n in names if n in chosen and n not in skipped]


def run_sections(
    sections: Iterable[Section],
    quick: bool,
    loader: Loader = load_module,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Run each section; never raises for a section's failure."""
    out: dict[str, dict[str, Any]] = {}
    for section in sections:
        entry: dict[str, Any] = {"title": section.title, "module": section.module}
        started = time.perf_counter()
        try:
            runner, renderer = loader(section.module)
        except ImportError as e:
            entry.update(status="skipped", reason=f"cannot import {section.module}: {e}")
            log(f"[run_all] {section.name}: skipped ({entry['reason']})")
            out[section.name] = entry
            continue
        log(f"[run_all] {section.name}: running{' (quick)' if quick else ''} ...")
        try:
            result = runner(quick)
            json.dumps(result)  # must be JSON-able, or all.json would be lost
            entry.update(status="ok", result=result)
        except Exception as e:
            entry.update(
                status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()
            )
        entry["seconds"] = round(time.perf_counter() - started, 1)
        if entry["status"] == "ok":
            try:
                entry["markdown"] = renderer(entry["result"])
            except Exception as e:
                entry["markdown_error"] = f"{type(e).__name__}: {e}"
        log(f"[run_all] {section.name}: {entry['status']} in {entry['seconds']} s")
        out[section.name] = entry
    return out


def report(all_results: dict[str, Any]) -> str:
    """RESULTS.md: the machine, then one part per section."""
    m = all_results["machine"]
    load = m.get("load_at_start") or []
    end = all_results.get("load_at_end") or []
    commit = (m.get("swarmd_commit") or "unknown")[:12] + (
        " (+ local changes)" if m.get("swarmd_dirty") else ""
    )
    lines = [
        "# swarmd benchmarks",
        "",
        f"Run {m['date_utc']}{' in quick mode' if all_results.get('quick') else ''}, "
        f"`python -m bench.run_all{' --quick' if all_results.get('quick') else ''}`.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']} |",
        f"| cores | {m['cores_logical']} logical, {m['cores_physical']} physical |",
        f"| RAM | {m['ram_gib']} GiB |",
        f"| OS | {m['os']} (kernel {m['kernel']}) |",
        f"| Python | {m['python']} |",
        f"| swarmd | {commit} |",
        f"| load average (1/5/15 min) | start {' / '.join(map(str, load))}; "
        f"end {' / '.join(map(str, end))} |",
        "",
    ]
    for name, entry in all_results["sections"].items():
        title = entry.get("title", name)
        lines += [f"## {title} (`{name}`)", ""]
        status = entry.get("status")
        if status == "skipped":
            lines.append(f"Skipped: {entry.get('reason')}")
        elif status == "error":
            lines.append(f"**Failed** after {entry.get('seconds')} s: `{entry.get('error')}`")
        elif "markdown" in entry:
            lines.append(entry["markdown"].rstrip())
            lines += ["", f"*({entry['seconds']} s)*"]
        else:
            lines.append(f"Ran, but its markdown failed: `{entry.get('markdown_error')}`")
        lines.append("")
    return "\n".join(lines)


def run_all(
    names: list[str],
    quick: bool,
    out_dir: Path,
    loader: Loader = load_module,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    by_name = {s.name: s for s in SECTIONS}
    started = time.perf_counter()
    all_results: dict[str, Any] = {"quick": quick, "machine": machine()}
    all_results["sections"] = run_sections([by_name[n] for n in names], quick, loader, log)
    all_results["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    all_results["seconds"] = round(time.perf_counter() - started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "all.json").write_text(json.dumps(all_results, indent=2) + "\n")
    (out_dir / "RESULTS.md").write_text(report(all_results))
    log(f"[run_all] wrote {out_dir / 'all.json'} and {out_dir / 'RESULTS.md'}")
    return all_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1-2 trials")
    parser.add_argument("--only", help="comma-separated sections to run")
    parser.add_argument("--skip", help="comma-separated sections to leave out")
    parser.add_argument("--binary", help="a built swarmd binary for the footprint section")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    args = parser.parse_args(argv)
    if args.list:
        for s in SECTIONS:
            print(f"{s.name:12} {s.module:20} {s.title}")
        return 0
    if args.binary:
        os.environ["SWARMD_BENCH_BINARY"] = str(Path(args.binary).resolve())
    names = select((s.name for s in SECTIONS), args.only, args.skip)
    result = run_all(names, args.quick, args.out)
    failed = [n for n, e in result["sections"].items() if e["status"] == "error"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
