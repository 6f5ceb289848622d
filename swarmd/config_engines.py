"""``[engines.NAME]``: a Slurm or Ray cluster this node fronts (swarmd/engines/).

```toml
[engines.hpc]
kind = "slurm"                 # slurm | ray
partition = "gpu"              # slurm: --partition, --account, --qos, extra sbatch options
account = "lab"
qos = "normal"
sbatch_args = ["--constraint=a100"]
slurm_conf = "/etc/slurm/other.conf"   # slurm: SLURM_CONF for its commands (optional)
workdir = "/shared/swarmd"     # visible to the compute nodes (default: STATE_DIR/engines/NAME)
overflow_only = false          # true: pricing picks it only when the LAN has no free slot
max_jobs = 64                  # engine jobs this node holds at once
poll = "5s"                    # how often its capacity is read

[engines.ray]
kind = "ray"
address = "http://127.0.0.1:8265"      # the Jobs API
runtime_env = { pip = ["numpy"] }      # passed with each job
```
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .config_table import ConfigError
from .config_table import Table as _Table
from .core.units import parse_duration
from .engines.ray_jobs import runtime_env_problem

ENGINE_KINDS: Final = ("slurm", "ray")
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_JOBS_LIMIT: Final = 100_000


@dataclass(frozen=True)
class EngineConfig:
    name: str
    kind: str  # slurm | ray
    workdir: Path | None = None  # None: STATE_DIR/engines/NAME
    overflow_only: bool = False
    max_jobs: int = 64
    poll_s: float = 5.0
    partition: str | None = None  # slurm
    account: str | None = None
    qos: str | None = None
    sbatch_args: tuple[str, ...] = ()
    slurm_conf: str | None = None
    address: str | None = None  # ray: the Jobs API
    runtime_env: Mapping[str, Any] = field(default_factory=dict)

    def workdir_in(self, state_dir: Path) -> Path:
        return self.workdir if self.workdir is not None else state_dir / "engines" / self.name


def engines_config(top: _Table, label: str) -> tuple[EngineConfig, ...]:
    """Every ``[engines.NAME]`` table, checked."""
    tables = top.get("engines", dict, {})
    return tuple(_engine(label, name, data) for name, data in tables.items())


def _engine(label: str, name: str, data: Any) -> EngineConfig:
    t = _Table(f"{label} [engines.{name}]", data)
    if not _NAME_RE.match(name):
        raise ConfigError(f"{t.where}: the name must be letters, digits, _ . - (at most 63)")
    kind = t.get("kind", str)
    if kind not in ENGINE_KINDS:
        raise ConfigError(
            f"{t.where} kind: expected one of {', '.join(ENGINE_KINDS)}, not {kind!r}"
        )
    values: dict[str, Any] = {"name": name, "kind": kind}
    if (workdir := t.get("workdir", str)) is not None:
        if not Path(workdir).is_absolute():
            raise ConfigError(f"{t.where} workdir: expected an absolute path, not {workdir!r}")
        values["workdir"] = Path(workdir)
    if (overflow := t.get("overflow_only", bool)) is not None:
        values["overflow_only"] = overflow
    if (max_jobs := t.get("max_jobs", int)) is not None:
        if not 1 <= max_jobs <= MAX_JOBS_LIMIT:
            raise ConfigError(f"{t.where} max_jobs: expected 1 to {MAX_JOBS_LIMIT}, not {max_jobs}")
        values["max_jobs"] = max_jobs
    if (poll := t.convert("poll", parse_duration)) is not None:
        if not 0.1 <= poll <= 3600:
            raise ConfigError(f"{t.where} poll: expected 0.1 s to 1 h, not {poll:g} s")
        values["poll_s"] = poll
    if kind == "slurm":
        _slurm(t, values)
    else:
        _ray(t, values)
    t.check_unknown()
    return EngineConfig(**values)


def _slurm(t: _Table, values: dict[str, Any]) -> None:
    for key in ("partition", "account", "qos", "slurm_conf"):
        if (value := t.get(key, str)) is not None:
            if not value or any(c.isspace() for c in value):
                raise ConfigError(f"{t.where} {key}: expected one word, not {value!r}")
            values[key] = value
    args = t.get("sbatch_args", list)
    if args is not None:
        if not all(isinstance(a, str) and a.startswith("-") for a in args):
            raise ConfigError(
                f'{t.where} sbatch_args: expected a list of sbatch options ("--opt=value")'
            )
        values["sbatch_args"] = tuple(args)


def _ray(t: _Table, values: dict[str, Any]) -> None:
    address = t.get("address", str)
    if address is None:
        raise ConfigError(f'{t.where} address: missing (the Jobs API, "http://HOST:8265")')
    if not address.startswith(("http://", "https://")):
        raise ConfigError(f"{t.where} address: expected http://HOST:PORT, not {address!r}")
    values["address"] = address.rstrip("/")
    if (runtime_env := t.get("runtime_env", dict)) is not None:
        if problem := runtime_env_problem(runtime_env):
            raise ConfigError(f"{t.where} runtime_env: {problem}")
        values["runtime_env"] = runtime_env
