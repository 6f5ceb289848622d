"""Job specs: parse and validate a job (TOML or JSON), order its subtasks, and check it
against the cluster before it is accepted.

A job is a DAG of subtasks (``after`` edges). :func:`parse_job` validates the whole
structure and reports *every* problem it finds in one :class:`JobError`, one line per
problem, each naming the subtask and the key, so a user fixes everything in one go.
:func:`check_feasible` refuses subtasks that no live peer could ever run (then
:func:`resolve_pins` turns a ``node`` pin by id prefix into the full id), and
:func:`check_input_sizes` refuses missing or oversized input files (the caller stats
the files; this package does no I/O).

Sizes are ints in bytes, durations float seconds. No I/O, no clock.

One concern per module:

- :mod:`.spec` the types (:class:`JobSpec`, :class:`SubtaskSpec`) and limits
- :mod:`.errors` :class:`JobError` and the collector of problems
- :mod:`.wording` how values appear in messages
- :mod:`.subtask` the reader of one subtask table (common keys from a table)
- :mod:`.fields` typed readers of its values (strings, durations, sizes, paths …)
- :mod:`.kinds` each kind's keys and reader (shell, llm, python)
- :mod:`.job` the job reader (:func:`parse_job`)
- :mod:`.graph` ids, ``after`` edges, cycles, references; :func:`topological_order`
- :mod:`.load` job files' text (:func:`load_job_text`, :func:`job_format`)
- :mod:`.serialize` a spec back to data (:func:`job_to_data`)
- :mod:`.single` one-subtask jobs from command-line options
- :mod:`.admission` :class:`PeerFacts`, :func:`check_feasible` (a table of constraints)
  and :func:`resolve_pins`
- :mod:`.inputs` :func:`check_input_sizes`
"""

from .admission import PeerFacts, check_feasible, resolve_pins
from .errors import MAX_REPORTED, JobError
from .graph import topological_order
from .inputs import check_input_sizes
from .job import parse_job
from .load import job_format, load_job_text
from .serialize import job_to_data
from .single import single_command_job, single_prompt_job
from .spec import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_RETRIES,
    KINDS,
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_RETRIES,
    MAX_SUBTASKS,
    PRIORITY_RANK,
    SINGLE_SUBTASK_ID,
    JobSpec,
    Kind,
    Priority,
    SubtaskSpec,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_RETRIES",
    "KINDS",
    "MAX_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_REPORTED",
    "MAX_RETRIES",
    "MAX_SUBTASKS",
    "PRIORITY_RANK",
    "SINGLE_SUBTASK_ID",
    "JobError",
    "JobSpec",
    "Kind",
    "PeerFacts",
    "Priority",
    "SubtaskSpec",
    "check_feasible",
    "check_input_sizes",
    "job_format",
    "job_to_data",
    "load_job_text",
    "parse_job",
    "resolve_pins",
    "single_command_job",
    "single_prompt_job",
    "topological_order",
]
