"""swarmd.toml + flags -> Config; every bad config is a ConfigError that says where."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest

from protocol.messages import ModelProfile, validate_state_value
from swarmd import config as config_mod
from swarmd.config import (
    DEFAULT_PORT,
    Config,
    ConfigError,
    ModelConfig,
    default_config_path,
    default_state_dir,
    load,
    parse_duration,
    split_host_port,
)
from swarmd.core.failure import DetectorConfig
from swarmd.core.gossip import GossipConfig
from swarmd.core.retention import Retention
from swarmd.hardware import DeclaredGpu

GiB = 1 << 30

# The example of CONTRACT.md's "swarmd.toml" section, verbatim.
CONTRACT_EXAMPLE = """\
[node]
name = "desk"
port = 7946
bind = "0.0.0.0"
join = ["192.168.1.20:7946"]
max_concurrency = 4        # shell/python slots
allow_shell = true
cost_per_hour = 0.0
on_battery = "pause"       # pause | run

[hardware]                 # what NVML cannot see (AMD, Apple) or an override
gpus = [{ name = "RTX 4090", vram = "24GiB" }]

[models.fast]
endpoint = "http://localhost:8001/v1"
model = "Qwen/Qwen3.5-1.5B"
capabilities = ["syntax", "format", "lint"]
max_concurrency = 8
cost_per_mtok = 0.0

[models.deep]
endpoint = "http://localhost:8002/v1"
model = "Qwen/Qwen3.5-32B"
capabilities = ["architecture", "refactor", "security"]
max_concurrency = 2
cost_per_mtok = 0.0
"""


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def write(tmp_path: Path, text: str, name: str = "swarmd.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_text(tmp_path: Path, text: str, **overrides: Any) -> Config:
    return load(write(tmp_path, text), overrides, state_dir=tmp_path / "state")


def config_error(tmp_path: Path, text: str, **overrides: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, **overrides)
    return str(info.value)


# ---------------------------------------------------------------- good configs


def test_contract_example(tmp_path: Path, state: Path) -> None:
    path = write(tmp_path, CONTRACT_EXAMPLE)
    cfg = load(path, {}, state_dir=state)
    assert cfg.source == path
    assert cfg.state_dir == state
    assert cfg.control_path == state / "control.sock"
    assert (cfg.name, cfg.port, cfg.bind) == ("desk", 7946, "0.0.0.0")
    assert cfg.join == ("192.168.1.20:7946",)
    assert cfg.max_concurrency == 4
    assert cfg.max_queue is None  # as many as the slots
    assert cfg.allow_shell is True
    assert cfg.cost_per_hour == 0.0
    assert cfg.on_battery == "pause"
    assert cfg.gpus == (DeclaredGpu("RTX 4090", 24 * GiB),)
    assert cfg.models == (
        ModelConfig(
            name="fast",
            endpoint="http://localhost:8001/v1",
            model="Qwen/Qwen3.5-1.5B",
            capabilities=("syntax", "format", "lint"),
            max_concurrency=8,
            cost_per_mtok=0.0,
        ),
        ModelConfig(
            name="deep",
            endpoint="http://localhost:8002/v1",
            model="Qwen/Qwen3.5-32B",
            capabilities=("architecture", "refactor", "security"),
            max_concurrency=2,
            cost_per_mtok=0.0,
        ),
    )
    # not in the file: defaults
    assert cfg.mdns is True
    assert cfg.advertise is None
    assert cfg.join_token is None
    assert cfg.log_level == "info"
    assert cfg.gossip == GossipConfig()


def test_no_file_gives_defaults(state: Path) -> None:
    cfg = load(None, {}, state_dir=state)
    assert cfg.source is None
    assert cfg.port == DEFAULT_PORT == 7946
    assert cfg.bind == "0.0.0.0"
    assert cfg.join == () and cfg.gpus == () and cfg.models == ()
    assert cfg.max_concurrency >= 1
    assert config_mod._NAME_RE.match(cfg.name)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "")
    assert cfg.port == DEFAULT_PORT and cfg.models == ()


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        CONTRACT_EXAMPLE,
        name="laptop",
        port=8000,
        bind="127.0.0.1",
        join=["10.0.0.1:7946", "10.0.0.2:7000"],
        mdns=False,
        log_level="debug",
        join_token="swarmd1-abc",
        advertise="10.0.0.9:8000",
    )
    assert (cfg.name, cfg.port, cfg.bind) == ("laptop", 8000, "127.0.0.1")
    assert cfg.join == ("10.0.0.1:7946", "10.0.0.2:7000")
    assert cfg.mdns is False
    assert cfg.log_level == "debug"
    assert cfg.join_token == "swarmd1-abc"
    assert cfg.advertise == "10.0.0.9:8000"
    assert cfg.max_concurrency == 4  # not overridden: the file's value


def test_unset_flags_leave_the_file_alone(tmp_path: Path) -> None:
    # click passes None for an absent option and () for an absent multiple option
    cfg = load_text(tmp_path, CONTRACT_EXAMPLE, name=None, port=None, join=(), mdns=None)
    assert (cfg.name, cfg.port, cfg.join, cfg.mdns) == ("desk", 7946, ("192.168.1.20:7946",), True)


def test_state_dir_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nstate_dir = "/from/file"\n')
    assert load(path, {}, state_dir=tmp_path / "flag").state_dir == tmp_path / "flag"
    assert load(path, {}).state_dir == Path("/from/file")


def test_gossip_table(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        [gossip]
        interval = "200ms"
        fanout = 4
        forget_after = "2m"
        phi_threshold = 10
        min_std = "50ms"
        acceptable_pause = 0.5
        suspicion = "3s"
        crash_probes = 3
        """,
    )
    g = cfg.gossip
    assert g.crash.enabled and g.crash.probes == 3
    assert not load_text(tmp_path, "[gossip]\ncrash_probes = 0").gossip.crash.enabled
    assert g.interval_s == pytest.approx(0.2)
    assert g.fanout == 4
    assert g.forget_after_s == 120.0
    assert g.detector.phi_threshold == 10.0
    assert g.detector.min_std_s == pytest.approx(0.05)
    assert g.detector.acceptable_pause_s == 0.5
    assert g.detector.suspicion_s == 3.0
    # keys not in the table keep their defaults
    assert g.detector.window == DetectorConfig().window
    assert g.max_delta_kvs == GossipConfig().max_delta_kvs


