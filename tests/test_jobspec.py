"""Job specs: every bad job is refused with a message naming the subtask and the reason;
DAG order, templates, cluster feasibility and input sizes."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from swarmd.core import template
from swarmd.core.jobspec import (
    DEFAULT_MAX_TOKENS,
    PRIORITY_RANK,
    JobError,
    JobSpec,
    PeerFacts,
    SubtaskSpec,
    check_feasible,
    check_input_sizes,
    job_format,
    job_to_data,
    load_job_text,
    parse_job,
    resolve_pins,
    single_command_job,
    single_prompt_job,
    topological_order,
)

GiB = 1 << 30
MiB = 1 << 20

# The example of CONTRACT.md's "Job files" section, verbatim.
CONTRACT_EXAMPLE = """\
name = "review"
priority = "high"          # critical | high | normal | low
deadline = "10m"

[[subtask]]
id = "lint"
kind = "shell"             # shell | llm | python
run = ["ruff", "check", "."]
inputs = ["src/", "pyproject.toml"]   # shipped from the submitter's directory
outputs = ["report.txt"]              # collected back as artifacts
timeout = "2m"

[[subtask]]
id = "plan"
kind = "llm"
capability = "architecture"           # or model = "deep" to name a profile
prompt = "Lint said:\\n{{ lint.stdout }}\\nPropose a refactor."
after = ["lint"]
min_vram = "20GiB"
max_tokens = 512

