"""What this machine has: CPU, memory, battery and GPUs, as a gossipable snapshot.

:class:`HardwareProbe` builds a :class:`protocol.messages.Hardware` value from

* psutil — logical CPU count, 1-minute load per core, total/available memory, battery;
* NVML (nvidia-ml-py, ``import pynvml``) — every NVIDIA GPU with its total/free VRAM,
  utilisation and temperature (``source="nvml"``);
* GPUs declared in the config (``[hardware] gpus = [{name, vram}]``) for what NVML
  cannot see, such as AMD or Apple GPUs (``source="declared"``).

NVML is optional. If ``pynvml`` cannot be imported or ``nvmlInit()`` fails (no driver,
no library, no GPU), the node runs GPU-less: one info line says why, once, and NVML is
not tried again until :meth:`HardwareProbe.close` resets the probe. If an NVML call
fails on a later probe, one warning is logged (again only after NVML has recovered) and
the GPUs of the last good probe are reported, with ``nvml=False`` meaning "NVML did not
answer this time".

Declared GPUs never override measured ones: a declared GPU that names an NVML GPU is
ignored with one warning; every other declared GPU is appended after the NVML GPUs with
``vram_free = vram_total`` (its free memory cannot be measured). "Names" means the
declared name's words appear, in order and together, among the measured name's words,
ignoring case, punctuation and the vendor words NVIDIA/GeForce/Tesla/Quadro — so
``"RTX 4090"`` names ``"NVIDIA GeForce RTX 4090"`` and ``"H100"`` names ``"NVIDIA H100
80GB HBM3"``, but ``"RTX 40"`` names neither. Matching is one to one: two declared
RTX 4090s on a machine where NVML sees one leave one declared GPU standing.

All sizes are bytes. A probe makes a handful of cheap system calls and is meant to be
called every few seconds; the daemon may run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from protocol.messages import Battery, Cpu, Gpu, Hardware, Memory

from .core.units import parse_size

__all__ = ["DeclaredGpu", "HardwareProbe", "parse_size"]

__all__ = ["DeclaredGpu", "HardwareProbe", "parse_size"]

_log = logging.getLogger(__name__)

MiB = 1 << 20

# Free memory and free VRAM are rounded down to this granularity. The snapshot is
# gossiped as a versioned key-value: every change bumps the version and ships a delta to
# every peer. Raw free-memory figures move by a few KiB on every probe, which would turn
# each probe into cluster-wide gossip traffic for no scheduling benefit; 16 MiB steps
# keep the value stable while idle and are far finer than any placement decision.
# Rounding down never reports more than is really there. Totals are reported exactly.
FREE_GRANULARITY = 16 * MiB

_NAME_MAX = 128  # protocol.messages.Name
_GPUS_MAX = 64  # protocol.messages.Hardware.gpus

# ---------------------------------------------------------------- declared GPUs


@dataclass(frozen=True)
class DeclaredGpu:
    """A GPU named in the config's ``[hardware] gpus``; ``vram`` in bytes."""

    name: str
    vram: int  # bytes

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"declared GPU name must be a non-empty string, got {self.name!r}")
        if len(self.name) > _NAME_MAX:
            raise ValueError(f"declared GPU name is longer than {_NAME_MAX} characters")
        if isinstance(self.vram, bool) or not isinstance(self.vram, int) or self.vram < 0:
            raise ValueError(
                f"declared GPU {self.name!r}: vram must be a byte count >= 0, got {self.vram!r}"
            )


# ---------------------------------------------------------------- helpers


def _round_down(value: int, granularity: int = FREE_GRANULARITY) -> int:
    return max(0, value - value % granularity)


_VENDOR_WORDS = frozenset({"nvidia", "geforce", "tesla", "quadro"})


def _gpu_words(name: str) -> tuple[str, ...]:
    """A GPU name as comparable words: lower case, split on anything not a letter or a
    digit, without vendor words."""
    words = re.split(r"[^0-9a-z]+", name.casefold())
    return tuple(w for w in words if w and w not in _VENDOR_WORDS)


def _names_same_gpu(declared: str, measured: str) -> bool:
    """Whether a declared GPU name refers to a measured one (see the module docstring)."""
    want, have = _gpu_words(declared), _gpu_words(measured)
    if not want:
        return False
    return any(have[i : i + len(want)] == want for i in range(len(have) - len(want) + 1))


def _clip(text: str) -> str:
    return text.strip()[:_NAME_MAX]


