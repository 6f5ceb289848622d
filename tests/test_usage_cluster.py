"""``swarmctl usage`` through real daemons and a real llama.cpp OpenAI-compatible server.

n3 serves the model (priced at ``cost_per_mtok``); llm subtasks are submitted on n1 and
n2, so each of those keeps a book of its own. ``swarmctl usage --json`` on n3, which
coordinated nothing, must show both books summed with the tokens the results report;
the books survive a restart of their node; and a node that stops answering is listed
as missing while the command still returns promptly.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon, new_secret, swarmctl, wait_until
from tests.llm_server import LlamaServer

COST_PER_MTOK = 1.5


def model_config(endpoint: str, model: str) -> str:
    return (
        f'[models.fast]\nendpoint = "{endpoint}"\nmodel = "{model}"\n'
        f'capabilities = ["lint"]\nmax_concurrency = 2\ncost_per_mtok = {COST_PER_MTOK}\n'
    )


def submit(node: Daemon, prompt: str) -> dict[str, Any]:
    """Run one llm subtask coordinated by ``node``; its result's usage."""
    out = swarmctl(
        "--json", "submit", "--wait", "--prompt", prompt, "--capability", "lint",
        state_dir=node.state_dir,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr + out.stdout
    task = json.loads(out.stdout)
    assert task["state"] == "done", task
    result = json.loads(swarmctl("--json", "result", task["id"], state_dir=node.state_dir).stdout)
    usage: dict[str, Any] = result["subtasks"]["main"]["usage"]
    assert usage["completion_tokens"] > 0
    return usage


def usage_of(node: Daemon, *args: str) -> dict[str, Any]:
    out = swarmctl("usage", "--json", "--since", "1h", *args, state_dir=node.state_dir)
    assert out.returncode == 0, out.stderr + out.stdout
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def test_usage_sums_the_books_of_every_live_node(llama: LlamaServer, tmp_path: Path) -> None:
    secret = new_secret()
    nodes = [
        Daemon(tmp_path, "n1", secret=secret),
        Daemon(tmp_path, "n2", secret=secret),
        Daemon(tmp_path, "n3", secret=secret, config=model_config(llama.endpoint, llama.model)),
    ]
    n1, n2, n3 = nodes
    try:
        for d in nodes:
            d.start()
        for d in nodes:
            d.wait_ready()
        for d in (n1, n2):  # both coordinators see n3's model and n3 sees them
            wait_until(
                lambda d=d: any(p["name"] == "n3" and p["models"] for p in d.peers()),
                30,
                what=f"{d.name} to see n3's model",
            )
        wait_until(lambda: len(n3.peers()) == 3, 30, what="n3 to see all three nodes")

        results = [submit(n1, "Fix the lint."), submit(n1, "Review this."), submit(n2, "Plan.")]
        tokens_in = sum(u["prompt_tokens"] for u in results)
        tokens_out = sum(u["completion_tokens"] for u in results)

        doc = usage_of(n3)
        assert doc["missing"] == []
        assert sorted(n["name"] for n in doc["nodes"]) == ["n1", "n2", "n3"]
        totals = doc["totals"]
        assert (totals["requests"], totals["errors"]) == (3, 0)
        assert (totals["tokens_in"], totals["tokens_out"]) == (tokens_in, tokens_out)
        assert totals["cost"] == pytest.approx(COST_PER_MTOK * (tokens_in + tokens_out) / 1e6)
        (row,) = doc["rows"]  # one model, one serving node, one client (swarmctl: "cli")
        assert (row["profile"], row["model"], row["node_name"]) == ("fast", llama.model, "n3")
        assert row["client"] == "cli" and row["node"] == n3.node_id()
        by_node = usage_of(n3, "--by", "node")["groups"]
        assert [(g["name"], g["requests"]) for g in by_node] == [("n3", 3)]

        text = swarmctl("usage", "--by", "model", state_dir=n3.state_dir)
        assert text.returncode == 0 and llama.model in text.stdout
        assert "books of 3 node(s) summed" in text.stdout

        metrics_ok = n1.counters()  # the node is fine after answering
        assert metrics_ok is not None

        n1.term()  # the book is on disk: a restarted node still has it
        n1.start().wait_ready()
        wait_until(
            lambda: usage_of(n3)["totals"]["requests"] == 3 and not usage_of(n3)["missing"],
            30,
            what="n1's book back after its restart",
        )

        n2.signal(signal.SIGSTOP)  # alive to the others for a while, but silent
        try:
            started = time.monotonic()
            doc = usage_of(n3, "--peer-timeout", "1")
            took = time.monotonic() - started
            assert [n["name"] for n in doc["missing"]] == ["n2"], doc
            assert doc["totals"]["requests"] == 2  # n1's book only
            assert took < 10, took  # one peer timeout, not a hang
        finally:
            n2.signal(signal.SIGCONT)
    finally:
        for d in nodes:
            d.stop()
