"""bench/compare.py's results as a markdown table, with the ratios (> 1: swarmd is
better; throughput swarmd/peer, latency peer/swarmd)."""

from __future__ import annotations

from typing import Any

PEERS = ("dask", "ray", "celery")
SYSTEMS = ("swarmd", *PEERS)
SLOTS = 4  # python slots per worker, for every system


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per peer: throughput swarmd/peer and latency peer/swarmd (> 1: swarmd better)."""
    ours = results.get("swarmd", {})
    out: dict[str, dict[str, float | None]] = {}

    def ratio(num: Any, den: Any) -> float | None:
        if not isinstance(num, int | float) or not isinstance(den, int | float) or den <= 0:
            return None
        return round(num / den, 2)

    for peer in PEERS:
        theirs = results.get(peer)
        if theirs is None:
            continue
        out[peer] = {
            "throughput": ratio(ours.get("throughput_per_s"), theirs.get("throughput_per_s")),
            "latency_median": ratio(theirs.get("latency_median_ms"), ours.get("latency_median_ms")),
            "latency_p99": ratio(theirs.get("latency_p99_ms"), ours.get("latency_p99_ms")),
        }
    return out


def _num(value: Any, digits: int = 0) -> str:
    if not isinstance(value, int | float):
        return "–"
    return f"{value:,.{digits}f}"


def _times(value: Any) -> str:
    return "–" if not isinstance(value, int | float) else f"{value:.2f}×"


def markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table, one row per system, with the ratios."""
    results: dict[str, dict[str, Any]] = result.get("results", {})
    rel = result.get("ratios") or ratios(results)
    n, seq = result.get("subtasks"), result.get("sequential")
    lines = [
        f"{_num(n)} no-op subtasks through one coordinator to two local workers "
        f"({result.get('slots_per_worker', SLOTS)} slots each); {_num(seq)} sequential "
        "submit-to-result round trips. Ratios: > 1 means swarmd is better "
        "(throughput swarmd/peer, latency peer/swarmd).",
        "",
        "| system | version | throughput (/s) | latency median (ms) | latency p99 (ms) "
        "| throughput swarmd/peer | latency median peer/swarmd | latency p99 peer/swarmd |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in SYSTEMS:
        row = results.get(name)
        if row is None:
            continue
        version = str(row.get("version", "–"))
        if "skipped" in row:
            why = str(row["skipped"]).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {name} | {version} | skipped: {why} | | | | | |")
            continue
        r = rel.get(name, {})
        mine = name == "swarmd"
        lines.append(
            f"| {name} | {version} | {_num(row.get('throughput_per_s'))} "
            f"| {_num(row.get('latency_median_ms'), 1)} | {_num(row.get('latency_p99_ms'), 1)} "
            f"| {'' if mine else _times(r.get('throughput'))} "
            f"| {'' if mine else _times(r.get('latency_median'))} "
            f"| {'' if mine else _times(r.get('latency_p99'))} |"
        )
    machine = result.get("machine") or {}
    if machine:
        lines += [
            "",
            f"Machine: {machine.get('cpu_count')} CPU ({machine.get('cpu_model')}), "
            f"Python {machine.get('python')}, load average {machine.get('loadavg_before')} "
            f"before the run"
            + (
                f"; each figure the median of {result['rounds']} alternating rounds."
                if result.get("rounds", 1) > 1
                else "."
            ),
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- machine