def test_tasks_table_sets_retention(tmp_path: Path, state: Path) -> None:
    assert load(None, {}, state_dir=state).retention == Retention()
    assert Retention().keep_s == 7 * 86400 and Retention().keep_tasks == 10_000
    cfg = load_text(tmp_path, '[tasks]\nkeep = "7d"\nkeep_tasks = 500\nkeep_subtasks = 9\n')
    r = cfg.retention
    assert (r.keep_s, r.keep_tasks, r.keep_subtasks) == (7 * 86400.0, 500, 9)
    for keep, seconds in (("1.5d", 1.5 * 86400), ("12h", 43200.0), ("90m", 5400.0), (3600, 3600.0)):
        r = load_text(tmp_path, f"[tasks]\nkeep = {keep!r}\n".replace("'", '"')).retention
        assert r.keep_s == seconds and r.keep_tasks == 10_000


def test_tasks_table_sets_the_queue_shares(tmp_path: Path, state: Path) -> None:
    default = load_text(tmp_path, "")
    assert dict(default.queue_shares) == {1: 0.10, 2: 0.05, 3: 0.05}
    assert default.starved_after_s == 30.0
    cfg = load_text(tmp_path, '[tasks]\nshares = { low = 0, high = 0.2 }\nstarved_after = "1m"\n')
    assert dict(cfg.queue_shares) == {1: 0.2, 2: 0.05, 3: 0.0} and cfg.starved_after_s == 60.0


