"""Tests for swarmd.hardware: psutil/NVML probing, declared GPUs, sizes, wire shape."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections import namedtuple
from types import SimpleNamespace
from typing import Any

import msgspec
import psutil
import pytest

from protocol.messages import Battery, Hardware, validate_state_value
from swarmd import hardware
from swarmd.hardware import (
    FREE_GRANULARITY,
    DeclaredGpu,
    HardwareProbe,
    _names_same_gpu,
    parse_size,
)

GiB = 1 << 30
MiB = 1 << 20
LOGGER = "swarmd.hardware"


def unavailable_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "NVML unavailable" in r.getMessage()]


# ---------------------------------------------------------------- a fake pynvml


class FakeNVMLError(Exception):
    pass


class FakeNvml:
    """Just enough of pynvml's surface; each behaviour is switchable per test."""

    NVMLError = FakeNVMLError
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus: list[dict[str, Any]] | None = None) -> None:
        self.gpus = (
            gpus
            if gpus is not None
            else [
                dict(
                    name=b"NVIDIA GeForce RTX 4090",
                    total=24 * GiB,
                    free=20 * GiB + 5 * MiB,
                    util=37,
                    temp=61,
                ),
                dict(name="NVIDIA A100-SXM4-80GB", total=80 * GiB, free=80 * GiB, util=0, temp=33),
            ]
        )
        self.init_error: Exception | None = None
        self.count_error: Exception | None = None
        self.util_error_for: set[int] = set()
        self.temp_error_for: set[int] = set()
        self.init_calls = 0
        self.shutdown_calls = 0

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        if self.count_error is not None:
            raise self.count_error
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        return self.gpus[handle]["name"]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        g = self.gpus[handle]
        return SimpleNamespace(total=g["total"], free=g["free"], used=g["total"] - g["free"])

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        if handle in self.util_error_for:
            raise FakeNVMLError("Not Supported")
        return SimpleNamespace(gpu=self.gpus[handle]["util"], memory=0)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        if handle in self.temp_error_for:
            raise FakeNVMLError("Not Supported")
        return self.gpus[handle]["temp"]


def assert_wire_roundtrip(hw: Hardware) -> None:
    plain = msgspec.to_builtins(hw)
    assert msgspec.convert(plain, Hardware) == hw
    assert validate_state_value("hw", plain) == hw
    # and through msgpack, as the gossip layer carries it
    packed = msgspec.msgpack.encode(plain)
    assert validate_state_value("hw", msgspec.msgpack.decode(packed)) == hw


# ---------------------------------------------------------------- the real machine