def _cpu_model() -> str:
    """The CPU's marketing name: /proc/cpuinfo on Linux, else platform.processor()."""
    try:
        with Path("/proc/cpuinfo").open(encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return _clip(value)
    except OSError:
        pass
    try:
        return _clip(platform.processor() or "")
    except Exception:
        return ""


def _cpu_cores() -> int:
    try:
        count = psutil.cpu_count(logical=True)
    except Exception:
        count = None
    return count if count and count > 0 else 1


def _battery() -> Battery | None:
    try:
        info = psutil.sensors_battery()  # AttributeError on platforms without it
    except Exception:
        return None
    if info is None:
        return None
    plugged = info.power_plugged
    if plugged is None:  # unknown: psutil reports unlimited time left when on AC
        plugged = info.secsleft == psutil.POWER_TIME_UNLIMITED
    percent = max(0.0, min(100.0, float(info.percent)))
    return Battery(percent=round(percent, 1), plugged=bool(plugged))


def _decode(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# ---------------------------------------------------------------- probe


class HardwareProbe:
    """Probes this machine's hardware; see the module docstring for the rules.

    ``declared`` are the config's GPUs; ``nvml`` is the pynvml module to use (tests
    inject a fake), imported lazily on the first probe when not given.
    """

    def __init__(
        self,
        declared: Sequence[DeclaredGpu] = (),
        log: logging.Logger | None = None,
        nvml: Any = None,
    ) -> None:
        self._declared: tuple[DeclaredGpu, ...] = tuple(declared)
        self._log = log if log is not None else _log
        self._nvml: Any = nvml
        self._lock = threading.Lock()
        self._cores = _cpu_cores()
        self._model = _cpu_model()
        # NVML state: None = not tried yet, True = initialised, False = unavailable.
        self._nvml_state: bool | None = None
        self._nvml_failing = False  # a later probe failed and the warning was logged
        self._last_gpus: list[Gpu] = []
        self._shadowed_warned: set[str] = set()

    # -------------------------------------------------------------- public

    def probe(self) -> Hardware:
        """Take a snapshot now."""
        with self._lock:
            nvml_gpus, nvml_ok = self._probe_nvml()
            gpus = nvml_gpus + self._declared_gpus(nvml_gpus)
            if len(gpus) > _GPUS_MAX:
                gpus = gpus[:_GPUS_MAX]
            return Hardware(
                cpu=self._probe_cpu(),
                memory=self._probe_memory(),
                battery=_battery(),
                gpus=gpus,
                nvml=nvml_ok,
            )

    def close(self) -> None:
        """Shut NVML down if this probe initialised it. Idempotent; a later probe
        initialises NVML again."""
        with self._lock:
            if self._nvml_state is True:
                with contextlib.suppress(Exception):
                    self._nvml.nvmlShutdown()
            self._nvml_state = None
            self._nvml_failing = False
            self._last_gpus = []

    # -------------------------------------------------------------- psutil

    def _probe_cpu(self) -> Cpu:
        try:
            load1 = psutil.getloadavg()[0]
        except (AttributeError, OSError):
            load1 = 0.0
        return Cpu(cores=self._cores, model=self._model, load=round(load1 / self._cores, 2))

    def _probe_memory(self) -> Memory:
        vm = psutil.virtual_memory()
        available = min(int(vm.available), int(vm.total))
        return Memory(total=int(vm.total), available=_round_down(available))

    # -------------------------------------------------------------- NVML

    def _init_nvml(self) -> bool:
        """Import and initialise NVML once; log why not, once, if that fails."""
        if self._nvml is None:
            try:
                import pynvml  # optional: imported lazily
            except Exception as exc:
                self._log.info("NVML unavailable (cannot import pynvml: %s); no GPUs probed", exc)
                return False
            self._nvml = pynvml
        try:
            self._nvml.nvmlInit()
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            self._log.info("NVML unavailable (%s); running without NVIDIA GPUs", reason)
            return False
        return True

    def _probe_nvml(self) -> tuple[list[Gpu], bool]:
        if self._nvml_state is None:
            self._nvml_state = self._init_nvml()
        if not self._nvml_state:
            return [], False
        nvml = self._nvml
        try:
            gpus = [self._probe_device(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]
        except nvml.NVMLError as exc:
            if not self._nvml_failing:
                self._nvml_failing = True
                self._log.warning(
                    "NVML probe failed (%s); reporting the GPUs of the last good probe",
                    str(exc) or type(exc).__name__,
                )
            return list(self._last_gpus), False
        if self._nvml_failing:
            self._nvml_failing = False
            self._log.info("NVML probe works again")
        self._last_gpus = gpus
        return list(gpus), True

    def _probe_device(self, nvml: Any, index: int) -> Gpu:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = _clip(_decode(nvml.nvmlDeviceGetName(handle))) or f"GPU {index}"
        mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        total = int(mem.total)
        free = min(int(mem.free), total)
        utilization: float | None
        try:
            utilization = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except nvml.NVMLError:
            utilization = None  # not supported on every board
        temperature: float | None
        try:
            temperature = float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        except nvml.NVMLError:
            temperature = None
        return Gpu(
            name=name,
            vram_total=total,
            vram_free=_round_down(free),
            source="nvml",
            utilization=utilization,
            temperature=temperature,
        )

    # -------------------------------------------------------------- declared

    def _declared_gpus(self, nvml_gpus: Sequence[Gpu]) -> list[Gpu]:
        unmatched = [g.name for g in nvml_gpus]
        out: list[Gpu] = []
        for d in self._declared:
            same = next((m for m in unmatched if _names_same_gpu(d.name, m)), None)
            if same is not None:
                unmatched.remove(same)
                if d.name not in self._shadowed_warned:
                    self._shadowed_warned.add(d.name)
                    self._log.warning(
                        "declared GPU %r is also seen by NVML; using the measured one", d.name
                    )
                continue
            out.append(Gpu(name=d.name, vram_total=d.vram, vram_free=d.vram, source="declared"))
        return out
