"""Sizes and durations as people write them: "24GiB", "512MB", "500ms", "10m"."""

from __future__ import annotations

import math
import re
from fractions import Fraction

_DECIMAL_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15}
_BINARY_UNITS = {
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "pib": 1 << 50,
    # Kubernetes-style spellings
    "ki": 1 << 10,
    "mi": 1 << 20,
    "gi": 1 << 30,
    "ti": 1 << 40,
    "pi": 1 << 50,
}
_UNITS = {**_DECIMAL_UNITS, **_BINARY_UNITS, "": 1}
_SIZE_RE = re.compile(r"^\s*(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>[A-Za-z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Parse a size into bytes: ``"24GiB"``, ``"24 GB"``, ``"512MiB"``, ``"1.5GiB"``, ``1024``.

    Units are case-insensitive. ``KiB``/``MiB``/``GiB``/``TiB``/``PiB`` (also ``Ki`` ..
    ``Pi``) are powers of 1024; ``KB``/``MB``/``GB``/``TB``/``PB`` are powers of 1000 (so
    ``"24GB"`` is 24×10⁹ bytes, about 22.4 GiB); ``B`` or no unit means bytes. A bare
    ``K``/``M``/``G``/``T`` is refused as ambiguous. Fractions are allowed and the result is
    rounded down to whole bytes. Integers are taken as bytes.

    Raises ValueError, naming the input, on anything else (negative numbers, unknown
    units, booleans, other types).
    """
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise ValueError(
            f"bad size {text!r}: expected bytes as an integer or a string such as '24GiB'"
        )
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"bad size {text!r}: must not be negative")
        return text
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"bad size {text!r}: expected a number with a unit such as 24GiB")
    unit = match["unit"].lower()
    if unit in ("k", "m", "g", "t", "p"):
        u = match["unit"].upper()
        raise ValueError(
            f"bad size {text!r}: ambiguous unit {match['unit']!r}, "
            f"write {u}iB (binary) or {u}B (decimal)"
        )
    multiplier = _UNITS.get(unit)
    if multiplier is None:
        raise ValueError(
            f"bad size {text!r}: unknown unit {match['unit']!r}, "
            "expected one of B, KiB, MiB, GiB, TiB, KB, MB, GB, TB"
        )
    return int(Fraction(match["num"]) * multiplier)


def parse_duration(text: str | int | float) -> float:
    """'500ms', '2s', '10m', '1h', or a number of seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"bad duration {text!r}: expected a finite number >= 0")
        return float(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", str(text))
    if not m:
        raise ValueError(f"bad duration {text!r}: expected e.g. 500ms, 30s, 10m, 1h")
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]
    return float(m.group(1)) * unit