def test_real_probe_on_this_machine(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    probe = HardwareProbe()
    try:
        first = probe.probe()
        second = probe.probe()
    finally:
        probe.close()
    for hw in (first, second):
        assert hw.cpu.cores >= 1
        assert hw.cpu.load >= 0
        assert isinstance(hw.cpu.model, str)
        assert hw.memory.total > hw.memory.available > 0
        assert hw.memory.available % FREE_GRANULARITY == 0
        assert_wire_roundtrip(hw)
    if _real_nvml() is None:  # a machine without an NVIDIA driver (CI): GPU-less, said once
        assert (first.nvml, first.gpus, second.nvml, second.gpus) == (False, [], False, [])
        assert len(unavailable_lines(caplog)) == 1
    else:  # a GPU machine: test_real_nvml_matches_nvidia_smi checks the GPUs themselves
        assert first.nvml is second.nvml is True
        assert [g.name for g in first.gpus] == [g.name for g in second.gpus] != []
        assert unavailable_lines(caplog) == []


def test_missing_pynvml_module_is_gpu_less(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    caplog.set_level(logging.INFO, logger=LOGGER)
    probe = HardwareProbe(declared=[DeclaredGpu("Radeon RX 7900 XTX", 24 * GiB)])
    hws = [probe.probe(), probe.probe()]
    assert all(hw.nvml is False for hw in hws)
    assert [g.source for g in hws[1].gpus] == ["declared"]
    lines = unavailable_lines(caplog)
    assert len(lines) == 1
    assert "pynvml" in lines[0].getMessage()
    probe.close()


# ---------------------------------------------------------------- declared GPUs


def test_declared_gpus_appear_as_declared() -> None:
    declared = [
        DeclaredGpu("Radeon RX 7900 XTX", parse_size("24GiB")),
        DeclaredGpu("Apple M2 Max", parse_size("1.5 GiB")),
    ]
    hw = HardwareProbe(declared=declared, nvml=FakeNvml(gpus=[])).probe()
    assert hw.nvml is True
    assert [(g.name, g.vram_total, g.vram_free, g.source) for g in hw.gpus] == [
        ("Radeon RX 7900 XTX", 24 * GiB, 24 * GiB, "declared"),
        ("Apple M2 Max", 3 * GiB // 2, 3 * GiB // 2, "declared"),
    ]
    assert all(g.utilization is None and g.temperature is None for g in hw.gpus)
    assert_wire_roundtrip(hw)


def test_declared_gpus_without_nvml() -> None:
    fake = FakeNvml()
    fake.init_error = FakeNVMLError("NVML Shared Library Not Found")
    hw = HardwareProbe(declared=[DeclaredGpu("RTX 4090", 24 * GiB)], nvml=fake).probe()
    assert hw.nvml is False
    assert [(g.name, g.source) for g in hw.gpus] == [("RTX 4090", "declared")]


def test_declared_gpu_matching_nvml_name_is_ignored_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    declared = [
        DeclaredGpu("nvidia geforce rtx 4090 ", 16 * GiB),  # same GPU, other spelling
        DeclaredGpu("Radeon RX 7900 XTX", 24 * GiB),
    ]
    probe = HardwareProbe(declared=declared, nvml=FakeNvml())
    for _ in range(3):
        hw = probe.probe()
        assert [(g.name, g.source) for g in hw.gpus] == [
            ("NVIDIA GeForce RTX 4090", "nvml"),
            ("NVIDIA A100-SXM4-80GB", "nvml"),
            ("Radeon RX 7900 XTX", "declared"),
        ]
        assert hw.gpus[0].vram_total == 24 * GiB  # the measured value, not the declared one
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "also seen by NVML" in warnings[0].getMessage()


def test_declared_short_name_names_the_measured_gpu_once() -> None:
    # CONTRACT.md's example declares "RTX 4090"; NVML says "NVIDIA GeForce RTX 4090".
    # The declared one must not count the same card twice, and one measured card can
    # shadow only one declared card.
    declared = [
        DeclaredGpu("RTX 4090", 24 * GiB),
        DeclaredGpu("RTX 4090", 24 * GiB),
        DeclaredGpu("A100", 40 * GiB),
        DeclaredGpu("RTX 40", 8 * GiB),  # a prefix of a word is not the same GPU
    ]
    hw = HardwareProbe(declared=declared, nvml=FakeNvml()).probe()
    assert [(g.name, g.source) for g in hw.gpus] == [
        ("NVIDIA GeForce RTX 4090", "nvml"),
        ("NVIDIA A100-SXM4-80GB", "nvml"),
        ("RTX 4090", "declared"),
        ("RTX 40", "declared"),
    ]


@pytest.mark.parametrize(
    ("declared", "measured", "same"),
    [
        ("RTX 4090", "NVIDIA GeForce RTX 4090", True),
        ("rtx-4090", "NVIDIA GeForce RTX 4090", True),
        ("H100", "NVIDIA H100 80GB HBM3", True),
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", True),
        ("RTX 4090", "NVIDIA GeForce RTX 4080", False),
        ("4090 RTX", "NVIDIA GeForce RTX 4090", False),
        ("NVIDIA", "NVIDIA GeForce RTX 4090", False),
        ("A100 80GB", "NVIDIA A100-SXM4-80GB", False),
    ],
)
def test_gpu_name_matching(declared: str, measured: str, same: bool) -> None:
    assert _names_same_gpu(declared, measured) is same


@pytest.mark.parametrize(
    ("name", "vram"),
    [("", GiB), ("   ", GiB), ("x" * 129, GiB), ("ok", -1), ("ok", True), ("ok", 1.5)],
)
def test_declared_gpu_rejects_bad_values(name: str, vram: Any) -> None:
    with pytest.raises(ValueError):
        DeclaredGpu(name, vram)


# ---------------------------------------------------------------- parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GiB", 24 * GiB),
        ("24 GiB", 24 * GiB),
        ("24gib", 24 * GiB),
        ("24Gi", 24 * GiB),
        ("24 GB", 24 * 10**9),
        ("24GB", 24 * 10**9),
        ("512MiB", 512 * MiB),
        ("512 MB", 512 * 10**6),
        ("1.5GiB", 3 * GiB // 2),
        (".5 GiB", GiB // 2),
        ("1TiB", 1 << 40),
        ("2 KiB", 2048),
        ("1kB", 1000),
        ("100B", 100),
        ("100", 100),
        ("  8 GiB  ", 8 * GiB),
        ("0", 0),
        ("1.0000000001 B", 1),  # rounded down to whole bytes
        (1024, 1024),
        (0, 0),
    ],
)
def test_parse_size_good(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("abc", "expected a number with a unit such as 24GiB"),
        ("", "expected a number with a unit"),
        ("GiB", "expected a number with a unit"),
        ("-1GiB", "expected a number with a unit"),
        ("1,5GiB", "expected a number with a unit"),
        ("1e3MiB", "expected a number with a unit"),
        ("nan", "expected a number with a unit"),
        ("24 G", "ambiguous unit 'G'"),
        ("24m", "ambiguous unit 'm'"),
        ("24 parsecs", "unknown unit 'parsecs'"),
        ("24 GiB GiB", "expected a number with a unit"),
        (-1, "must not be negative"),
        (True, "bad size True"),
        (1.5, "bad size 1.5"),
        (None, "bad size None"),
    ],
)
def test_parse_size_bad(text: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match="bad size") as info:
        parse_size(text)
    assert fragment in str(info.value)
    assert repr(text) in str(info.value)


# ---------------------------------------------------------------- NVML (fake)


def test_fake_nvml_two_gpus() -> None:
    fake = FakeNvml()
    probe = HardwareProbe(nvml=fake)
    hw = probe.probe()
    assert hw.nvml is True
    assert len(hw.gpus) == 2
    a, b = hw.gpus
    assert a.name == "NVIDIA GeForce RTX 4090"  # bytes decoded
    assert (a.vram_total, a.vram_free, a.source) == (24 * GiB, 20 * GiB, "nvml")
    assert (a.utilization, a.temperature) == (37.0, 61.0)
    assert b.name == "NVIDIA A100-SXM4-80GB"
    assert (b.vram_total, b.vram_free, b.source) == (80 * GiB, 80 * GiB, "nvml")
    assert (b.utilization, b.temperature) == (0.0, 33.0)
    assert_wire_roundtrip(hw)
    probe.probe()
    assert fake.init_calls == 1  # initialised once, not per probe
    probe.close()
    assert fake.shutdown_calls == 1


def test_vram_free_is_rounded_down_and_stable() -> None:
    fake = FakeNvml()
    probe = HardwareProbe(nvml=fake)
    seen = set()
    for extra in (0, 1, 4 * MiB, 15 * MiB + 123):
        fake.gpus[1]["free"] = 40 * GiB + extra
        seen.add(probe.probe().gpus[1].vram_free)
    assert seen == {40 * GiB}
    fake.gpus[1]["free"] = 40 * GiB + 16 * MiB
    assert probe.probe().gpus[1].vram_free == 40 * GiB + 16 * MiB


def test_unsupported_utilization_and_temperature_give_none() -> None:
    fake = FakeNvml()
    fake.util_error_for = {0}
    fake.temp_error_for = {1}
    hw = HardwareProbe(nvml=fake).probe()
    assert hw.nvml is True
    assert hw.gpus[0].utilization is None
    assert hw.gpus[0].temperature == 61.0
    assert hw.gpus[1].utilization == 0.0
    assert hw.gpus[1].temperature is None
    assert_wire_roundtrip(hw)


def test_nvml_init_error_means_gpu_less(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    fake = FakeNvml()
    fake.init_error = FakeNVMLError("Driver Not Loaded")
    probe = HardwareProbe(nvml=fake)
    for _ in range(3):
        hw = probe.probe()
        assert hw.nvml is False
        assert hw.gpus == []
    assert fake.init_calls == 1
    lines = unavailable_lines(caplog)
    assert len(lines) == 1
    assert "Driver Not Loaded" in lines[0].getMessage()
    assert lines[0].levelno == logging.INFO
    probe.close()
    assert fake.shutdown_calls == 0  # never initialised, nothing to shut down


def test_later_nvml_failure_keeps_last_gpus_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    fake = FakeNvml()
    probe = HardwareProbe(nvml=fake)
    good = probe.probe()
    assert good.nvml is True

    fake.count_error = FakeNVMLError("GPU is lost")
    for _ in range(3):
        hw = probe.probe()  # must not raise
        assert hw.nvml is False
        assert hw.gpus == good.gpus
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "GPU is lost" in warnings[0].getMessage()

    fake.count_error = None
    assert probe.probe().nvml is True


def test_later_nvml_failure_before_any_good_probe_gives_no_gpus() -> None:
    fake = FakeNvml()
    fake.count_error = FakeNVMLError("Unknown Error")
    hw = HardwareProbe(nvml=fake, declared=[DeclaredGpu("Apple M2", 8 * GiB)]).probe()
    assert hw.nvml is False
    assert [g.source for g in hw.gpus] == ["declared"]


def test_close_is_idempotent_and_probe_reinitialises() -> None:
    fake = FakeNvml()
    probe = HardwareProbe(nvml=fake)
    probe.close()
    assert fake.shutdown_calls == 0
    probe.probe()
    probe.close()
    probe.close()
    assert fake.shutdown_calls == 1
    assert probe.probe().nvml is True
    assert fake.init_calls == 2
    probe.close()


def test_custom_logger_is_used(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="custom.hw")
    fake = FakeNvml()
    fake.init_error = FakeNVMLError("nope")
    HardwareProbe(nvml=fake, log=logging.getLogger("custom.hw")).probe()
    assert [r.name for r in unavailable_lines(caplog)] == ["custom.hw"]


# ---------------------------------------------------------------- battery


_Sbattery = namedtuple("_Sbattery", "percent secsleft power_plugged")


@pytest.mark.parametrize(
    ("reading", "expected"),
    [
        (None, None),
        (_Sbattery(81.26, 3600, False), Battery(percent=81.3, plugged=False)),
        (_Sbattery(100, psutil.POWER_TIME_UNLIMITED, True), Battery(percent=100.0, plugged=True)),
        (_Sbattery(50, psutil.POWER_TIME_UNLIMITED, None), Battery(percent=50.0, plugged=True)),
        (_Sbattery(50, 1200, None), Battery(percent=50.0, plugged=False)),
    ],
)
def test_battery(monkeypatch: pytest.MonkeyPatch, reading: Any, expected: Battery | None) -> None:
    monkeypatch.setattr(psutil, "sensors_battery", lambda: reading)
    hw = HardwareProbe(nvml=FakeNvml(gpus=[])).probe()
    assert hw.battery == expected
    assert_wire_roundtrip(hw)


@pytest.mark.parametrize("exc", [AttributeError, RuntimeError, OSError])
def test_battery_errors_mean_no_battery(monkeypatch: pytest.MonkeyPatch, exc: type) -> None:
    def boom() -> None:
        raise exc("no battery sensor")

    monkeypatch.setattr(psutil, "sensors_battery", boom)
    assert HardwareProbe(nvml=FakeNvml(gpus=[])).probe().battery is None


def test_battery_missing_from_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(psutil, "sensors_battery")
    assert HardwareProbe(nvml=FakeNvml(gpus=[])).probe().battery is None


# ---------------------------------------------------------------- cpu / memory details


def test_load_is_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 4)
    monkeypatch.setattr(psutil, "getloadavg", lambda: (3.0, 1.0, 0.5))
    hw = HardwareProbe(nvml=FakeNvml(gpus=[])).probe()
    assert hw.cpu.cores == 4
    assert hw.cpu.load == 0.75


def test_unknown_cpu_count_falls_back_to_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: None)
    assert HardwareProbe(nvml=FakeNvml(gpus=[])).probe().cpu.cores == 1


def test_memory_available_rounded_down(monkeypatch: pytest.MonkeyPatch) -> None:
    vm = SimpleNamespace(total=16 * GiB + 12345, available=5 * GiB + 17 * MiB + 3)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: vm)
    hw = HardwareProbe(nvml=FakeNvml(gpus=[])).probe()
    assert hw.memory.total == 16 * GiB + 12345  # totals exact
    assert hw.memory.available == 5 * GiB + 16 * MiB


