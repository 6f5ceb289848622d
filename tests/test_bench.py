"""bench/: the run_all aggregation (fake sections), and quick smoke runs of each section.

The smoke runs are slow-marked: they start real daemons (failover, discovery, footprint)
or simulate 50-100 nodes (simconv), and check the shape of what each returns and that
its markdown renders. Numbers are not asserted beyond sanity: this machine is shared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench import run_all
from bench.run_all import SECTIONS, Renderer, Runner, Section

# ---------------------------------------------------------------- run_all, with fakes


def fake_loader(module: str) -> tuple[Runner, Renderer]:
    def good(quick: bool) -> dict[str, Any]:
        return {"quick": quick, "value": 42}

    def broken(quick: bool) -> dict[str, Any]:
        raise RuntimeError("the bench fell over")

    def not_json(quick: bool) -> dict[str, Any]:
        return {"value": object()}

    def render(result: dict[str, Any]) -> str:
        return f"| value |\n|---|\n| {result['value']} |"

    def bad_render(result: dict[str, Any]) -> str:
        raise KeyError("nope")

    if module == "fake.missing":
        raise ModuleNotFoundError("No module named 'fake.missing'")
    return {
        "fake.good": (good, render),
        "fake.broken": (broken, render),
        "fake.not_json": (not_json, render),
        "fake.bad_render": (good, bad_render),
    }[module]


FAKES = (
    Section("good", "fake.good", "A good section"),
    Section("missing", "fake.missing", "Not written yet"),
    Section("broken", "fake.broken", "A broken one"),
    Section("not_json", "fake.not_json", "Returns something JSON cannot hold"),
    Section("bad_render", "fake.bad_render", "Its markdown fails"),
)


def test_run_all_records_every_outcome_and_writes_json_and_markdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_all, "SECTIONS", FAKES)
    lines: list[str] = []
    result = run_all.run_all(
        [s.name for s in FAKES], True, tmp_path, loader=fake_loader, log=lines.append
    )
    sections = result["sections"]
    assert list(sections) == ["good", "missing", "broken", "not_json", "bad_render"]
    assert sections["good"]["status"] == "ok"
    assert sections["good"]["result"] == {"quick": True, "value": 42}
    assert sections["missing"]["status"] == "skipped"
    assert "fake.missing" in sections["missing"]["reason"]
    assert sections["broken"]["status"] == "error"
    assert sections["broken"]["error"] == "RuntimeError: the bench fell over"
    assert "Traceback" in sections["broken"]["traceback"]
    assert sections["not_json"]["status"] == "error"  # caught before all.json is written
    assert sections["bad_render"]["status"] == "ok"
    assert "markdown_error" in sections["bad_render"]

    saved = json.loads((tmp_path / "all.json").read_text())
    assert saved["sections"].keys() == sections.keys()
    machine = saved["machine"]
    for key in ("cpu", "cores_logical", "ram_gib", "os", "python", "swarmd_commit", "date_utc"):
        assert machine[key], key
    assert saved["quick"] is True

    md = (tmp_path / "RESULTS.md").read_text()
    assert md.startswith("# swarmd benchmarks")
    assert machine["cpu"] in md and machine["python"] in md
    assert "## A good section (`good`)" in md and "| 42 |" in md
    assert "Skipped: cannot import fake.missing" in md
    assert "**Failed**" in md and "the bench fell over" in md
    assert "its markdown failed" in md
    assert any("broken: error" in line for line in lines)


def test_select_only_and_skip() -> None:
    names = [s.name for s in SECTIONS]
    assert run_all.select(names, None, None) == names
    assert run_all.select(names, "simconv,failover", None) == ["failover", "simconv"]
    assert run_all.select(names, None, "compare,scheduling") == names[:4] + names[6:]
    assert run_all.select(names, "footprint,simconv", "simconv") == ["footprint"]
    with pytest.raises(SystemExit, match="unknown section"):
        run_all.select(names, "nonsense", None)


def test_the_sections_are_all_listed_in_order() -> None:
    assert [s.name for s in SECTIONS] == [
        "failover",
        "discovery",
        "simconv",
        "footprint",
        "compare",
        "scheduling",
        "llm_batching",
        "gateway",
    ]


# ---------------------------------------------------------------- smoke runs


def no_leftovers(before: set[int]) -> None:
    """No swarmd process started by the section is still running."""
    import contextlib

    left = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.pid not in before and "swarmd" in " ".join(p.cmdline()):
                left.append(p.cmdline())
    assert not left, left


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_simconv_quick() -> None:
    from bench import simconv

    result = simconv.run(quick=True)
    json.dumps(result)
    sizes = result["sizes"]
    assert [s["n"] for s in sizes] == [50, 100]
    for s in sizes:
        assert s["converged"], s
        assert 1 <= s["converge_rounds"] <= 20
        assert 1 <= s["spread_rounds"] <= 20
    assert 1.0 < sizes[0]["detect_all_s"] < 6.0  # detection is checked at 50 nodes
    assert "| 100 |" in simconv.markdown(result)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_failover_quick() -> None:
    from bench import failover

    before = children()
    result = failover.run(quick=True, trials=1)
    no_leftovers(before)
    json.dumps(result)
    kill = result["sigkill"]
    trial = kill["trials"][0]
    assert trial["second_peer"] != trial["victim"]
    # dead (a SIGKILL: the dropped link, probed) comes before the re-dispatch, which
    # comes before running
    assert 0.0 < trial["dead_s"] <= trial["redispatch_s"] <= trial["running_s"] < 30
    assert kill["redispatch_s"]["n"] == 1
    partition = result["partition"]
    assert "skipped" in partition or partition["redispatch_s"]["n"] == 1
    if "skipped" not in partition:  # no reset: the accrual detector (phi + suspicion)
        assert partition["trials"][0]["dead_s"] > 0.5
    md = failover.markdown(result)
    assert "SIGKILL of A" in md and "memberlist" in md


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_discovery_quick() -> None:
    from bench import discovery

    before = children()
    result = discovery.run(quick=True)
    no_leftovers(before)
    json.dumps(result)
    (join,) = result["join"]
    assert join["k"] == 3 and join["mode"] == "seed"
    t = join["trials"][0]
    assert 0 < t["spawn_to_answers_s"] <= t["spawn_to_all_see_it_s"] < 60
    assert [c["n"] for c in result["converge"]] == [3, 5]
    assert all(c["stable_after_1s"] for c in result["converge"])
    assert "Gossip convergence" in discovery.markdown(result)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_footprint_quick() -> None:
    from bench import footprint

    before = children()
    result = footprint.run(quick=True)
    no_leftovers(before)
    json.dumps(result)
    one = result["one_node"]
    assert 10 < one["rss_mib_median"] < 1000
    assert 0 <= one["cpu_percent"] < 200
    assert result["three_nodes"]["node"]["rss_mib_median"] > 10
    assert "skipped" in result["binary"]  # quick mode does not build
    md = footprint.markdown(result)
    assert "Ray head" in md and "Binary: " in md


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_llm_batching_quick() -> None:
    from bench import llm_batching

    before = children()
    result = llm_batching.run(quick=True)
    no_leftovers(before)
    json.dumps(result)
    if "skipped" in result:
        pytest.skip(result["skipped"])
    assert result["prompts"] == 16 and result["wall_s"]["on"]["n"] == 1
    on, off = result["rounds_detail"]["on"][0], result["rounds_detail"]["off"][0]
    assert on["largest_group"] == result["max_concurrency"] and off["groups"] == 0
    assert on["per_peer"] == off["per_peer"] == {"w1": 16}
    assert 0 < result["direct_s"]["sequential"]["median"] < 60
    assert "grouping off" in llm_batching.markdown(result)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gateway_quick() -> None:
    from bench import gateway

    before = children()
    result = gateway.run(quick=True)
    no_leftovers(before)
    json.dumps(result)
    if "targets" not in result:
        pytest.skip(str(result["skipped"]))
    targets = result["targets"]
    assert set(targets) | set(result["skipped"]) == {"direct", "litellm", "swarmd"}
    direct = targets["direct"]
    assert direct["n"] == 10 * (len(targets) - 1)  # 10 alongside each gateway
    assert 0 < direct["call_ms"]["median"] < 5000
    assert direct["rps"] > 10 and direct["errors"] == 0
    for name in set(targets) - {"direct"}:
        row = targets[name]
        assert row["n"] == 10 and row["rps"] > 0, (name, row)
        assert "added_call_ms" in row and "added_ttft_ms" in row
    for name, why in result["skipped"].items():
        assert why, name  # a skipped target says why
    assert "| direct |" in gateway.markdown(result)


def test_gateway_probe_quick() -> None:
    from bench import gateway_probe

    before = children()
    result = gateway_probe.probe(20, "stub")
    no_leftovers(before)
    assert result["direct_ms"]["median"] > 0 and result["gateway_ms"]["median"] > 0
    assert result["daemon_cpu_ms_per_request"] is not None
    assert result["daemon_cpu_ms_per_request"] > 0
