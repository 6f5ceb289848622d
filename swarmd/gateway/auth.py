"""API keys: ``[gateway] api_keys`` and ``api_keys_file`` (one key a line, ``#``
comments), checked on every request (``Authorization: Bearer KEY``). Keys are kept
only as SHA-256 digests and compared in constant time against every one of them, so
neither the answer nor its timing tells which key, or how much of one, matched."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

from ..core.gateway import key_id


class KeysError(ValueError):
    pass


def read_keys_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysError(f"cannot read the API keys file {path}: {exc}") from None
    keys = [line.strip() for line in text.splitlines()]
    return [k for k in keys if k and not k.startswith("#")]


class ApiKeys:
    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys if k]

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, authorization: str | None) -> str | None:
        """The key's label (:func:`swarmd.core.gateway.key_id`) if the header carries a
        valid key, or any header when no keys are configured; else None."""
        if not self._digests:
            return key_id(None)
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        digest = hashlib.sha256(key.encode()).digest()
        ok = False
        for known in self._digests:  # every one, whatever matched
            ok |= hmac.compare_digest(digest, known)
        if not ok or scheme.lower() != "bearer" or not key:
            return None
        return key_id(key)
