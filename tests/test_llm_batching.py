"""Grouping small llm subtasks through real daemons and a real llama.cpp server.

n1 coordinates; n2 and n3 both serve the llama.cpp server's model with
``max_concurrency = 3``. One job of eight small prompts: the first pass places a group
of three on one node and a group of three on the other (each priced once), the last
two follow as slots free up; every prompt gets a completion, and ``swarmctl explain``
says which subtasks were grouped.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from tests.harness import Daemon, new_secret, swarmctl, wait_until
from tests.llm_server import LlamaServer

CONCURRENCY = 3
PROMPTS = 8


def model_config(server: LlamaServer) -> str:
    return (
        f'[models.fast]\nendpoint = "{server.endpoint}"\nmodel = "{server.model}"\n'
        f'capabilities = ["lint"]\nmax_concurrency = {CONCURRENCY}\n'
    )


def test_small_prompts_go_out_in_groups_and_explain_says_so(
    llama: LlamaServer, tmp_path: Path
) -> None:
    secret = new_secret()
    nodes = [
        Daemon(tmp_path, "n1", secret=secret, config="[node]\nallow_shell = false\n"),
        Daemon(tmp_path, "n2", secret=secret, config=model_config(llama)),
        Daemon(tmp_path, "n3", secret=secret, config=model_config(llama)),
    ]
    job = {
        "name": "small-prompts",
        "subtasks": [
            {"id": f"p{i}", "kind": "llm", "capability": "lint", "prompt": f"Say {i}.",
             "max_tokens": 8}
            for i in range(PROMPTS)
        ],
    }  # fmt: skip
    job_file = tmp_path / "prompts.json"
    job_file.write_text(json.dumps(job))
    try:
        for d in nodes:
            d.start()
        for d in nodes:
            d.wait_ready()
        n1 = nodes[0]

        def both_serve() -> bool:
            return {p["name"] for p in n1.peers() if p["models"]} == {"n2", "n3"}

        wait_until(both_serve, 30, what="n1 to see both model servers")
        out = swarmctl("--json", "submit", "--wait", "-f", str(job_file), state_dir=n1.state_dir)
        assert out.returncode == 0, out.stderr + out.stdout
        task = json.loads(out.stdout)
        assert task["state"] == "done", task

        result = json.loads(swarmctl("--json", "result", task["id"], state_dir=n1.state_dir).stdout)
        for sub in result["subtasks"].values():
            assert sub["output"].split() and sub["usage"]["completion_tokens"] > 0, sub

        explain = json.loads(
            swarmctl("--json", "explain", task["id"], state_dir=n1.state_dir).stdout
        )
        rows = {row["id"]: row for row in explain["subtasks"]}
        groups: dict[str, list[str]] = defaultdict(list)
        for sid, row in rows.items():
            if row["grouped"] is not None:
                groups[row["grouped"]["lead"]].append(sid)
        sizes = sorted(len(m) for m in groups.values())
        assert sizes[-2:] == [CONCURRENCY, CONCURRENCY], groups  # the first pass's two
        for lead, members in groups.items():
            peers = {rows[m]["grouped"]["peer"] for m in members}
            ran = {result["subtasks"][m]["peer"] for m in members}
            assert len(peers) == 1 and ran == peers, (lead, members, ran)
            assert all(rows[m]["priced"] == 0 for m in members if m != lead)
        text = swarmctl("explain", task["id"], state_dir=n1.state_dir).stdout
        assert "grouped: joined" in text and "grouped: priced for a group of 3" in text
    finally:
        for d in nodes:
            d.stop()
