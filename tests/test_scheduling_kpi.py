"""The KPI table's must-show (bench/scheduling/kpi.py), on the full agent workload in
virtual time with swarmd's real queue, pricing and deadline planner: what README claims."""

from __future__ import annotations

from typing import Any

import pytest

from bench.scheduling.kpi import markdown_kpi, run_kpi


@pytest.fixture(scope="module")
def kpi() -> dict[str, Any]:
    return run_kpi(quick=False)


def test_under_capacity_priority_and_deadlines(kpi: dict[str, Any]) -> None:
    m = kpi["scenarios"]["agent cluster 0.8x"]["policies"]["swarmd"]
    assert m["raw_inversions"] == 0 and m["priority_pct"] == 100.0
    assert m["deadlines_pct"] >= 95.0 and m["unreported"] == 0
    assert m["completion_pct"] >= 99.0


@pytest.mark.parametrize("scenario", ["agent cluster 1.5x", "big GPU + 3 laptops 1.5x"])
def test_overloaded(kpi: dict[str, Any], scenario: str) -> None:
    m = kpi["scenarios"][scenario]["policies"]["swarmd"]
    # No start out of priority order but those the guaranteed share allows...
    assert m["priority_pct"] == 100.0 and m["raw_inversions"] <= m["share_starts"]
    # ... and that share keeps every class within its stated bound.
    for rank, most in m["most_passes"].items():
        name = ("critical", "high", "normal", "low")[int(rank)]
        assert most <= kpi["bounds"][name], (name, most)
    # Every missed deadline was refused at submit or reported unreachable before it
    # passed (an overrun too: the outlook looks just after each estimated end).
    assert m["unreported"] == 0
    assert m["refused"] > 0 and m["deadlines_pct"] >= 90.0
    # Load spread and utilization while overloaded.
    assert m["busy_cv"] <= 0.10 and m["utilization"] >= 0.80
    baseline = kpi["scenarios"][scenario]["policies"]["least_loaded"]
    assert m["deadlines_pct"] > baseline["deadlines_pct"]


def test_table(kpi: dict[str, Any]) -> None:
    text = markdown_kpi(kpi)
    assert text.count("| swarmd |") == 3 and "Starvation bound" in text
