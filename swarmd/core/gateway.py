"""The OpenAI-compatible gateway, sans-I/O: an OpenAI request becomes a priced ``llm``
subtask, and its answer goes back to the client as the upstream server gave it.

* :class:`Catalog` — every model the live cluster serves, from each node's gossiped
  model profiles: the upstream model ids, the profile names and a ``capability:NAME``
  alias per advertised capability (``GET /v1/models``), and the name a client asks
  for resolved into what pricing matches (:meth:`Catalog.resolve`); an unknown name
  is a 404 that lists what exists.
* :func:`parse_body` and :func:`job_data` — the request body (a JSON object with a
  ``model``) becomes the data of a one-subtask job: ``kind = "llm"``, ``api`` (chat,
  completions or embeddings) and ``request`` (the body as it came); the coordinator
  prices it like any llm subtask (:func:`estimate_request_tokens` for its size).
  :func:`gateway_job` is that job's spec, as ``parse_job`` reads it, built directly.
* :func:`rewrite_model` — the answer with ``model`` set back to the name the client
  used; :func:`key_id` — the label an API key is accounted under.

Errors are :class:`GatewayError`: an HTTP status and an OpenAI-shaped body
(``{"error": {"message", "type", "code"}}``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .budget import key_id as budget_key_id
from .jobspec import DEFAULT_MAX_TOKENS, PRIORITY_RANK, SINGLE_SUBTASK_ID, parse_job
from .jobspec.kinds import is_jsonable
from .jobspec.spec import APIS, MAX_NAME_LENGTH, Api, JobSpec, Priority, SubtaskSpec

API_PATHS: Final[Mapping[Api, str]] = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}
CAPABILITY_PREFIX: Final = "capability:"
EMBEDDINGS: Final = "embeddings"  # the capability a profile needs to serve /v1/embeddings
DEFAULT_PRIORITY: Final = "high"  # interactive: ahead of queued batch work
PRIORITY_HEADER: Final = "x-swarmd-priority"
RETRIES: Final = 2  # re-dispatches after node failures, before the first byte went out
LOCAL_CLIENT: Final = "local"  # the key label of requests when no API keys are configured


class GatewayError(Exception):
    """An answer other than the upstream's: ``status`` and an OpenAI-shaped body."""

    def __init__(self, status: int, message: str, type_: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


def bad_request(message: str, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code)


# ---------------------------------------------------------------- the catalog


@dataclass(frozen=True, slots=True)
class Served:
    """One model profile on one live node."""

    node: str  # the node's name
    profile: str  # [models.NAME]
    model: str  # the upstream model id
    capabilities: frozenset[str]


@dataclass(frozen=True, slots=True)
class Target:
    """What a request asks for, as pricing matches it (``Demand.model`` matches a
    profile name or an upstream id; a capability must be among the profile's)."""

    name: str  # as the client gave it (answers carry it back)
    model: str | None
    capability: str | None


class Catalog:
    def __init__(self, served: Iterable[Served]) -> None:
        self.served = tuple(served)

    def entries(self) -> dict[str, list[str]]:
        """Model id -> the names of the nodes serving it: upstream ids first, then
        profile names, then the capability aliases, each group sorted."""
        ids: dict[str, set[str]] = {}
        profiles: dict[str, set[str]] = {}
        caps: dict[str, set[str]] = {}
        for s in self.served:
            ids.setdefault(s.model, set()).add(s.node)
            profiles.setdefault(s.profile, set()).add(s.node)
            for cap in s.capabilities:
                caps.setdefault(CAPABILITY_PREFIX + cap, set()).add(s.node)
        out: dict[str, list[str]] = {}
        for group in (ids, profiles, caps):
            for name in sorted(group):
                out.setdefault(name, [])
                out[name] = sorted(set(out[name]) | group[name])
        return out

    def models_list(self) -> dict[str, Any]:
        """The body of ``GET /v1/models``; ``owned_by`` names the serving nodes."""
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": ",".join(nodes)}
            for name, nodes in self.entries().items()
        ]
        return {"object": "list", "data": data}

    def resolve(self, name: str, api: Api) -> Target:
        """The target of a request for ``name``: ``capability:NAME``, a profile name or
        an upstream model id. GatewayError 404 listing what exists, if none serves it
        (for embeddings: none with the ``embeddings`` capability)."""
        served = self.served
        if api == "embeddings":
            served = tuple(s for s in served if EMBEDDINGS in s.capabilities)
        if name.startswith(CAPABILITY_PREFIX):
            cap = name[len(CAPABILITY_PREFIX) :]
            if any(cap in s.capabilities for s in served):
                return Target(name, None, cap)
        elif any(name in (s.profile, s.model) for s in served):
            return Target(name, name, EMBEDDINGS if api == "embeddings" else None)
        raise self._unknown(name, api, served)

    def _unknown(self, name: str, api: Api, served: tuple[Served, ...]) -> GatewayError:
        known = list(Catalog(served).entries())
        what = "embeddings models" if api == "embeddings" else "models"
        listed = ", ".join(known[:50]) + (f" and {len(known) - 50} more" if len(known) > 50 else "")
        exists = f"the cluster serves these {what}: {listed}" if known else f"no {what} served"
        return GatewayError(
            404, f"The model '{name}' does not exist; {exists}", "invalid_request_error",
            "model_not_found",
        )  # fmt: skip