[[subtask]]
id = "score"
kind = "python"
call = "mypkg.scoring:score"          # importable on the worker; args/kwargs JSON-able
args = [1, 2]
after = ["plan"]
"""


def shell(id: str, **extra: Any) -> dict[str, Any]:
    return {"id": id, "kind": "shell", "run": ["true"], **extra}


def llm(id: str, **extra: Any) -> dict[str, Any]:
    """An llm subtask table; a key given as None is left out."""
    table = {"id": id, "kind": "llm", "prompt": "hi", "capability": "lint", **extra}
    return {k: v for k, v in table.items() if v is not None}


def job(*subtasks: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"name": "t", **top, "subtask": list(subtasks)}


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(JobError) as info:
        parse_job(data, source="job.toml")
    err = info.value
    assert str(err) == "\n".join(str(e) for e in err.errors)
    lines = str(err).splitlines()
    assert all(line.startswith("job.toml: ") for line in lines)
    return lines


def one_error(data: dict[str, Any]) -> str:
    lines = errors_of(data)
    assert len(lines) == 1, lines
    return lines[0]


# ---------------------------------------------------------------------------- good jobs


def test_contract_example_parses() -> None:
    spec = load_job_text(CONTRACT_EXAMPLE, "toml", "review.toml")
    assert spec.name == "review"
    assert spec.priority == "high"
    assert spec.deadline_s == 600.0
    lint, plan, score = spec.subtasks
    assert lint == SubtaskSpec(
        id="lint",
        kind="shell",
        run=("ruff", "check", "."),
        inputs=("src/", "pyproject.toml"),
        outputs=("report.txt",),
        timeout_s=120.0,
        priority="high",
    )
    assert plan.kind == "llm"
    assert plan.capability == "architecture"
    assert plan.prompt == "Lint said:\n{{ lint.stdout }}\nPropose a refactor."
    assert plan.after == ("lint",)
    assert plan.min_vram == 20 * GiB
    assert plan.max_tokens == 512
    assert score.call == "mypkg.scoring:score"
    assert score.args == (1, 2)
    assert score.after == ("plan",)
    assert score.retries == 2
    assert topological_order(spec) == ["lint", "plan", "score"]
    assert spec.subtask("plan") is plan
    assert spec.ids == ("lint", "plan", "score")


def test_defaults() -> None:
    spec = parse_job({"subtask": [llm("a"), shell("b", priority="low")]}, source="dir/x.toml")
    assert spec.name == "x"
    assert spec.priority == "normal"
    assert spec.deadline_s is None
    a, b = spec.subtasks
    assert a.max_tokens == DEFAULT_MAX_TOKENS
    assert a.priority == "normal"
    assert b.priority == "low"
    assert b.max_tokens is None
    assert parse_job({"subtasks": [shell("a")]}).name == "job"


def test_subtask_priority_defaults_to_job_priority() -> None:
    spec = parse_job(job(shell("a"), priority="critical"))
    assert spec.subtasks[0].priority == "critical"
    assert PRIORITY_RANK["critical"] < PRIORITY_RANK["low"]


def test_run_as_one_string_is_split_like_a_shell() -> None:
    spec = parse_job(
        job(
            shell("a"),
            shell(
                "b",
                run="grep -n 'two words' {{ a.stdout }} \"{{a.stderr}}\"",
                after=["a"],
            ),
        )
    )
    assert spec.subtasks[1].run == ("grep", "-n", "two words", "{{a.stdout}}", "{{a.stderr}}")
    assert template.references(spec.subtasks[1].run[3]) == {"a"}


def test_all_keys_accepted() -> None:
    spec = parse_job(
        {
            "name": "t",
            "subtasks": [
                shell(
                    "a",
                    retries=0,
                    retry_on_error=True,
                    min_ram="512MiB",
                    min_vram=1024,
                    node="desk",
                    env={"A": "1", "_B2": ""},
                    capability="lint",
                    timeout=1.5,
                    inputs=["src", "./x/y.txt", "."],
                    outputs=["out/"],
                ),
                {
                    "id": "b",
                    "kind": "llm",
                    "prompt": "p",
                    "model": "deep",
                    "system": "be brief",
                    "max_tokens": 1,
                },
                {
                    "id": "c",
                    "kind": "python",
                    "call": "pkg.mod:Class.method",
                    "args": [1, "x", None, [True, 2.5]],
                    "kwargs": {"k": {"n": [1]}},
                },
            ],
        }
    )
    a, b, c = spec.subtasks
    assert (a.retries, a.retry_on_error, a.min_ram, a.min_vram) == (0, True, 512 * MiB, 1024)
    assert (a.node, dict(a.env), a.capability) == ("desk", {"A": "1", "_B2": ""}, "lint")
    assert a.timeout_s == 1.5
    assert a.inputs == ("src", "./x/y.txt", ".")
    assert (b.model, b.system, b.max_tokens, b.capability) == ("deep", "be brief", 1, None)
    assert c.kwargs == {"k": {"n": [1]}}
    assert c.args == (1, "x", None, [True, 2.5])


# ---------------------------------------------------------------------------- bad jobs

BAD_SUBTASKS: list[tuple[str, list[dict[str, Any]], list[str]]] = [
    ("missing id", [{"kind": "shell", "run": ["x"]}], ["subtask #1: id: missing"]),
    (
        "invalid id",
        [shell("a b")],
        ['subtask #1: id: "a b" is not a valid id', "letters, digits, _ and -"],
    ),
    ("id too long", [shell("x" * 65)], ["subtask #1: id:", "at most 64 characters"]),
    ("id not a string", [shell(3)], ["subtask #1: id: expected a string, got an integer"]),  # type: ignore[arg-type]
    (
        "duplicate id",
        [shell("a"), shell("b"), shell("a")],
        ['subtask #3: id: duplicate id "a" (also used by subtask #1)'],
    ),
    ("missing kind", [{"id": "a", "run": ["x"]}], ['subtask "a": kind: missing']),
    (
        "unknown kind",
        [{"id": "a", "kind": "bash", "run": ["x"]}],
        ['subtask "a": kind: unknown kind "bash" (expected one of shell, llm, python)'],
    ),
    ("shell without run", [{"id": "a", "kind": "shell"}], ['subtask "a": run: missing']),
    ("empty run", [shell("a", run=[])], ['subtask "a": run: the command is empty']),
    ("blank run string", [shell("a", run="  ")], ['subtask "a": run: the command is empty']),
    (
        "run with a number",
        [shell("a", run=["echo", 1])],
        ['subtask "a": run: expected a list of strings (or one command line), got a list'],
    ),
    (
        "unbalanced quote",
        [shell("a", run="echo 'oops")],
        ['subtask "a": run: cannot split', "No closing quotation"],
    ),
    (
        "llm without prompt",
        [{"id": "a", "kind": "llm", "capability": "x"}],
        ['subtask "a": prompt: missing'],
    ),
    (
        "llm with empty prompt",
        [llm("a", prompt=" ")],
        ['subtask "a": prompt: must not be empty'],
    ),
    (
        "llm without capability or model",
        [{"id": "a", "kind": "llm", "prompt": "p"}],
        ['subtask "a": llm subtasks need "capability" or "model"'],
    ),
    (
        "llm with capability and model",
        [llm("a", model="deep")],
        ['subtask "a": give either "capability" or "model"'],
    ),
    (
        "llm max_tokens zero",
        [llm("a", max_tokens=0)],
        ['subtask "a": max_tokens: 0 is out of range'],
    ),
    ("python without call", [{"id": "a", "kind": "python"}], ['subtask "a": call: missing']),
    (
        "python bad call",
        [{"id": "a", "kind": "python", "call": "mypkg.scoring.score"}],
        ['subtask "a": call: "mypkg.scoring.score" is not of the form "module.path:function"'],
    ),
    (
        "python call with a keyword",
        [{"id": "a", "kind": "python", "call": "pkg.class:f"}],
        ['subtask "a": call: "pkg.class:f" is not of the form'],
    ),
    (
        "python args not a list",
        [{"id": "a", "kind": "python", "call": "m:f", "args": "1 2"}],
        ['subtask "a": args: expected a list, got a string'],
    ),
    (
        "python kwargs not JSON",
        [{"id": "a", "kind": "python", "call": "m:f", "kwargs": {"when": object()}}],
        ['subtask "a": kwargs: must hold only JSON values'],
    ),
    (
        "unknown key with suggestion",
        [shell("a", timout="1m")],
        [
            'subtask "a": unknown key "timout"; did you mean "timeout"?',
            "(allowed for shell: after, capability, engine, env, estimate, id, inputs, kind,",
        ],
    ),
    (
        "key of another kind",
        [shell("a", prompt="hi")],
        ['subtask "a": key "prompt" is for llm subtasks, not shell (allowed for shell:'],
    ),
    (
        "outputs on llm",
        [llm("a", outputs=["x"])],
        ['subtask "a": key "outputs" is for shell and python subtasks, not llm'],
    ),
    (
        "estimate on llm",
        [llm("a", estimate="10s")],
        ['subtask "a": key "estimate" is for shell and python subtasks, not llm'],
    ),
    (
        "estimate not a duration",
        [shell("a", estimate="soon")],
        ['subtask "a": estimate:'],
    ),
    (
        "timeout of wrong type",
        [shell("a", timeout=["1m"])],
        ['subtask "a": timeout: bad duration'],
    ),
    ("bad duration", [shell("a", timeout="10 minutes")], ['subtask "a": timeout: bad duration']),
    (
        "zero timeout",
        [shell("a", timeout="0s")],
        ['subtask "a": timeout: must be longer than zero'],
    ),
    (
        "bad size",
        [shell("a", min_vram="20G")],
        ['subtask "a": min_vram: bad size', "ambiguous unit"],
    ),
    ("negative ram", [shell("a", min_ram=-1)], ['subtask "a": min_ram: bad size -1']),
    (
        "bad subtask priority",
        [shell("a", priority="urgent")],
        ['subtask "a": priority: bad priority "urgent" (expected one of critical, high, normal,'],
    ),
    (
        "negative retries",
        [shell("a", retries=-1)],
        ['subtask "a": retries: -1 is out of range (expected 0 to 100)'],
    ),
    (
        "retries not a number",
        [shell("a", retries="3")],
        ['subtask "a": retries: expected a whole number, got a string'],
    ),
    (
        "retry_on_error not a bool",
        [shell("a", retry_on_error="yes")],
        ['subtask "a": retry_on_error: expected true or false, got a string'],
    ),
    (
        "env value not a string",
        [shell("a", env={"N": 1})],
        ['subtask "a": env: N: expected a string, got an integer'],
    ),
    (
        "env bad name",
        [shell("a", env={"1X": "v"})],
        ['subtask "a": env: "1X" is not a valid variable name'],
    ),
    (
        "after unknown",
        [shell("lint"), shell("plan", after=["lnt"])],
        ['subtask "plan": after: unknown subtask "lnt"; did you mean "lint"? (known: lint, plan)'],
    ),
    (
        "after not a list of strings",
        [shell("a"), shell("b", after="a")],
        ['subtask "b": after: expected a list of subtask ids, got a string'],
    ),
    (
        "self dependency",
        [shell("a", after=["a"])],
        ['subtask "a": after: a subtask cannot wait for itself'],
    ),
    (
        "two-node cycle",
        [shell("a", after=["b"]), shell("b", after=["a"])],
        ['subtask "a": after: dependency cycle a -> b -> a'],
    ),
    (
        "three-node cycle behind a good subtask",
        [
            shell("x"),
            shell("c", after=["b", "x"]),
            shell("a", after=["c"]),
            shell("b", after=["a"]),
        ],
        ['subtask "c": after: dependency cycle c -> b -> a -> c'],
    ),
    (
        "template names a subtask that is not upstream",
        [shell("lint"), llm("plan", prompt="Lint said {{ lint.stdout }}")],
        [
            'subtask "plan": prompt: {{ lint.stdout }}: subtask "lint" is not upstream of "plan";'
            ' add it to "after"'
        ],
    ),
    (
        "template names a downstream subtask",
        [shell("a", run=["echo", "{{b.output}}"]), llm("b", after=["a"])],
        ['subtask "a": run: {{b.output}}: subtask "b" is not upstream of "a"'],
    ),
    (
        "template names an unknown subtask",
        [shell("lint"), llm("plan", prompt="{{ lnt.stdout }}", after=["lint"])],
        ['subtask "plan": prompt: {{ lnt.stdout }}: unknown subtask "lnt"; did you mean "lint"?'],
    ),
    (
        "template with an unknown field",
        [shell("lint"), llm("plan", system="{{lint.stdot}}", after=["lint"])],
        [
            'subtask "plan": system: {{lint.stdot}}: unknown field "stdot"; did you mean "stdout"?',
            "(expected one of stdout, stderr, output, exit_code)",
        ],
    ),
    (
        "template uses its own result",
        [llm("a", prompt="{{ a.output }}")],
        ['subtask "a": prompt: {{ a.output }}: a subtask cannot use its own result'],
    ),
    (
        "absolute input",
        [shell("a", inputs=["/etc/passwd"])],
        ['subtask "a": inputs: "/etc/passwd": absolute paths are not allowed'],
    ),
    (
        "windows absolute output",
        [shell("a", outputs=["C:\\temp\\x"])],
        ['subtask "a": outputs: "C:\\\\temp\\\\x": absolute paths are not allowed'],
    ),
    (
        "input escapes with ..",
        [shell("a", inputs=["src/../../secret"])],
        ['subtask "a": inputs: "src/../../secret": paths must stay inside the submit directory'],
    ),
    (
        "output with ..",
        [shell("a", outputs=["../x"])],
        ['subtask "a": outputs: "../x": paths must stay inside'],
    ),
    ("empty input path", [shell("a", inputs=[""])], ['subtask "a": inputs: "": empty path']),
    ("subtask not a table", ["echo hi"], ["subtask #1: expected a table, got a string"]),  # type: ignore[list-item]
]


@pytest.mark.parametrize(
    ("subtasks", "expected"),
    [pytest.param(s, e, id=name) for name, s, e in BAD_SUBTASKS],
)
def test_bad_subtask_is_refused_with_subtask_and_reason(
    subtasks: list[dict[str, Any]], expected: list[str]
) -> None:
    line = one_error(job(*subtasks))
    for text in expected:
        assert text in line


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"name": "t"}, "job.toml: the job has no subtasks"),
        ({"subtask": []}, "job.toml: subtask: the job has no subtasks"),
        ({"subtasks": {"id": "a"}}, "job.toml: subtasks: expected a list of subtask tables"),
        (
            {"subtask": [shell("a")], "subtasks": [shell("b")]},
            'job.toml: give the subtasks under one key, "subtask" or "subtasks", not both',
        ),
        (
            {"subtask": [shell("a")], "prority": "high"},
            'job.toml: unknown key "prority" at the top level; did you mean "priority"?',
        ),
        ({"subtask": [shell("a")], "name": ""}, "job.toml: name: expected a non-empty string"),
        (
            {"subtask": [shell("a")], "name": "a\nb"},
            "job.toml: name: must be printable",
        ),
        (
            {"subtask": [shell("a")], "priority": "urgent"},
            'job.toml: priority: bad priority "urgent"',
        ),
        ({"subtask": [shell("a")], "deadline": "soon"}, "job.toml: deadline: bad duration"),
        ({"subtask": [shell("a")], "deadline": 0}, "job.toml: deadline: must be longer than zero"),
    ],
)
def test_bad_job_level(data: dict[str, Any], expected: str) -> None:
    assert expected in one_error(data)


def test_all_errors_reported_at_once_in_file_order() -> None:
    lines = errors_of(
        job(
            shell("a", after=["nope"], timeout="x"),
            {"id": "b", "kind": "llm"},
            shell("c", after=["d"]),
            shell("d", after=["c"], retries=-2),
            {"kind": "python", "call": "bad"},
            priority="meh",
        )
    )
    assert lines == [
        'job.toml: priority: bad priority "meh" (expected one of critical, high, normal, low)',
        "job.toml: subtask \"a\": timeout: bad duration 'x': expected e.g. 500ms, 30s, 10m, 1h",
        'job.toml: subtask "a": after: unknown subtask "nope" (known: a, b, c, d)',
        'job.toml: subtask "b": prompt: missing (llm subtasks need a prompt)',
        'job.toml: subtask "b": llm subtasks need "capability" or "model" (a profile name)',
        'job.toml: subtask "c": after: dependency cycle c -> d -> c (each waits for the next)',
        'job.toml: subtask "d": retries: -2 is out of range (expected 0 to 100)',
        "job.toml: subtask #5: id: missing (every subtask needs an id)",
        'job.toml: subtask #5: call: "bad" is not of the form "module.path:function"',
    ]


def test_job_error_shape() -> None:
    err = JobError('unknown subtask "lnt" (known: lint, plan)', "plan", "after")
    assert str(err) == 'subtask "plan": after: unknown subtask "lnt" (known: lint, plan)'
    assert err.errors == [err]
    assert (err.subtask, err.key) == ("plan", "after")
    assert isinstance(err, ValueError)
    with pytest.raises(JobError) as info:
        parse_job(job(shell("a", retries=-1, timeout="x")))
    assert [(e.subtask, e.key) for e in info.value.errors] == [("a", "timeout"), ("a", "retries")]


def test_disjoint_cycles_all_reported() -> None:
    lines = errors_of(
        job(
            shell("a", after=["b"]),
            shell("b", after=["a"]),
            shell("c", after=["a", "d"]),
            shell("d", after=["c"]),
        )
    )
    assert [line.split("cycle ")[1] for line in lines] == [
        "a -> b -> a (each waits for the next)",
        "c -> d -> c (each waits for the next)",
    ]


def test_template_through_transitive_upstream_is_fine() -> None:
    spec = parse_job(
        job(
            shell("a"),
            shell("b", after=["a"]),
            llm("c", prompt="{{ a.stdout }} {{ a.exit_code }} {{b.stderr}}", after=["b"]),
        )
    )
    assert template.references(spec.subtasks[2].prompt or "") == {"a", "b"}


def test_placeholder_like_text_that_is_not_one_is_left_alone() -> None:
    prompt = "Use {{ user.name }} and {{ a }} and {{ a.b.c }} and {{ missing.field }}"
    spec = parse_job(job(shell("a"), llm("b", prompt=prompt, after=["a"])))
    assert spec.subtasks[1].prompt == prompt
    assert template.render(prompt, {"a": {"stdout": "x"}}) == prompt


# ---------------------------------------------------------------------------- loading


def test_toml_syntax_error_has_line() -> None:
    with pytest.raises(JobError) as info:
        load_job_text('name = "x"\nid = = 3\n', "toml", "job.toml")
    assert str(info.value).startswith("job.toml: not valid TOML: line 2, column 6: ")


def test_json_syntax_error_has_line() -> None:
    with pytest.raises(JobError) as info:
        load_job_text('{"name": "x",\n "subtasks": [,]}', "json", "job.json")
    assert str(info.value) == "job.json: not valid JSON: line 2, column 15: Expecting value"


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("a = " + "[" * 100_000, "toml"),
        ("a = " + "{b = " * 100_000, "toml"),
        ('[[subtask]]\nid = "a"\nargs = ' + "[" * 100_000, "toml"),
        ("[" * 100_000, "json"),
        ('{"a": ' * 100_000, "json"),
    ],
    ids=["toml-arrays", "toml-tables", "toml-in-a-subtask", "json-arrays", "json-objects"],
)
def test_a_deeply_nested_job_file_is_a_job_error(text: str, fmt: Literal["toml", "json"]) -> None:
    with pytest.raises(JobError) as info:
        load_job_text(text, fmt, f"job.{fmt}")
    assert str(info.value) == f"job.{fmt}: not valid {fmt.upper()}: nested too deeply"


def test_json_duplicate_key_and_non_object() -> None:
    with pytest.raises(JobError, match='duplicate key "id"'):
        load_job_text('{"subtasks": [{"id": "a", "id": "b"}]}', "json", "j.json")
    with pytest.raises(JobError, match="expected a JSON object at the top level, got a list"):
        load_job_text("[]", "json", "j.json")


def test_job_format() -> None:
    assert job_format("x/job.JSON") == "json"
    assert job_format("job.toml") == "toml"
    assert job_format("job") == "toml"


def test_contract_example_as_json_is_equal() -> None:
    import tomllib

    data = tomllib.loads(CONTRACT_EXAMPLE)
    data["subtasks"] = data.pop("subtask")
    as_json = load_job_text(json.dumps(data), "json", "review.json")
    assert as_json == load_job_text(CONTRACT_EXAMPLE, "toml", "review.toml")


# ---------------------------------------------------------------------------- one-subtask jobs


def test_single_command_job() -> None:
    spec = single_command_job(
        ["/usr/bin/pytest", "-q", "a b"],
        priority="high",
        deadline="1h",
        capability="lint",
        min_vram="2GiB",
        timeout="90s",
    )
    assert spec == JobSpec(
        name="pytest",
        priority="high",
        deadline_s=3600.0,
        subtasks=(
            SubtaskSpec(
                id="main",
                kind="shell",
                run=("/usr/bin/pytest", "-q", "a b"),
                priority="high",
                capability="lint",
                min_vram=2 * GiB,
                timeout_s=90.0,
            ),
        ),
    )
    assert single_command_job(["make"], name="build").name == "build"


def test_single_prompt_job() -> None:
    spec = single_prompt_job("Explain this", "architecture", min_vram=GiB, timeout=30)
    assert spec.name == "prompt"
    (main,) = spec.subtasks
    assert (main.id, main.kind, main.prompt, main.capability) == (
        "main",
        "llm",
        "Explain this",
        "architecture",
    )
    assert (main.min_vram, main.timeout_s, main.max_tokens) == (GiB, 30.0, DEFAULT_MAX_TOKENS)
    assert single_prompt_job("x", None, model="deep").subtasks[0].model == "deep"


def test_single_job_errors_name_the_flags() -> None:
    with pytest.raises(JobError) as info:
        single_command_job(["x"], priority="urgent", min_vram="2G", timeout="never")
    assert str(info.value).splitlines() == [
        'swarmctl submit: --priority: bad priority "urgent" (expected one of critical, high, '
        "normal, low)",
        "swarmctl submit: --timeout: bad duration 'never': expected e.g. 500ms, 30s, 10m, 1h",
        "swarmctl submit: --min-vram: bad size '2G': ambiguous unit 'G', write GiB (binary) "
        "or GB (decimal)",
    ]
    with pytest.raises(JobError, match="give a command to run after --"):
        single_command_job([])
    with pytest.raises(JobError, match="swarmctl submit: give --capability"):
        single_prompt_job("x", None)
    with pytest.raises(JobError, match="swarmctl submit: --prompt: must not be empty"):
        single_prompt_job(" ", "lint")


# ---------------------------------------------------------------------------- templates


def test_template_references_and_render() -> None:
    text = "a={{ a.stdout }} b={{b.stderr}} c={{  c.output\t}} d={{d.exit_code}} again {{a.stdout}}"
    assert template.references(text) == {"a", "b", "c", "d"}
    results: dict[str, dict[str, Any]] = {
        "a": {"stdout": "one\n\n"},
        "b": {"stderr": b"two\r\n"},
        "c": {"output": "three"},
        "d": {"exit_code": 0},
    }
    assert template.render(text, results) == "a=one b=two c=three d=0 again one"


def test_template_missing_values_insert_nothing() -> None:
    assert template.render("[{{ a.output }}][{{a.exit_code}}]", {"a": {"output": None}}) == "[][]"


def test_template_render_is_one_pass() -> None:
    results = {"a": {"stdout": "{{ b.stdout }}"}, "b": {"stdout": "NO"}}
    assert template.render("{{ a.stdout }}", results) == "{{ b.stdout }}"


def test_template_render_without_result_is_key_error() -> None:
    with pytest.raises(KeyError, match="no result for subtask 'a'"):
        template.render("{{ a.stdout }}", {})


def test_template_argv_elements_are_not_resplit() -> None:
    spec = parse_job(job(shell("a"), shell("b", run=["wc", "-w", "{{ a.stdout }}"], after=["a"])))
    results = {"a": {"stdout": "two words; rm -rf / \n"}}
    argv = [template.render(arg, results) for arg in spec.subtasks[1].run]
    assert argv == ["wc", "-w", "two words; rm -rf / "]
    assert spec.subtasks[1].templated_texts() == [
        ("run", "wc"),
        ("run", "-w"),
        ("run", "{{ a.stdout }}"),
    ]
    plan = load_job_text(CONTRACT_EXAMPLE, "toml", "r.toml").subtask("plan")
    assert plan.templated_texts() == [("prompt", plan.prompt)]


def test_template_placeholders() -> None:
    found = template.placeholders("{{ a.stdout }} {{b.nope}} {{ c }}")
    assert [(p.subtask, p.field, p.known) for p in found] == [
        ("a", "stdout", True),
        ("b", "nope", False),
    ]
    assert template.compact("x {{ a.stdout }} {{ b }}") == "x {{a.stdout}} {{ b }}"


_ids = st.text(alphabet="abcxyzAZ019_-", min_size=1, max_size=8)
_filler = st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=8)


@settings(max_examples=60)
@given(
    parts=st.lists(
        st.tuples(_filler, _ids, st.sampled_from(template.FIELDS), st.booleans()), max_size=6
    ),
    tail=_filler,
    values=st.dictionaries(_ids, st.text(max_size=10)),
)
def test_template_round_trip(
    parts: list[tuple[str, str, str, bool]], tail: str, values: dict[str, str]
) -> None:
    text = ""
    expected = ""
    results: dict[str, dict[str, Any]] = {}
    for filler, sid, field, spaced in parts:
        text += filler + ("{{ %s.%s }}" if spaced else "{{%s.%s}}") % (sid, field)
        value = values.get(sid, "v") + "\n" * len(filler)
        results.setdefault(sid, {})[field] = value
    for filler, sid, field, _ in parts:
        expected += filler + results[sid][field].rstrip("\r\n")
    text += tail
    expected += tail
    assert template.references(text) == {sid for _, sid, _, _ in parts}
    assert template.render(text, results) == expected
    assert template.render(tail, results) == tail


# ---------------------------------------------------------------------------- DAG properties


@st.composite
def dags(draw: st.DrawFn, max_size: int = 14) -> tuple[list[str], dict[str, list[str]]]:
    """Ids in file order and each one's ``after`` list (a random DAG, shuffled)."""
    ids = draw(st.lists(_ids, min_size=1, max_size=max_size, unique=True))
    after = {
        sid: [ids[j] for j in draw(st.sets(st.integers(0, i - 1), max_size=4)) if i > 0]
        if i > 0
        else []
        for i, sid in enumerate(ids)
    }
    file_order = draw(st.permutations(ids))
    return list(file_order), after


