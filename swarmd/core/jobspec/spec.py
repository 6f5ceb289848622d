r"""The job spec's types and limits: :class:`JobSpec` and its :class:`SubtaskSpec`\s, the
kinds and priorities a subtask can have, and the bounds the reader enforces."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

Kind = Literal["shell", "llm", "python"]
Api = Literal["chat", "completions", "embeddings"]  # an OpenAI request passed through
Priority = Literal["critical", "high", "normal", "low"]

KINDS: Final[tuple[Kind, ...]] = ("shell", "llm", "python")
APIS: Final[tuple[Api, ...]] = ("chat", "completions", "embeddings")
PRIORITY_RANK: Final[Mapping[str, int]] = {"critical": 0, "high": 1, "normal": 2, "low": 3}

MAX_ID_LENGTH: Final = 64
MAX_NAME_LENGTH: Final = 200
MAX_SUBTASKS: Final = 10_000
MAX_RETRIES: Final = 100
DEFAULT_RETRIES: Final = 2
DEFAULT_MAX_TOKENS: Final = 256
SINGLE_SUBTASK_ID: Final = "main"


@dataclass(frozen=True)
class SubtaskSpec:
    id: str
    kind: Kind
    run: tuple[str, ...] = ()  # shell argv
    prompt: str | None = None  # llm; may contain {{ ID.stdout }} / {{ ID.output }}
    call: str | None = None  # python "module:function"
    args: tuple[Any, ...] = field(default=(), hash=False)  # python, JSON-able
    kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)  # python, JSON-able
    capability: str | None = None
    model: str | None = None  # a model profile name ([models.NAME])
    after: tuple[str, ...] = ()
    priority: Priority = "normal"  # the job's priority unless the subtask sets one
    timeout_s: float | None = None
    # shell/python: about how long it runs on a speed-1 node (a pricing hint); None:
    # unknown (pricing then takes 1 s). An llm subtask is estimated from its tokens.
    estimate_s: float | None = None
    retries: int = DEFAULT_RETRIES  # re-dispatches after node failures (not app errors)
    retry_on_error: bool = False
    min_vram: int = 0  # bytes
    min_ram: int = 0  # bytes
    node: str | None = None  # pin to a node name or id (prefix)
    engine: str | None = None  # shell: run as a job of this [engines.NAME] (a node fronting it)
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    inputs: tuple[str, ...] = ()  # relative paths (files or dirs) from the submitter's cwd
    # "SUBTASK/PATH": that upstream subtask's artifact (file or directory) PATH, shipped
    # into this subtask's directory at PATH
    upstream_inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()  # relative paths collected back as artifacts
    max_tokens: int | None = None  # llm (DEFAULT_MAX_TOKENS when kind == "llm")
    system: str | None = None  # llm system prompt (optional)
    # llm, instead of prompt/system: an OpenAI request body passed to the endpoint's
    # /chat/completions, /completions or /embeddings as it is, but for its "model"
    # (the gateway's requests; swarmd.core.gateway).
    api: Api | None = None
    request: Mapping[str, Any] | None = field(default=None, hash=False, compare=True)
    client: str | None = None  # who asked (the gateway's API key label), for usage

    def templated_texts(self) -> list[tuple[str, str]]:
        """``(key, text)`` of every text rendered with upstream results before running:
        the prompt, the system prompt and each argv element (input file contents are
        rendered too, but they are not part of the spec)."""
        texts = [("run", arg) for arg in self.run]
        if self.prompt is not None:
            texts.append(("prompt", self.prompt))
        if self.system is not None:
            texts.append(("system", self.system))
        return texts


@dataclass(frozen=True)
class JobSpec:
    name: str
    priority: Priority = "normal"
    deadline_s: float | None = None  # relative to submit time
    subtasks: tuple[SubtaskSpec, ...] = ()
    # run it even if the deadline cannot be met (else refused at submit: see
    # swarmd.core.tasks.outlook)
    deadline_best_effort: bool = False

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.subtasks)

    def subtask(self, subtask_id: str) -> SubtaskSpec:
        """The subtask with that id; KeyError if there is none."""
        for s in self.subtasks:
            if s.id == subtask_id:
                return s
        raise KeyError(subtask_id)
