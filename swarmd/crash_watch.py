"""A crashed peer, noticed in well under a second: the asyncio shell of
:mod:`swarmd.core.crash`.

The transport says our link to an address dropped (:mod:`.transport.link_monitor`);
this asks membership which live member listens there, lets the core open a case,
makes its probes (a TCP connect to the member's port, with a short timeout) and hands
a confirmed crash to membership, which declares that generation dead at once (and so
its attempts are re-dispatched, as for any dead peer). A link that drops while the
peer still listens, a probe nobody answers (a partition, a frozen or sleeping
machine) or a member that is already dead or left changes nothing: the accrual
detector judges it as before.

A probe that a live peer answers (its ZeroMQ greeting) is closed after that first
byte: the peer's transport counts it as one failed handshake (``handshake_failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Protocol

from .config import split_host_port
from .core.crash import Confirmed, CrashCases, CrashConfig, Outcome, Probe
from .transport.base import LinkEvents


class Members(Protocol):
    def node_at(self, addr: str) -> str | None: ...
    def address_of(self, node_id: str) -> str | None: ...
    def generation_of(self, node_id: str) -> int | None: ...
    def crashed(self, confirmed: Confirmed) -> None: ...


async def probe_port(addr: str, timeout_s: float) -> Outcome:
    """Whether a ZeroMQ peer answers at ``addr`` (HOST:PORT): it sends its greeting as
    soon as a connection is accepted. A refused connection, or one reset or closed
    before a byte came (the port of a process being killed still accepts for a few
    milliseconds while the kernel closes its files), is REFUSED; a connection the
    kernel accepts but nobody speaks on (a frozen process) or no answer at all is
    SILENT."""
    try:
        host, port = split_host_port(addr)
    except ValueError:
        return Outcome.SILENT
    deadline = time.monotonic() + timeout_s
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except ConnectionRefusedError:
        return Outcome.REFUSED
    except (TimeoutError, OSError):  # no answer, unreachable, a name that does not resolve
        return Outcome.SILENT
    try:
        first = await asyncio.wait_for(reader.read(1), max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        return Outcome.SILENT
    except OSError:  # reset
        return Outcome.REFUSED
    finally:
        writer.close()
    return Outcome.ANSWERED if first else Outcome.REFUSED


class CrashWatch:
    def __init__(
        self, members: Members, config: CrashConfig, counters: Counter[str], log: logging.Logger
    ) -> None:
        self.members = members
        self.cases = CrashCases(config)
        self.config = config
        self.counters = counters
        self.log = log
        self._tasks: set[asyncio.Task[None]] = set()

    def events(self) -> LinkEvents:
        """What the transport calls (set before its first link opens)."""
        return LinkEvents(lost=self.lost, up=self.up)

    def lost(self, addr: str) -> None:
        now = time.monotonic()
        self.cases.expire(now)
        node_id = self.members.node_at(addr)
        if node_id is None or self.members.address_of(node_id) != addr:
            return  # nobody we know, or a member already dead or left
        generation = self.members.generation_of(node_id)
        if generation is None:
            return
        probe = self.cases.link_lost(addr, node_id, generation, now)
        if probe is not None:
            self.counters["crash_cases"] += 1
            self._start(probe)

    def up(self, addr: str) -> None:
        self.cases.link_up(addr, time.monotonic())

    def _start(self, probe: Probe) -> None:
        task = asyncio.ensure_future(self._probe(probe))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.counters["crash_probe_errors"] += 1
            self.log.error("a crash probe failed", exc_info=task.exception())

    async def _probe(self, probe: Probe) -> None:
        delay = probe.at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        outcome = await probe_port(probe.addr, self.config.probe_timeout_s)
        self.counters[f"crash_probe_{outcome.value}"] += 1
        verdict = self.cases.outcome(probe.addr, outcome, time.monotonic())
        if isinstance(verdict, Probe):
            self._start(verdict)
        elif isinstance(verdict, Confirmed):
            self.members.crashed(verdict)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