def test_cpu_model_reads_proc_cpuinfo_or_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    model = hardware._cpu_model()
    assert isinstance(model, str)
    assert len(model) <= 128
    monkeypatch.setattr(hardware, "Path", lambda _p: SimpleNamespace(open=_raise_oserror))
    monkeypatch.setattr(hardware.platform, "processor", lambda: "  armv8l  ")
    assert hardware._cpu_model() == "armv8l"
    monkeypatch.setattr(hardware.platform, "processor", lambda: "")
    assert hardware._cpu_model() == ""


def _raise_oserror(*_a: Any, **_k: Any) -> Any:
    raise OSError("no /proc here")


# ---------------------------------------------------------------- real NVML


def _real_nvml() -> Any:
    """pynvml with a working driver, or None (the test then skips)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    return pynvml


def test_real_nvml_matches_nvidia_smi() -> None:
    """Where a real NVIDIA driver is present, the probe reports every GPU with the name
    and total VRAM that nvidia-smi reports, and free VRAM no larger than total."""
    nvml = _real_nvml()
    smi = shutil.which("nvidia-smi")
    if nvml is None or smi is None:
        pytest.skip("no NVIDIA driver here (NVML does not initialise or nvidia-smi missing)")
    out = subprocess.run(
        [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    rows = [line.rsplit(",", 1) for line in out.splitlines() if line.strip()]
    expected = [(name.strip(), int(mib) * MiB) for name, mib in rows]
    probe = HardwareProbe(declared=[DeclaredGpu(expected[0][0].removeprefix("NVIDIA "), GiB)])
    try:
        hw = probe.probe()
    finally:
        probe.close()
    assert hw.nvml is True
    measured = [g for g in hw.gpus if g.source == "nvml"]
    assert [g.name for g in measured] == [name for name, _ in expected]
    for g, (_, total) in zip(measured, expected, strict=True):
        assert abs(g.vram_total - total) < MiB  # nvidia-smi rounds to MiB
    for g in measured:
        assert 0 < g.vram_free <= g.vram_total
        assert g.temperature is None or 0 < g.temperature < 120
    # a declared GPU naming the real one (without the vendor word) is not counted twice
    assert [g.source for g in hw.gpus].count("declared") == 0
