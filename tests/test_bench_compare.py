"""bench/compare.py: the ratio arithmetic and the table (fast), and a tiny swarmd-only
run through real daemons (slow). The peers (Dask, Ray, Celery) are never installed
here: ``python bench/compare.py`` does that in its own venv."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bench import compare

FAKE: dict[str, Any] = {
    "subtasks": 10_000,
    "sequential": 200,
    "slots_per_worker": 4,
    "machine": {"cpu_count": 2, "cpu_model": "Test CPU", "python": "3.11.7"},
    "results": {
        "swarmd": {"version": "0.1.0", "throughput_per_s": 400.0, "latency_median_ms": 4.0,
                   "latency_p99_ms": 8.0},
        "dask": {"version": "2026.8.0", "throughput_per_s": 800.0, "latency_median_ms": 12.0,
                 "latency_p99_ms": 16.0},
        "ray": {"skipped": "no wheel | for this platform"},
        "celery": {"version": "5.7.0", "throughput_per_s": 200.0, "latency_median_ms": 2.0,
                   "latency_p99_ms": None},
    },
}  # fmt: skip


def test_ratios_are_greater_than_one_where_swarmd_is_better() -> None:
    r = compare.ratios(FAKE["results"])
    assert r["dask"] == {"throughput": 0.5, "latency_median": 3.0, "latency_p99": 2.0}
    assert r["celery"] == {"throughput": 2.0, "latency_median": 0.5, "latency_p99": None}
    # a skipped peer has no numbers, so no ratios
    assert r["ray"] == {"throughput": None, "latency_median": None, "latency_p99": None}
    assert "swarmd" not in r


def test_ratios_without_swarmd_numbers() -> None:
    results = {"swarmd": {"skipped": "broken"}, "dask": FAKE["results"]["dask"]}
    assert compare.ratios(results)["dask"]["throughput"] is None


def test_markdown_has_a_row_per_system_with_ratios_and_reasons() -> None:
    table = compare.markdown(FAKE)
    lines = table.splitlines()
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    assert set(rows) == {"system", "swarmd", "dask", "ray", "celery"}
    assert "> 1 means swarmd is better" in table
    assert "| 400 |" in rows["swarmd"] and "×" not in rows["swarmd"]
    assert "0.50×" in rows["dask"] and "3.00×" in rows["dask"] and "2.00×" in rows["dask"]
    assert "skipped: no wheel \\| for this platform" in rows["ray"]
    assert rows["celery"].rstrip().endswith("| – |")  # p99 missing: no ratio
    # every table row has the header's number of cells (an escaped pipe is no cell)
    cells = {len(re.findall(r"(?<!\\)\|", line)) for line in lines if line.startswith("|")}
    assert len(cells) == 1
    assert "2 CPU (Test CPU)" in table


def test_unknown_system_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown system"):
        compare.run(only=["swarmd", "spark"])


@pytest.mark.slow
def test_swarmd_only_run_through_real_daemons() -> None:
    result = compare.run(subtasks=200, sequential=10, only=["swarmd"], log=False, rounds=1)
    assert set(result["results"]) == {"swarmd"}
    row = result["results"]["swarmd"]
    assert "skipped" not in row, row
    assert row["subtasks"] == 200 and row["sequential"] == 10
    assert row["throughput_per_s"] > 0
    assert 0 < row["latency_median_ms"] <= row["latency_p99_ms"]
    assert result["machine"]["cpu_count"] and result["machine"]["python"]
    assert result["ratios"] == {}
    assert "| swarmd |" in compare.markdown(result)


def test_rounds_are_combined_as_medians_and_kept() -> None:
    rounds = [
        {
            "version": "1",
            "throughput_per_s": 100.0,
            "latency_median_ms": 3.0,
            "latency_p99_ms": 9.0,
        },
        {
            "version": "1",
            "throughput_per_s": 300.0,
            "latency_median_ms": 1.0,
            "latency_p99_ms": 5.0,
        },
        {
            "version": "1",
            "throughput_per_s": 200.0,
            "latency_median_ms": 2.0,
            "latency_p99_ms": 7.0,
        },
    ]
    out = compare.combine(rounds)
    assert (out["throughput_per_s"], out["latency_median_ms"], out["latency_p99_ms"]) == (
        200.0, 2.0, 7.0,
    )  # fmt: skip
    assert [r["throughput_per_s"] for r in out["rounds"]] == [100.0, 300.0, 200.0]
    assert compare.combine(rounds[:1]) == rounds[0]
    skipped = [{"skipped": "no wheel"}, {"skipped": "no wheel"}]
    assert compare.combine(skipped) == {"skipped": "no wheel"}
