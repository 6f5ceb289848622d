"""The one way onto a node's TCP socket without a credential: an ``enroll`` request, a
new node redeeming a ``swarmd2-`` join token (:mod:`swarmd.enrollment`).

A client whose routing id proves no credential may pass the CURVE handshake (any key
pair does), but of what it sends only a small, well-formed ``enroll`` reaches the node;
everything else is dropped and counted (``dropped_unauthenticated``). Enrollment
requests are rate-limited by a token bucket (``ENROLL_BURST`` at once, then
``ENROLL_RATE`` per second; beyond it ``dropped_enroll_rate``), so the socket cannot be
used to try tickets quickly (a ticket is a 128-bit id and a 256-bit secret besides).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from protocol import ProtocolError, codec
from protocol.messages import EnrollRequest

from .base import EnrollHandler, Reply

ENROLL_MAX_BYTES = 1024  # an enroll request is ~110 bytes: nothing bigger is decoded
ENROLL_RATE = 2.0  # requests per second, once the burst is spent
ENROLL_BURST = 10.0


class RateLimit:
    """A token bucket."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = burst
        self.at = clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class EnrollGate:
    def __init__(self, counters: Counter[str], log: logging.Logger) -> None:
        self.counters = counters
        self.log = log
        self.limit = RateLimit(ENROLL_RATE, ENROLL_BURST)

    def take(
        self, handler: EnrollHandler | None, frame: bytes, public: bytes, reply: Reply
    ) -> None:
        """A frame from a client without a credential (CURVE key ``public``)."""
        message = self._enroll_request(frame) if handler is not None and public else None
        if message is None:
            self.counters["dropped_unauthenticated"] += 1
            return
        if not self.limit.allow():
            self.counters["dropped_enroll_rate"] += 1
            return
        self.counters["enroll_requests"] += 1
        assert handler is not None
        handler(message, public, reply)

    def _enroll_request(self, frame: bytes) -> EnrollRequest | None:
        if len(frame) > ENROLL_MAX_BYTES:
            return None
        try:
            message = codec.decode(frame, ENROLL_MAX_BYTES)
        except ProtocolError as exc:
            self.log.debug("dropped a message without a credential: %s", exc)
            return None
        return message if isinstance(message, EnrollRequest) else None