def dag_job(file_order: list[str], after: dict[str, list[str]]) -> dict[str, Any]:
    return job(*(shell(sid, after=after[sid]) for sid in file_order))


@settings(max_examples=60)
@given(dags())
def test_random_dags_parse_and_order_respects_edges(
    dag: tuple[list[str], dict[str, list[str]]],
) -> None:
    file_order, after = dag
    spec = parse_job(dag_job(file_order, after))
    order = topological_order(spec)
    assert sorted(order) == sorted(file_order)
    index = {sid: i for i, sid in enumerate(order)}
    for sid, deps in after.items():
        for dep in deps:
            assert index[dep] < index[sid]
    # Stable: a file already in dependency order keeps its order.
    spec2 = parse_job(dag_job(order, after))
    assert topological_order(spec2) == order


def _upstream(after: dict[str, list[str]], start: str) -> set[str]:
    seen: set[str] = set()
    stack = list(after[start])
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(after[node])
    return seen


@settings(max_examples=60, suppress_health_check=[HealthCheck.filter_too_much])
@given(dags(), st.data())
def test_back_edge_makes_a_cycle_error_naming_its_ids(
    dag: tuple[list[str], dict[str, list[str]]], data: st.DataObject
) -> None:
    file_order, after = dag
    pairs = [(a, b) for a in file_order for b in sorted(_upstream(after, a))]
    assume(pairs)
    a, b = data.draw(st.sampled_from(pairs))
    after = {k: list(v) for k, v in after.items()}
    after[b].append(a)  # b waits for a, which (transitively) waits for b
    lines = errors_of(dag_job(file_order, after))
    cycle_lines = [line for line in lines if "dependency cycle" in line]
    assert len(lines) == len(cycle_lines) == 1
    path = cycle_lines[0].split("dependency cycle ")[1].split(" (")[0].split(" -> ")
    assert path[0] == path[-1]
    assert {a, b} <= set(path)
    for x, y in itertools.pairwise(path):
        assert y in after[x]  # each waits for the next
    with pytest.raises(JobError, match="dependency cycle"):
        topological_order(
            JobSpec(
                "t",
                subtasks=tuple(
                    SubtaskSpec(s, "shell", ("x",), after=tuple(after[s])) for s in file_order
                ),
            )
        )


