"""The power and presence policy (swarmd/core/presence.py), its config keys, and what
pricing makes of a node that says it is paused."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from swarmd.config import ConfigError, load
from swarmd.core.capacity import peer_from_gossip
from swarmd.core.presence import (
    BatteryRule,
    Decision,
    Power,
    PresencePolicy,
    Readings,
    decide,
    parse_battery_override,
    parse_on_battery,
    parse_when_user_active,
    paused_reason,
    power_moved,
)
from swarmd.core.pricing import Demand, PricingConfig, price

MAINS = Power()
AC = Power(on_ac=True, battery_percent=80.0)
UNKNOWN_CHARGER = Power(on_ac=None, battery_percent=20.0)


def battery(percent: float | None) -> Power:
    return Power(on_ac=False, battery_percent=percent)


# ---------------------------------------------------------------- config values


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("run", BatteryRule("run")),
        ("pause", BatteryRule("pause")),
        ("below:30", BatteryRule("below", 30.0)),
        ("below:0", BatteryRule("below", 0.0)),
        ("below:100", BatteryRule("below", 100.0)),
        (" Below: 12.5% ", BatteryRule("below", 12.5)),
    ],
)
def test_on_battery_values(text: str, rule: BatteryRule) -> None:
    assert parse_on_battery(text) == rule
    assert parse_on_battery(str(rule)) == rule  # written back as it reads


@pytest.mark.parametrize("bad", ["below:101", "below:-1", "below:", "below", "hibernate", 30, None])
def test_bad_on_battery_values_say_what_is_expected(bad: object) -> None:
    with pytest.raises(ValueError, match="below:N"):
        parse_on_battery(bad)


def test_when_user_active_values() -> None:
    for value in ("run", "nice", "pause"):
        assert parse_when_user_active(value) == value
    for bad in ("Nice", "sleep", True, None):
        with pytest.raises(ValueError, match='"run", "nice" or "pause"'):
            parse_when_user_active(bad)


@pytest.mark.parametrize(
    ("text", "power"),
    [
        ("none", MAINS),
        ("ac", Power(on_ac=True)),
        ("ac:80", Power(on_ac=True, battery_percent=80.0)),
        ("22", battery(22.0)),
        ("22%", battery(22.0)),
        ("battery:5.5", battery(5.5)),
    ],
)
def test_battery_override_values(text: str, power: Power) -> None:
    assert parse_battery_override(text) == power


@pytest.mark.parametrize("bad", ["101", "-3", "full", "dc:20", "", 22])
def test_bad_battery_override_values(bad: object) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_battery_override(bad)


def config(tmp_path: Path, node: str) -> object:
    path = tmp_path / "swarmd.toml"
    path.write_text("[node]\n" + node)
    return load(path, {}, state_dir=tmp_path)


def test_config_defaults_and_values(tmp_path: Path) -> None:
    cfg = load(None, {}, state_dir=tmp_path)
    assert cfg.presence == PresencePolicy(BatteryRule("below", 30.0), "run", 120.0)
    assert cfg.on_battery == "below:30" and cfg.battery_override is None
    path = tmp_path / "swarmd.toml"
    path.write_text(
        '[node]\non_battery = "below:15"\nwhen_user_active = "nice"\nuser_idle = "30s"\n'
        'battery_override = "ac:40"\n'
    )
    cfg = load(path, {}, state_dir=tmp_path)
    assert cfg.presence == PresencePolicy(BatteryRule("below", 15.0), "nice", 30.0)
    assert cfg.battery_override == Power(on_ac=True, battery_percent=40.0)
    path.write_text('[node]\non_battery = "pause"\n')  # today's values still work
    assert load(path, {}, state_dir=tmp_path).on_battery == "pause"


@pytest.mark.parametrize(
    ("node", "must_name"),
    [
        ('on_battery = "below:200"', ["[node] on_battery", "200", "0-100"]),
        ('on_battery = "sometimes"', ["[node] on_battery", "sometimes", "below:N"]),
        ('when_user_active = "kill"', ["[node] when_user_active", "kill", '"nice"']),
        ("when_user_active = 1", ["[node] when_user_active", "1"]),
        ('user_idle = "soon"', ["[node] user_idle", "soon"]),
        ("user_idle = 0", ["[node] user_idle", "> 0"]),
        ('user_idle = "2d"', ["[node] user_idle"]),
        ('battery_override = "lots"', ["[node] battery_override", "lots", "ac:N"]),
        ("battery_override = 22", ["[node] battery_override", "22"]),
        ('on_batery = "run"', ["[node]", "unknown key", "on_batery"]),
    ],
)
def test_bad_config_is_a_clear_config_error(
    tmp_path: Path, node: str, must_name: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, node + "\n")
    for part in must_name:
        assert part in str(caught.value), (part, str(caught.value))


# ---------------------------------------------------------------- the decision

RULES = [BatteryRule("run"), BatteryRule("pause"), BatteryRule("below", 30.0)]
POWERS = [MAINS, AC, UNKNOWN_CHARGER, battery(54.0), battery(22.0), battery(30.0), battery(None)]
IDLE = [None, math.inf, 5.0, 119.9, 120.0, 3600.0]
MODES = ["run", "nice", "pause"]


def expected_battery_pause(power: Power, rule: BatteryRule) -> bool:
    if power in (MAINS, AC) or rule.mode == "run":
        return False
    if rule.mode == "pause":
        return True
    return power.battery_percent is not None and power.battery_percent < 30.0


@pytest.mark.parametrize(
    ("rule", "power", "idle", "mode"), list(itertools.product(RULES, POWERS, IDLE, MODES))
)
def test_every_combination(rule: BatteryRule, power: Power, idle: float | None, mode: str) -> None:
    policy = PresencePolicy(rule, parse_when_user_active(mode), 120.0)
    d = decide(Readings(power, idle), policy)
    active = idle is not None and idle < 120.0
    if expected_battery_pause(power, rule):
        assert d.paused == "battery" and d.detail is not None and d.detail.startswith("battery")
    elif active and mode == "pause":
        assert d.paused == "user-active" and d.detail is not None and "user active" in d.detail
    else:
        assert d.paused is None and d.detail is None
    assert d.nice == (active and mode == "nice")


def test_the_details_say_why() -> None:
    below = PresencePolicy(BatteryRule("below", 30.0))
    assert decide(Readings(battery(22.4)), below).detail == "battery 22 % < 30 %"
    assert decide(Readings(UNKNOWN_CHARGER), below).detail == "battery 20 % < 30 %"
    assert decide(Readings(battery(29.7)), below).detail == "battery 29 % < 30 %"
    half = PresencePolicy(BatteryRule("below", 12.5))
    assert decide(Readings(battery(12.4)), half).detail == "battery 12 % < 12.5 %"
    pause = PresencePolicy(BatteryRule("pause"))
    assert decide(Readings(battery(54.0)), pause).detail == "battery 54 % (on_battery = pause)"
    user = PresencePolicy(BatteryRule("run"), "pause", 60.0)
    assert decide(Readings(MAINS, 12.0), user).detail == "user active (input 12 s ago < 60 s)"


def test_draining_and_a_full_disk_come_first() -> None:
    battery_pause = Decision("battery", "battery 22 % < 30 %")
    assert paused_reason(True, "disk full", battery_pause) == ("draining", "draining")
    assert paused_reason(False, "disk full", battery_pause) == ("disk-full", "disk full")
    assert paused_reason(False, None, battery_pause) == ("battery", "battery 22 % < 30 %")
    assert paused_reason(False, None, Decision()) == (None, None)


def test_power_is_gossiped_on_change_or_a_point_moved() -> None:
    assert power_moved(None, MAINS)
    assert not power_moved(battery(54.0), battery(54.6))
    assert power_moved(battery(54.0), battery(53.0))
    assert power_moved(battery(54.0), Power(on_ac=True, battery_percent=54.0))
    assert power_moved(MAINS, battery(54.0)) and power_moved(battery(54.0), battery(None))
    assert not power_moved(MAINS, MAINS)


# ---------------------------------------------------------------- pricing


def gossip(**values: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "laptop",
        "hw": {
            "cpu": {"cores": 4, "load": 0.0},
            "memory": {"total": 8 << 30, "available": 4 << 30},
            "battery": {"percent": 22.0, "plugged": False},
        },
        "slots": 4,
    }
    return base | values


def test_pricing_refuses_a_paused_node_with_the_reason() -> None:
    laptop = peer_from_gossip(
        "L",
        gossip(paused="battery", pause_detail="battery 22 % < 30 %"),
        alive=True,
        rtt_s=0.001,
    )
    desk = peer_from_gossip("D", gossip(name="desk", paused=None), alive=True, rtt_s=0.001)
    placement = price(Demand(kind="shell"), [laptop, desk], PricingConfig())
    assert placement.winner is not None and placement.winner.name == "desk"
    row = next(c for c in placement.candidates if c.name == "laptop")
    assert not row.feasible and row.why_not == "paused: battery 22 % < 30 %"
    alone = price(Demand(kind="shell"), [laptop], PricingConfig())
    assert alone.winner is None and "paused: battery 22 % < 30 %" in alone.reason


def test_a_node_that_decides_itself_is_not_held_by_the_old_battery_rule() -> None:
    # It gossips paused (null: takes work) and its battery unplugged at 22 %: its own
    # policy (say on_battery = "run") said yes; the coordinator does not overrule it.
    runs = peer_from_gossip("L", gossip(paused=None), alive=True, rtt_s=0.0)
    assert runs.paused is None and runs.battery_policy == "run"
    assert price(Demand(kind="shell"), [runs], PricingConfig()).winner is not None
    # A node of before (no paused key) on battery is held by its on_battery = pause.
    old = peer_from_gossip("L", gossip(on_battery="pause"), alive=True, rtt_s=0.0)
    placement = price(Demand(kind="shell"), [old], PricingConfig())
    assert placement.winner is None and "on battery (policy pause)" in placement.reason
    # draining and a full disk are said as before, not twice
    drained = peer_from_gossip(
        "L",
        gossip(paused="draining", pause_detail="draining", draining=True),
        alive=True,
        rtt_s=0.0,
    )
    assert drained.paused is None
    row = price(Demand(kind="shell"), [drained], PricingConfig()).candidates[0]
    assert row.why_not == "draining"