def test_integer_size_and_numeric_types(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        [node]
        cost_per_hour = 2
        on_battery = "run"
        [hardware]
        gpus = [{ name = "M2 Max", vram = 34359738368 }, { name = "B", vram = "1.5 GB" }]
        [models.x]
        endpoint = "http://h/v1"
        model = "m"
        cost_per_mtok = 1
        """,
    )
    assert cfg.cost_per_hour == 2 and cfg.on_battery == "run"
    assert cfg.gpus == (DeclaredGpu("M2 Max", 32 * GiB), DeclaredGpu("B", 1_500_000_000))
    assert cfg.models[0].cost_per_mtok == 1.0
    assert isinstance(cfg.models[0].cost_per_mtok, float)
    assert cfg.models[0].capabilities == () and cfg.models[0].max_concurrency == 1


def test_models_become_valid_gossip_profiles(tmp_path: Path) -> None:
    """What node.py publishes for the CONTRACT example passes the gossip schema."""
    cfg = load_text(tmp_path, CONTRACT_EXAMPLE)
    profiles = [
        msgspec.to_builtins(
            ModelProfile(
                name=m.name,
                model=m.model,
                endpoint=m.endpoint,
                capabilities=list(m.capabilities),
                max_concurrency=m.max_concurrency,
                cost_per_mtok=m.cost_per_mtok,
            )
        )
        for m in cfg.models
    ]
    assert [p.name for p in validate_state_value("models", profiles)] == ["fast", "deep"]


# ---------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    ("text", "overrides", "must_name"),
    [
        ('[node]\nport = "7946"', {}, ["[node]", "port", "expected int"]),
        ("[node]\nport = 7946.0", {}, ["[node]", "port"]),
        ("[node]\nport = true", {}, ["[node]", "port"]),
        ("[node]\nport = 0", {}, ["port 0", "1-65535"]),
        ("[node]\nport = 65536", {}, ["port 65536"]),
        ("", {"port": 0}, ["port 0"]),
        ("[node]\nprot = 7946", {}, ["[node]", "unknown key", "prot"]),
        ("[node]\nname = 'desk'\nnmae = 'x'\nbogus = 1", {}, ["[node]", "bogus, nmae"]),
        ("[nodes]\nname = 'desk'", {}, ["unknown key", "nodes"]),
        ("node = 5", {}, ["node", "expected dict"]),
        ("[node]\nname = 'has space'", {}, ["name", "has space"]),
        ("", {"name": "-dash-first"}, ["name", "-dash-first"]),
        ("[node]\nname = '" + "n" * 64 + "'", {}, ["name"]),
        ("[node]\nmax_concurrency = 0", {}, ["max_concurrency"]),
        ("[node]\nallow_shell = 'yes'", {}, ["[node]", "allow_shell", "expected bool"]),
        ("[node]\nmdns = 1", {}, ["[node]", "mdns", "expected bool"]),
        ("[node]\ncost_per_hour = '1'", {}, ["[node]", "cost_per_hour", "int or float"]),
        ("[node]\non_battery = 'hibernate'", {}, ["on_battery", "hibernate", '"pause", "run"']),
        ("[node]\non_battery = true", {}, ["[node]", "on_battery", "True", "below:N"]),
        ("[node]\nlog_level = 'loud'", {}, ["log_level", "loud"]),
        ("[node]\njoin = '10.0.0.1:7946'", {}, ["[node]", "join", "expected list"]),
        ("[node]\njoin = ['10.0.0.1']", {}, ["join", "10.0.0.1", "HOST:PORT"]),
        ("[node]\njoin = ['10.0.0.1:http']", {}, ["join", "HOST:PORT"]),
        ("[node]\njoin = [':7946']", {}, ["join", "':7946'"]),
        ("", {"join": ["host:99999"]}, ["join", "host:99999"]),
        ("[node]\nadvertise = 'nowhere'", {}, ["advertise", "nowhere"]),
        ("[node]\nstate_dir = 5", {}, ["[node]", "state_dir"]),
        ("hardware = []", {}, ["hardware", "expected dict"]),
        ("[hardware]\ngpus = {name = 'x'}", {}, ["[hardware]", "gpus", "expected list"]),
        ("[hardware]\ngpus = ['RTX 4090']", {}, ["[hardware] gpus[0]", "expected a table"]),
        ("[hardware]\ngpus = [{name = 'RTX 4090'}]", {}, ["gpus[0]", "vram is required"]),
        ("[hardware]\ngpus = [{vram = '24GiB'}]", {}, ["gpus[0]", "name is required"]),
        ("[hardware]\ngpus = [{name = 1, vram = '1GiB'}]", {}, ["gpus[0] name", "expected str"]),
        (
            "[hardware]\ngpus = [{name = 'a', vram = '1GiB'}, {name = 'b', vram = '24G'}]",
            {},
            ["[hardware] gpus[1] vram", "24G", "ambiguous"],
        ),
        ("[hardware]\ngpus = [{name = 'a', vram = '-1GiB'}]", {}, ["gpus[0] vram", "-1GiB"]),
        ("[hardware]\ngpus = [{name = 'a', vram = 'lots'}]", {}, ["gpus[0] vram", "lots"]),
        ("[hardware]\ngpus = [{name = 'a', vram = true}]", {}, ["gpus[0] vram", "True"]),
        ("[hardware]\ngpus = [{name = 'a', vram = 1, vrm = 2}]", {}, ["gpus[0]", "vrm"]),
        ("[hardware]\ngpu = []", {}, ["[hardware]", "unknown key", "gpu"]),
        ("models = 3", {}, ["models", "expected dict"]),
        ("[models]\nfast = 'x'", {}, ["[models.fast]", "expected a table"]),
        ("[models.fast]\nmodel = 'm'", {}, ["[models.fast]", "endpoint and model are required"]),
        ("[models.fast]\nendpoint = 'http://h'", {}, ["[models.fast]", "required"]),
        (
            "[models.fast]\nendpoint = 'http://h'\nmodel = 'm'\ncapabilities = ['lint', 3]",
            {},
            ["[models.fast] capabilities", "list of strings"],
        ),
        (
            "[models.fast]\nendpoint = 'http://h'\nmodel = 'm'\ncapabilities = 'lint'",
            {},
            ["[models.fast] capabilities", "expected list"],
        ),
        (
            "[models.fast]\nendpoint = 'http://h'\nmodel = 'm'\nmax_concurrency = '8'",
            {},
            ["[models.fast] max_concurrency", "expected int"],
        ),
        (
            "[models.fast]\nendpoint = 'http://h'\nmodel = 'm'\nendpiont = 'x'",
            {},
            ["[models.fast]", "unknown key", "endpiont"],
        ),
        ("[node]\nmax_queue = -1", {}, ["max_queue", "-1", "0-10000"]),
        ("[node]\nmax_queue = '8'", {}, ["[node] max_queue", "expected int"]),
        ("[gossip]\ninterval = 'soon'", {}, ["[gossip] interval", "soon"]),
        ("[gossip]\ninterval = '0ms'", {}, ["[gossip]", "interval"]),
        ("[gossip]\nfanout = 0", {}, ["[gossip]", "fanout"]),
        ("[gossip]\nfanout = 2.5", {}, ["[gossip] fanout", "expected int"]),
        ("[gossip]\nsuspicion = '-1s'", {}, ["[gossip] suspicion", "-1s"]),
        ("[gossip]\ninterval = true", {}, ["[gossip] interval"]),
        ("[gossip]\ninterval = '1d'", {}, ["[gossip] interval", "1d"]),
        ("[gossip]\nphi = 8", {}, ["[gossip]", "unknown key", "phi"]),
        ("[gossip]\ncrash_probes = -1", {}, ["[gossip] crash_probes", "0 (off) to 10"]),
        ("[gossip]\ncrash_probes = true", {}, ["[gossip] crash_probes", "expected int"]),
        ("[tasks]\nkeep = 'a week'", {}, ["[tasks] keep", "a week", "7d"]),
        ("[tasks]\nkeep = '7 days'", {}, ["[tasks] keep", "7 days"]),
        ("[tasks]\nkeep = -1", {}, ["[tasks] keep", "-1"]),
        ("[tasks]\nkeep = '10s'", {}, ["[tasks] keep", "too short", "1m"]),
        ("[tasks]\nkeep = 0", {}, ["[tasks] keep", "too short"]),
        ("[tasks]\nkeep = inf", {}, ["[tasks] keep", "inf"]),
        ("[tasks]\nkeep = true", {}, ["[tasks] keep", "True"]),
        ("[tasks]\nkeep_tasks = 0", {}, ["[tasks] keep_tasks", "at least 1"]),
        ("[tasks]\nkeep_tasks = '100'", {}, ["[tasks] keep_tasks", "expected int"]),
        ("[tasks]\nkeep_tasks = 1.5", {}, ["[tasks] keep_tasks", "expected int"]),
        ("[tasks]\nkeep_subtasks = -3", {}, ["[tasks] keep_subtasks", "at least 1"]),
        ("[tasks]\nkeep_subtasks = '1k'", {}, ["[tasks] keep_subtasks", "expected int"]),
        ("[tasks]\nkeep_task = 5", {}, ["[tasks]", "unknown key", "keep_task"]),
        ("tasks = 5", {}, ["tasks", "expected dict"]),
        ("[tasks]\nshares = { critical = 0.1 }", {}, ["[tasks] shares.critical", "no share"]),
        ("[tasks]\nshares = { urgent = 0.1 }", {}, ["shares.urgent", "unknown class"]),
        ("[tasks]\nshares = { low = 1 }", {}, ["shares.low", "below 1"]),
        ("[tasks]\nshares = { low = true }", {}, ["shares.low", "True"]),
        ("[tasks]\nshares = { high = 0.5, low = 0.6 }", {}, ["[tasks] shares", "more than 1"]),
        ("[tasks]\nshares = 0.1", {}, ["[tasks] shares", "expected dict"]),
        ("[tasks]\nstarved_after = '25h'", {}, ["[tasks] starved_after", "0s to 24h"]),
        ("[tasks]\nstarved_after = 'soon'", {}, ["[tasks] starved_after", "soon"]),
    ],
)
def test_bad_config_names_the_key(
    tmp_path: Path, text: str, overrides: dict[str, Any], must_name: list[str]
) -> None:
    message = config_error(tmp_path, text, **overrides)
    for part in must_name:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.mark.parametrize(
    "text",
    [
        "[node]\nport = 7946\nport = 7947",  # duplicate key
        "[node\nname = 'desk'",
        "[node]\nname = desk",  # bare string
        "[node]\njoin = ['a:1',",
    ],
)
def test_invalid_toml_syntax(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path, {}, state_dir=tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert "(at " in message  # tomllib says where: line and column, or end of document


@pytest.mark.parametrize("text", ["a = " + "[" * 100_000, "[node]\nx = " + "{y = " * 100_000])
def test_a_deeply_nested_config_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path, {}, state_dir=tmp_path)
    assert str(info.value) == f"{path}: not valid TOML: nested too deeply"


def test_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[node]\nport = 'x'", name="my-node.toml")
    with pytest.raises(ConfigError, match=r"my-node\.toml \[node\] port"):
        load(path, {}, state_dir=tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: no such config file"):
        load(path, {}, state_dir=tmp_path)


@pytest.mark.parametrize("kind", ["not-utf8", "directory"])
def test_unreadable_file_is_a_config_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "swarmd.toml"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b'[node]\nname = "d\xffsk"\n')
    with pytest.raises(ConfigError, match=r"swarmd\.toml"):
        load(path, {}, state_dir=tmp_path)


def test_join_entries_must_be_strings(tmp_path: Path) -> None:
    assert "join" in config_error(tmp_path, "[node]\njoin = [7946]")


@pytest.mark.parametrize("name", ["   ", "x" * 129], ids=["blank", "too-long"])
def test_declared_gpu_name_errors_are_config_errors(tmp_path: Path, name: str) -> None:
    message = config_error(tmp_path, f"[hardware]\ngpus = [{{name = '{name}', vram = 1}}]")
    assert "gpus[0]" in message


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("max_concurrency = 0", "max_concurrency"),
        ("cost_per_mtok = -1.0", "cost_per_mtok"),
        ("capabilities = ['" + "c" * 129 + "']", "capabilities"),
        ("capabilities = [" + ", ".join(f"'c{i}'" for i in range(65)) + "]", "capabilities"),
    ],
    ids=["zero-concurrency", "negative-cost", "long-capability", "65-capabilities"],
)
def test_model_values_the_gossip_schema_rejects_are_config_errors(
    tmp_path: Path, extra: str, key: str
) -> None:
    text = f"[models.fast]\nendpoint = 'http://h/v1'\nmodel = 'm'\n{extra}\n"
    message = config_error(tmp_path, text)
    assert "[models.fast]" in message and key in message


@pytest.mark.parametrize(
    "text",
    ["interval = nan", "interval = inf", "suspicion = -1", "forget_after = -5.0"],
)
def test_non_finite_or_negative_durations_are_refused(tmp_path: Path, text: str) -> None:
    config_error(tmp_path, f"[gossip]\n{text}")


# ---------------------------------------------------------------- defaults from the environment


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {
                "SWARMD_STATE_DIR": "/a",
                "STATE_DIRECTORY": "/b",
                "XDG_STATE_HOME": "/c",
            },
            "/a",
        ),
        ({"STATE_DIRECTORY": "/b", "XDG_STATE_HOME": "/c"}, "/b"),
        ({"STATE_DIRECTORY": "/b1:/b2"}, "/b1"),  # systemd lists several
        ({"SWARMD_STATE_DIR": "", "STATE_DIRECTORY": "/b"}, "/b"),  # empty means unset
        ({"XDG_STATE_HOME": "/c"}, "/c/swarmd"),
        ({"SWARMD_STATE_DIR": "", "STATE_DIRECTORY": "", "XDG_STATE_HOME": ""}, None),
        ({}, None),
    ],
)
def test_default_state_dir(env: dict[str, str], expected: str | None) -> None:
    want = Path(expected) if expected else Path.home() / ".local" / "state" / "swarmd"
    assert default_state_dir(env) == want


def test_default_state_dir_uses_os_environ_without_an_argument(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SWARMD_STATE_DIR", str(tmp_path))
    assert default_state_dir() == tmp_path
    monkeypatch.delenv("SWARMD_STATE_DIR")
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "sd"))
    assert default_state_dir() == tmp_path / "sd"


def test_default_config_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_config_path({"SWARMD_CONFIG": "/x/swarmd.toml"}) == Path("/x/swarmd.toml")
    # SWARMD_CONFIG is taken even if that file does not exist (load() then says so)
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    real_is_file = Path.is_file

    def is_file(self: Path) -> bool:
        if str(self) == "/etc/swarmd/swarmd.toml":
            return False  # whatever this machine has
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", is_file)
    assert default_config_path({}) is None
    assert default_config_path({"SWARMD_CONFIG": ""}) is None
    user = tmp_path / ".config" / "swarmd" / "swarmd.toml"
    user.parent.mkdir(parents=True)
    user.write_text("")
    assert default_config_path({}) == user
    assert default_config_path({"SWARMD_CONFIG": "/x.toml"}) == Path("/x.toml")

    def etc_exists(self: Path) -> bool:
        return str(self) == "/etc/swarmd/swarmd.toml" or real_is_file(self)

    monkeypatch.setattr(Path, "is_file", etc_exists)
    assert default_config_path({}) == Path("/etc/swarmd/swarmd.toml")  # before ~/.config


# ---------------------------------------------------------------- parse_duration, split_host_port


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("200ms", 0.2),
        ("500ms", 0.5),
        ("2s", 2.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("30", 30.0),
        (" 5 ms ", 0.005),
        ("0", 0.0),
        (3, 3.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    result = parse_duration(text)
    assert isinstance(result, float)
    assert math.isclose(result, seconds)


@pytest.mark.parametrize(
    "text", ["", "ms", "1d", "10 minutes", "-1s", "1e3", "1.2.3s", "5sec", "s5", True, "1h30m"]
)
def test_parse_duration_rejects(text: Any) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("192.168.1.20:7946", "192.168.1.20", 7946),
        ("desk.local:1", "desk.local", 1),
        ("localhost:65535", "localhost", 65535),
        ("[::1]:7946", "::1", 7946),
        ("[fe80::1%eth0]:80", "fe80::1%eth0", 80),
    ],
)
def test_split_host_port(text: str, host: str, port: int) -> None:
    assert split_host_port(text) == (host, port)


@pytest.mark.parametrize(
    "text",
    ["desk", "desk:", ":7946", "desk:0", "desk:65536", "desk:-1", "desk:http", "desk:7946 ", ""],
)
def test_split_host_port_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_host_port(text)


def test_hardware_speed(tmp_path: Path) -> None:
    assert load_text(tmp_path, "").speed == 1.0
    assert load_text(tmp_path, "[hardware]\nspeed = 2").speed == 2.0
    assert load_text(tmp_path, "[hardware]\nspeed = 0.5").speed == 0.5
    for bad in ("0", "-1.5", "inf", "nan", "2000"):
        assert "[hardware] speed" in config_error(tmp_path, f"[hardware]\nspeed = {bad}")
    assert "expected int or float" in config_error(tmp_path, "[hardware]\nspeed = '2x'")