# ---------------------------------------------------------------------------- JSON == TOML


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(value)


def to_toml(data: dict[str, Any]) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if k != "subtasks"]
    for sub in data["subtasks"]:
        lines.append("\n[[subtask]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in sub.items()]
    return "\n".join(lines) + "\n"


_text = st.text(min_size=1, max_size=12).filter(lambda s: s.strip() != "")
_common = {
    "priority": st.sampled_from(list(PRIORITY_RANK)),
    "timeout": st.one_of(st.sampled_from(["500ms", "2m", "1h"]), st.integers(1, 10**6)),
    "retries": st.integers(0, 100),
    "retry_on_error": st.booleans(),
    "min_vram": st.one_of(st.sampled_from(["20GiB", "512MB"]), st.integers(0, 2**40)),
    "min_ram": st.integers(0, 2**40),
    "node": _text,
    "env": st.dictionaries(
        st.text(alphabet="ABCXYZ_", min_size=1, max_size=5),
        st.text(max_size=5).filter(lambda s: "\0" not in s),
        max_size=3,
    ),
}
_paths = st.lists(
    st.lists(
        st.text(alphabet="abc.", min_size=1, max_size=4).filter(lambda p: p != ".." and p != "."),
        min_size=1,
        max_size=3,
    ).map("/".join),
    max_size=3,
)


@st.composite
def subtask_tables(draw: st.DrawFn, sid: str) -> dict[str, Any]:
    kind = draw(st.sampled_from(["shell", "llm", "python"]))
    table: dict[str, Any] = {"id": sid, "kind": kind}
    for key, strategy in _common.items():
        if draw(st.booleans()):
            table[key] = draw(strategy)
    if kind == "shell":
        table["run"] = draw(
            st.lists(
                st.text(max_size=6).filter(lambda s: "\0" not in s), min_size=1, max_size=4
            ).filter(lambda r: r[0] != "")
        )
        table["inputs"] = draw(_paths)
    elif kind == "llm":
        table["prompt"] = draw(_text)
        key = draw(st.sampled_from(["capability", "model"]))
        table[key] = draw(_text)
        if draw(st.booleans()):
            table["max_tokens"] = draw(st.integers(1, 4096))
    else:
        table["call"] = draw(st.sampled_from(["m:f", "a.b.c:d", "pkg.mod:Class.method"]))
        table["args"] = draw(
            st.lists(st.one_of(st.integers(-5, 5), _text, st.booleans()), max_size=3)
        )
        table["kwargs"] = draw(
            st.dictionaries(
                st.text(alphabet="abcxyz", min_size=1, max_size=4), st.integers(), max_size=2
            )
        )
        table["outputs"] = draw(_paths)
    if kind != "llm" and draw(st.booleans()):
        table["estimate"] = draw(st.sampled_from(["2s", "1.5m", 30, 0.25]))
    return table


@st.composite
def job_tables(draw: st.DrawFn) -> dict[str, Any]:
    file_order, after = draw(dags(max_size=5))
    subtasks = []
    for sid in file_order:
        table = draw(subtask_tables(sid))
        if after[sid]:
            table["after"] = after[sid]
        subtasks.append(table)
    data: dict[str, Any] = {"name": draw(_text.filter(str.isprintable))}
    if draw(st.booleans()):
        data["priority"] = draw(st.sampled_from(list(PRIORITY_RANK)))
    if draw(st.booleans()):
        data["deadline"] = draw(st.sampled_from(["10m", "1h", "90s"]))
    data["subtasks"] = subtasks
    return data


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(job_tables())
def test_json_and_toml_forms_give_equal_specs(data: dict[str, Any]) -> None:
    from_json = load_job_text(json.dumps(data), "json", "j.json")
    from_toml = load_job_text(to_toml(data), "toml", "j.toml")
    assert from_json == from_toml
    assert parse_job(job_to_data(from_json)) == from_json
    json.dumps(job_to_data(from_json))  # JSON-able


# ---------------------------------------------------------------------------- the cluster


def peer(
    name: str,
    *,
    caps: tuple[str, ...] = (),
    models: tuple[str, ...] = (),
    vram: int = 0,
    ram: int = 16 * GiB,
    shell: bool = True,
    node_id: str | None = None,
) -> PeerFacts:
    return PeerFacts(
        name=name,
        node_id=node_id or f"{name}-0123456789",
        capabilities=frozenset(caps),
        models=frozenset(models),
        max_vram_total=vram,
        ram_total=ram,
        allow_shell=shell,
    )


CLUSTER = [
    peer("laptop", caps=("lint", "syntax"), models=("fast",), vram=0, ram=8 * GiB, node_id="aa11"),
    peer("big", caps=("lint",), models=("fast",), vram=24 * GiB, ram=64 * GiB, node_id="bb22"),
    peer(
        "desk", caps=("architecture",), models=("deep",), vram=8 * GiB, shell=False, node_id="ab33"
    ),
]


def feasibility_errors(*subtasks: dict[str, Any], peers: list[PeerFacts] = CLUSTER) -> list[str]:
    spec = parse_job(job(*subtasks))
    with pytest.raises(JobError) as info:
        check_feasible(spec, peers)
    return str(info.value).splitlines()


def test_contract_example_is_feasible_on_a_fitting_cluster() -> None:
    spec = load_job_text(CONTRACT_EXAMPLE, "toml", "review.toml")
    check_feasible(spec, [*CLUSTER, peer("gpu", caps=("architecture",), vram=24 * GiB)])


@pytest.mark.parametrize(
    ("subtask", "expected"),
    [
        (
            llm("a", capability="securty"),
            'subtask "a": capability: no live peer offers "securty" '
            "(the cluster has: architecture, lint, syntax)",
        ),
        (
            llm("a", capability=None, model="huge"),
            'subtask "a": model: no live peer has a model profile "huge" '
            "(profiles in the cluster: deep, fast)",
        ),
        (
            llm("a", min_vram="40GiB"),
            'subtask "a": min_vram: 40 GiB needed, but the largest GPU on a live peer has '
            "24 GiB (big)",
        ),
        (
            shell("a", min_ram="100GiB"),
            'subtask "a": min_ram: 100 GiB needed, but the most memory on a live peer is '
            "64 GiB (big)",
        ),
        (
            shell("a", node="nas"),
            'subtask "a": node: no live peer is named "nas" or has an id starting with it '
            "(live peers: big, desk, laptop)",
        ),
        (
            llm("a", node="a"),
            'subtask "a": node: "a" matches several peers (laptop (aa11), desk (ab33)); '
            "give more of the id",
        ),
        (
            llm("a", capability="architecture", min_vram="20GiB"),
            'subtask "a": no single live peer meets all its constraints: capability '
            '"architecture" on desk; min_vram 20 GiB on big',
        ),
        (
            shell("a", node="desk"),
            'subtask "a": no single live peer meets all its constraints: node "desk" on desk; '
            "shell subtasks allowed on big, laptop",
        ),
    ],
)
def test_infeasible(subtask: dict[str, Any], expected: str) -> None:
    assert feasibility_errors(subtask) == [expected]


def test_feasible_pins_and_combinations() -> None:
    spec = parse_job(
        job(
            shell("a", node="big", min_vram="20GiB", capability="lint"),
            shell("b", node="aa"),
            llm("c", node="desk", model=None, capability="architecture", min_vram="8GiB"),
            llm("d", capability=None, model="fast", min_ram="8GiB"),
        )
    )
    check_feasible(spec, CLUSTER)


def test_a_pin_by_id_prefix_becomes_the_full_id_and_a_name_stays() -> None:
    spec = parse_job(
        job(shell("a", node="bb"), shell("b", node="big"), shell("c"), shell("d", node="aa11"))
    )
    check_feasible(spec, CLUSTER)
    pinned = resolve_pins(spec, CLUSTER)
    assert [s.node for s in pinned.subtasks] == ["bb22", "big", None, "aa11"]
    assert pinned.subtasks[1:] == spec.subtasks[1:]
    unpinned = parse_job(job(shell("a", node="big"), shell("b")))
    assert resolve_pins(unpinned, CLUSTER) is unpinned


def test_no_shell_anywhere_and_no_gpu() -> None:
    peers = [peer("p1", caps=("lint",), shell=False), peer("p2", shell=False)]
    assert feasibility_errors(
        shell("a"),
        {"id": "b", "kind": "python", "call": "m:f"},
        llm("c", min_vram="1GiB"),
        peers=peers,
    ) == [
        'subtask "a": no live peer allows shell subtasks (allow_shell = false on p1, p2)',
        'subtask "b": no live peer allows python subtasks (allow_shell = false on p1, p2)',
        'subtask "c": min_vram: 1 GiB needed, but no live peer has a GPU',
    ]


def test_no_peers() -> None:
    with pytest.raises(JobError, match="no live peers"):
        check_feasible(parse_job(job(shell("a"))), [])


# ---------------------------------------------------------------------------- input sizes

SIZES_JOB = parse_job(
    job(
        shell("lint", inputs=["src/", "pyproject.toml"]),
        shell("test", inputs=["src", "data.bin", "gone.txt"]),
        shell("all", inputs=["."]),
    )
)


def test_input_sizes_ok() -> None:
    sizes = {
        "src/a.py": 10,
        "src/b/c.py": 20,
        "./pyproject.toml": 5,
        "data.bin": 100,
        "gone.txt": 0,
    }
    check_input_sizes(SIZES_JOB, sizes, max_total=1000, max_file=100)


def test_missing_input_names_every_subtask_listing_it() -> None:
    sizes = {"src/a.py": 10, "pyproject.toml": None, "data.bin": 1, "gone.txt": None}
    with pytest.raises(JobError) as info:
        check_input_sizes(SIZES_JOB, sizes, max_total=1000, max_file=100)
    assert str(info.value).splitlines() == [
        'subtask "lint": inputs: "pyproject.toml" does not exist',
        'subtask "test": inputs: "gone.txt" does not exist',
    ]
    with pytest.raises(JobError, match='subtask "lint": inputs: "src/" does not exist'):
        check_input_sizes(SIZES_JOB, {"pyproject.toml": 1, "data.bin": 1, "gone.txt": 1}, 10, 10)


def test_input_over_limits() -> None:
    sizes = {"src/a.py": 10, "pyproject.toml": 1, "data.bin": 3 * GiB, "gone.txt": 2 * GiB}
    with pytest.raises(JobError) as info:
        check_input_sizes(SIZES_JOB, sizes, max_total=4 * GiB, max_file=GiB)
    assert str(info.value).splitlines() == [
        'inputs: input files total 5 GiB, over the limit of 4 GiB (largest: "data.bin" 3 GiB, '
        '"gone.txt" 2 GiB, "src/a.py" 10 B)',
        'subtask "test": inputs: "data.bin" is 3 GiB, over the per-file limit of 1 GiB',
        'subtask "test": inputs: "gone.txt" is 2 GiB, over the per-file limit of 1 GiB',
        'subtask "all": inputs: "data.bin" is 3 GiB, over the per-file limit of 1 GiB',
        'subtask "all": inputs: "gone.txt" is 2 GiB, over the per-file limit of 1 GiB',
    ]


def test_sizes_are_formatted_readably() -> None:
    lines = feasibility_errors(
        llm("a", min_vram=int(1.5 * GiB)), peers=[peer("p", caps=("lint",), vram=GiB + 1)]
    )
    assert lines == [
        'subtask "a": min_vram: 1.5 GiB needed, but the largest GPU on a live peer has 1 GiB (p)'
    ]
    assert not math.isnan(0.0)


# ---------------------------------------------------------------------------- odd inputs


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (job(shell("a"), priority=["high"]), "job.toml: priority: bad priority ['high']"),
        (job(shell("a", priority={})), 'subtask "a": priority: bad priority {}'),
        (job(shell("a", kind=["shell"])), "subtask \"a\": kind: unknown kind ['shell']"),
        (
            job({"id": "a", "kind": "python", "call": "m:f", "args": [math.nan]}),
            'subtask "a": args: must hold only JSON values',
        ),
    ],
)
def test_unhashable_and_non_finite_values(data: dict[str, Any], expected: str) -> None:
    assert expected in one_error(data)


