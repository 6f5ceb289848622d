"""Sleep is not death: what a node does when its machine suspends and resumes.

Where logind runs (:mod:`.logind`), the node holds a *delay* inhibitor, so the machine
waits for it before suspending. On PrepareForSleep(true) it

1. stops taking work and gossips ``sleeping``, pushed at once to every live peer (not
   at the next round): peers show it ``sleeping``, not ``dead``, price nothing on it,
   and its coordinators re-dispatch the attempts it held (once: later results of those
   attempts are stale and dropped);
2. hands its running and queued attempts back (as a drain does on SIGTERM) and lets
   their results reach the coordinators (bounded);
3. runs :meth:`Node.before_sleep` (a hook for more, e.g. replicating what it
   coordinates), commits the journal and checkpoints it to disk;
4. releases the inhibitor: the machine suspends.

All of it within PREPARE_WITHIN_S, well inside logind's InhibitDelayMaxSec (5 s by
default); whatever is not done by then is cut short and the inhibitor released anyway.

On PrepareForSleep(false) (the machine resumed) it retakes the inhibitor, clears
``sleeping``, tells every member it knows at once (its peers move it back to alive in
one exchange; peers that forgot it take it back because it talks in person) and takes
work again.

Without logind the same code runs on SIGUSR1 (sleep) and SIGUSR2 (wake): for tests,
and for a machine whose own suspend hook can signal the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .logind import Inhibitor, Logind, LogindError

if TYPE_CHECKING:
    from .node import Node

PREPARE_WITHIN_S = 3.5  # logind waits at most InhibitDelayMaxSec (5 s by default)
ANNOUNCE_WAIT_S = 0.5  # for the peers' answers to the `sleeping` announcement
HAND_BACK_WAIT_S = 1.0  # for stopped attempts to report how they ended
OUTBOX_WAIT_S = 1.0  # for handed-back results to reach live coordinators
INHIBIT_WHY = "hand back running work to the swarm"
RETRY_LOGIND_S = 30.0  # after the system bus connection closed


class Sleep:
    def __init__(self, node: Node, log: logging.Logger) -> None:
        self.node = node
        self.log = log
        self.asleep = False
        self.logind: Logind | None = None
        self.inhibitor: Inhibitor | None = None
        self.last_prepare_s: float | None = None  # how long the last preparation took
        self.handed_back = 0  # attempts handed back by the last preparation
        self._lock = asyncio.Lock()  # a preparation and a wake never overlap

    # ------------------------------------------------------------ logind

    async def watch_logind(self) -> None:
        """Hold a delay inhibitor and follow PrepareForSleep while logind is there."""
        while True:
            logind = await Logind.connect(self.log)
            if logind is None:
                return  # no system bus or no logind: logged at debug
            self.logind = logind
            logind.on_prepare_for_sleep(self.on_prepare_for_sleep)
            await self._inhibit()
            self.log.info("logind: holding a sleep delay inhibitor")
            await logind.wait_disconnected()
            self._release()
            self.logind = None
            self.log.warning("the system D-Bus connection closed; retrying in %gs", RETRY_LOGIND_S)
            await asyncio.sleep(RETRY_LOGIND_S)

    async def _inhibit(self) -> None:
        if self.logind is None or (self.inhibitor is not None and self.inhibitor.held):
            return
        try:
            inhibitor = await self.logind.inhibit_sleep("swarmd", INHIBIT_WHY)
            if self.inhibitor is not None and self.inhibitor.held:
                inhibitor.release()  # another call took one meanwhile: never hold two
            else:
                self.inhibitor = inhibitor
        except LogindError as exc:
            # Sleep is still announced on PrepareForSleep; the machine just may not
            # wait for the announcement to get out.
            self.log.warning("logind refused a sleep inhibitor: %s", exc)

    def _release(self) -> None:
        if self.inhibitor is not None:
            self.inhibitor.release()
            self.inhibitor = None

    def on_prepare_for_sleep(self, start: bool) -> None:
        """logind's signal (or SIGUSR1/SIGUSR2): prepare, or wake, on a task."""
        if not self.node.ready.is_set():
            self.log.info("PrepareForSleep(%s) before the node is up: nothing to do", start)
            if start:
                self._release()  # do not hold the suspend up
            else:
                self.node.lifecycle.spawn(self._inhibit())
            return
        self.node.lifecycle.spawn(self.prepare() if start else self.wake())

    # ------------------------------------------------------------ sleep

    async def prepare(self) -> None:
        """Everything before the suspend, bounded; never raises."""
        async with self._lock:
            if self.asleep or self.node.stopping:
                self._release()
                return
            self.asleep = True
            t0 = time.monotonic()
            self.handed_back = 0
            try:
                await asyncio.wait_for(self._prepare(), PREPARE_WITHIN_S)
            except TimeoutError:
                self.log.warning("sleep: preparation cut short at %gs", PREPARE_WITHIN_S)
            except Exception:
                self.log.exception("sleep: preparation failed")
            self.last_prepare_s = time.monotonic() - t0
            self.log.info(
                "ready to sleep: %d attempt(s) handed back in %.2f s; releasing the inhibitor",
                self.handed_back,
                self.last_prepare_s,
            )
            self._release()

    async def _prepare(self) -> None:
        node = self.node
        worker, membership, store = node.worker, node.membership, node.store
        assert worker is not None and membership is not None and store is not None
        node.set_sleeping(True)
        self.log.info("going to sleep: no new work; telling the peers")
        await membership.announce(sleeping=True, wait_s=ANNOUNCE_WAIT_S)
        running = list(worker.running.values())
        self.handed_back = len(running) + worker.queued
        if self.handed_back:
            worker.hand_back()
            if running:
                await asyncio.wait(running, timeout=HAND_BACK_WAIT_S)
        live: set[str] = membership.alive_addresses()
        outbox = worker.core.outbox  # results not yet acknowledged by their coordinator
        deadline = time.monotonic() + OUTBOX_WAIT_S
        while time.monotonic() < deadline and any(o.addr in live for o in outbox.values()):
            await asyncio.sleep(0.01)
        worker.flush()  # what is still unacknowledged is resent after the wake
        await node.before_sleep()
        if node.coordination is not None:
            node.coordination.flush()
        await asyncio.to_thread(_checkpoint, store.path)

    # ------------------------------------------------------------ wake

    async def wake(self) -> None:
        """The machine resumed: inhibit again, announce, take work; never raises."""
        async with self._lock:
            await self._inhibit()
            if not self.asleep or self.node.stopping:
                return
            self.asleep = False
            try:
                self.node.set_sleeping(False)
                membership = self.node.membership
                if membership is not None:
                    await membership.announce(sleeping=False, wait_s=0.0)
                self.log.info("awake: told the peers; taking work again")
            except Exception:
                self.log.exception("wake: announcing failed")


def _checkpoint(path: Path) -> None:
    """Copy the journal's write-ahead log into the database and sync it (on a
    connection of its own, off the event loop): a laptop whose battery dies asleep
    loses nothing committed."""
    if str(path) == ":memory:":
        return
    with contextlib.suppress(sqlite3.Error):
        db = sqlite3.connect(path, timeout=0.5)
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()