def served_from_gossip(node: str, models: Iterable[Any]) -> list[Served]:
    """A node's gossiped ``models`` values (ModelProfile as builtins) as Served rows;
    malformed entries are skipped."""
    out = []
    for m in models:
        if not isinstance(m, Mapping):
            continue
        profile, model, caps = m.get("name"), m.get("model"), m.get("capabilities") or ()
        if isinstance(profile, str) and isinstance(model, str) and isinstance(caps, list | tuple):
            out.append(
                Served(node, profile, model, frozenset(c for c in caps if isinstance(c, str)))
            )
    return out


# ---------------------------------------------------------------- the request


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object with a string ``model``; 400 otherwise."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad_request("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("You must provide a model parameter.", "missing_model")
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise bad_request("'stream' must be a boolean.")
    return body


def priority_of(header: str | None) -> str:
    """The request's priority: the ``x-swarmd-priority`` header, else high."""
    if header is None or header == "":
        return DEFAULT_PRIORITY
    value = header.strip().lower()
    if value not in PRIORITY_RANK:
        raise bad_request(f"{PRIORITY_HEADER}: {header!r} is not one of {', '.join(PRIORITY_RANK)}")
    return value


def job_data(
    api: Api, body: Mapping[str, Any], target: Target, priority: str, client: str
) -> dict[str, Any]:
    """The job (as data for ``parse_job``) of one gateway request."""
    if api not in APIS:
        raise ValueError(f"unknown api {api!r}")
    subtask: dict[str, Any] = {
        "id": SINGLE_SUBTASK_ID,
        "kind": "llm",
        "api": api,
        "request": dict(body),
        "client": client,
        "retries": RETRIES,
        "max_tokens": max_tokens_of(api, body),
    }
    if target.model is not None:
        subtask["model"] = target.model
    if target.capability is not None:
        subtask["capability"] = target.capability
    return {
        "name": f"gateway {api} {target.name}"[:200],
        "priority": priority,
        "subtasks": [subtask],
    }


def gateway_job(
    api: Api, body: Mapping[str, Any], target: Target, priority: str, client: str
) -> JobSpec:
    """The spec :func:`~swarmd.core.jobspec.parse_job` reads from :func:`job_data`,
    built without the generic reader (a request's path is short). What the reader
    would check of such data and could find wrong (a name that is not printable, a
    blank model, capability or client label, a body that JSON cannot carry) sends it
    through the reader instead, for its exact error (JobError)."""
    name = f"gateway {api} {target.name}"[:MAX_NAME_LENGTH]
    request = dict(body)
    if (
        api not in APIS
        or priority not in PRIORITY_RANK
        or not name.isprintable()
        or not all(v is None or v.strip() for v in (target.model, target.capability))
        or not client.strip()
        or not is_jsonable(request)
    ):
        return parse_job(job_data(api, body, target, priority, client), source="gateway request")
    rank: Priority = priority  # type: ignore[assignment]  # one of PRIORITY_RANK
    spec = SubtaskSpec(
        id=SINGLE_SUBTASK_ID,
        kind="llm",
        priority=rank,
        retries=RETRIES,
        capability=target.capability,
        model=target.model,
        max_tokens=max_tokens_of(api, body),
        api=api,
        request=request,
        client=client,
    )
    return JobSpec(name=name, priority=rank, subtasks=(spec,))


def max_tokens_of(api: Api, request: Mapping[str, Any]) -> int:
    """The tokens a request may generate (embeddings: 1), as its spec's max_tokens."""
    if api == "embeddings":
        return 1
    for key in ("max_completion_tokens", "max_tokens"):
        value = request.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10_000_000:
            return value
    return DEFAULT_MAX_TOKENS


def estimate_request_tokens(api: Api, request: Mapping[str, Any]) -> int:
    """Tokens a request will use, for pricing: about 4 characters per token of the
    text it carries (messages, prompt or input), plus what it may generate."""
    text = {"chat": "messages", "completions": "prompt", "embeddings": "input"}[api]
    chars = text_chars(request.get(text), 0)
    return math.ceil(chars / 4) + (0 if api == "embeddings" else max_tokens_of(api, request))


def text_chars(value: Any, depth: int) -> int:
    if isinstance(value, str):
        return len(value)
    if depth > 32:
        return 0
    if isinstance(value, list | tuple):
        return sum(text_chars(v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        return sum(text_chars(v, depth + 1) for v in value.values())
    return 0


# ---------------------------------------------------------------- the answer


def rewrite_model(doc: Any, name: str) -> Any:
    """An answer (a response body or a stream chunk) with ``model`` set to ``name``."""
    if isinstance(doc, dict) and "model" in doc:
        doc["model"] = name
    return doc


def key_id(api_key: str | None) -> str:
    """The label requests are accounted under (usage, budgets): the first 12 hex digits
    of the key's SHA-256 (:func:`swarmd.core.budget.key_id`; the key itself is never
    kept), "local" without keys."""
    if not api_key:
        return LOCAL_CLIENT
    return budget_key_id(api_key)