def test_byte_order_mark_is_ignored() -> None:
    assert load_job_text("\ufeff" + CONTRACT_EXAMPLE, "toml", "r.toml").name == "review"


def test_very_many_problems_are_capped_in_the_message() -> None:
    with pytest.raises(JobError) as info:
        parse_job(job(*(shell(f"s{i}", retries=-1) for i in range(150))))
    assert len(info.value.errors) == 150
    lines = str(info.value).splitlines()
    assert len(lines) == 101
    assert lines[-1] == "… and 50 more problems"


def test_long_cycle_is_shortened() -> None:
    n = 40
    line = one_error(job(*(shell(f"s{i}", after=[f"s{(i + 1) % n}"]) for i in range(n))))
    assert 'subtask "s0": after: dependency cycle s0 -> s1 -> ' in line
    assert "… (29 more) … -> s39 -> s0" in line


def test_large_jobs_stay_fast() -> None:
    n = 3000
    tables = [shell("s0")] + [
        shell(
            f"s{i}",
            run=["echo", "{{ s0.stdout }}", f"{{{{ s{i // 2}.stdout }}}}"],
            after=[f"s{i - 1}"],
        )
        for i in range(1, n)
    ]
    spec = parse_job(job(*tables))
    assert topological_order(spec) == [f"s{i}" for i in range(n)]
    tables[0] = shell("s0", after=[f"s{n - 1}"])  # now one big cycle
    lines = errors_of(job(*tables))
    assert len(lines) == 1 and "dependency cycle s0 -> s2999 -> s2998" in lines[0]
