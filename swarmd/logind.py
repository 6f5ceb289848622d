"""systemd-logind over the system D-Bus (dbus-fast, asyncio): the sleep inhibitor, the
PrepareForSleep signal and the idle hint.

- :meth:`Logind.connect` returns None where there is no system bus or no logind (a
  container without systemd, macOS, a build machine): the caller runs without it.
- :meth:`Logind.inhibit_sleep` takes a *delay* inhibitor: logind waits (at most its
  ``InhibitDelayMaxSec``, 5 s by default) before suspending until the returned
  :class:`Inhibitor` is released.
- :meth:`Logind.on_prepare_for_sleep` calls back with True before a suspend and False
  after the resume. Only a signal sent by logind (the owner of org.freedesktop.login1)
  or by another process of root's (which could suspend the machine anyway) is taken:
  on the system bus any local user may emit a signal with logind's interface, and one
  that makes the node hand back its work and announce that it sleeps must not be that
  cheap. Others are counted (``rejected``) and logged; so is a sender that is gone
  before it can be asked who it is (``busctl emit`` exits at once: a test emits from a
  connection that stays open until the node took the signal).
- :meth:`Logind.idle_hint`: whether the seat's sessions are idle and since when
  (``IdleHint``, ``IdleSinceHint`` of the Manager), for a user-activity policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from dbus_fast import BusType, InvalidAddressError, Message, MessageType
from dbus_fast.aio import MessageBus

LOGIND = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
MANAGER = "org.freedesktop.login1.Manager"
SLEEP_RULE = f"type='signal',interface='{MANAGER}',member='PrepareForSleep',path='{LOGIND_PATH}'"
CALL_TIMEOUT_S = 2.0

PrepareForSleep = Callable[[bool], None]


class LogindError(Exception):
    """logind (or the bus) refused or failed a call."""


class Inhibitor:
    """A held logind inhibitor: a file descriptor; closing it releases the lock."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class Logind:
    def __init__(self, bus: MessageBus, log: logging.Logger) -> None:
        self.bus = bus
        self.log = log
        self.rejected = 0  # PrepareForSleep signals not from a root process
        self._callbacks: list[PrepareForSleep] = []
        self._checks: set[asyncio.Task[None]] = set()
        bus.add_message_handler(self._on_message)

    @classmethod
    async def connect(cls, log: logging.Logger, address: str | None = None) -> Logind | None:
        """logind on the system bus (or the bus at ``address``); None if there is none."""
        try:
            bus = MessageBus(
                bus_address=address,
                bus_type=BusType.SYSTEM,
                negotiate_unix_fd=True,
            )
            await asyncio.wait_for(bus.connect(), CALL_TIMEOUT_S)
        except (FileNotFoundError, ConnectionRefusedError, InvalidAddressError) as exc:
            log.debug("no system D-Bus (%s): no logind sleep inhibitor", exc)  # not Linux
            return None
        except Exception as exc:  # there is a bus, and it hung up on us
            log.warning(
                "the system D-Bus refused this node (%r): no logind sleep inhibitor, so a "
                "suspend is not announced and peers will see this node dead, not sleeping "
                "(a DynamicUser= service cannot use dbus-daemon on some systems; see "
                "README, 'When a laptop sleeps')",
                exc,
            )
            return None
        logind = cls(bus, log)
        try:
            owner = await logind._call(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "NameHasOwner",
                "s",
                [LOGIND],
            )
            if not owner.body[0]:
                # logind is bus-activated: starting it is fine, but a bus without it
                # (a container without systemd) has no activatable logind either.
                activatable = await logind._call(
                    "org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus",
                    "ListActivatableNames",
                    "",
                    [],
                )
                if LOGIND not in activatable.body[0]:
                    raise LogindError("no logind on the system bus")
            await logind._call(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "AddMatch",
                "s",
                [SLEEP_RULE],
            )
        except (LogindError, TimeoutError) as exc:
            log.debug("system D-Bus without logind (%s): no sleep inhibitor", exc)
            logind.close()
            return None
        return logind

    @property
    def connected(self) -> bool:
        return bool(self.bus.connected)

    async def wait_disconnected(self) -> None:
        """Returns when the bus connection is gone (the bus restarted, say)."""
        with contextlib.suppress(Exception):
            await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        for task in list(self._checks):
            task.cancel()
        with contextlib.suppress(Exception):
            self.bus.disconnect()

    # ------------------------------------------------------------ calls

    async def _call(
        self, destination: str, path: str, interface: str, member: str, sig: str, body: list[Any]
    ) -> Message:
        message = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=sig,
            body=body,
        )
        try:
            reply = await asyncio.wait_for(self.bus.call(message), CALL_TIMEOUT_S)
        except TimeoutError:
            raise LogindError(f"{member}: no answer in {CALL_TIMEOUT_S:g} s") from None
        except Exception as exc:  # the connection broke under the call
            raise LogindError(f"{member}: {exc}") from None
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise LogindError(f"{member}: {reply.error_name}: {text}")
        return reply

    async def inhibit_sleep(self, who: str, why: str) -> Inhibitor:
        """A delay inhibitor for sleep (raises LogindError if refused: polkit, say)."""
        reply = await self._call(
            LOGIND, LOGIND_PATH, MANAGER, "Inhibit", "ssss", ["sleep", who, why, "delay"]
        )
        fds = list(reply.unix_fds or [])
        index = reply.body[0] if reply.body else None
        if not isinstance(index, int) or not 0 <= index < len(fds):
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise LogindError("Inhibit: no file descriptor in the reply")
        for i, fd in enumerate(fds):
            if i != index:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return Inhibitor(fds[index])

    async def idle_hint(self) -> tuple[bool, float | None]:
        """(whether every session of the machine is idle, since when: unix seconds or
        None if not idle or not known)."""
        idle = await self._property("IdleHint")
        since_us = await self._property("IdleSinceHint")
        since = since_us / 1e6 if isinstance(since_us, int) and since_us > 0 else None
        return bool(idle), since if idle else None

    async def _property(self, name: str) -> Any:
        reply = await self._call(
            LOGIND,
            LOGIND_PATH,
            "org.freedesktop.DBus.Properties",
            "Get",
            "ss",
            [MANAGER, name],
        )
        return reply.body[0].value

    # ------------------------------------------------------------ PrepareForSleep

    def on_prepare_for_sleep(self, callback: PrepareForSleep) -> None:
        """``callback(True)`` before a suspend, ``callback(False)`` after the resume."""
        self._callbacks.append(callback)

    def _on_message(self, message: Message) -> None:
        if (
            message.message_type is not MessageType.SIGNAL
            or message.member != "PrepareForSleep"
            or message.interface != MANAGER
            or message.path != LOGIND_PATH
            or message.signature != "b"
        ):
            return
        start = bool(message.body[0])
        task = asyncio.ensure_future(self._from_root(message.sender, start))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _from_root(self, sender: str | None, start: bool) -> None:
        uid: int | None = None
        try:
            owner = await self._bus_call("GetNameOwner", LOGIND)
            if owner != sender:
                uid = await self._bus_call("GetConnectionUnixUser", sender or "")
        except LogindError as exc:  # gone already (a one-shot emitter), or no logind
            self.log.warning("PrepareForSleep from %s: cannot tell who sent it (%s)", sender, exc)
            uid = None
        else:
            if owner == sender:
                uid = 0
        if uid != 0:
            self.rejected += 1
            self.log.warning(
                "PrepareForSleep(%s) from %s (uid %s) ignored: only logind's or root's count",
                start,
                sender,
                uid,
            )
            return
        for callback in list(self._callbacks):
            callback(start)

    async def _bus_call(self, member: str, arg: str) -> Any:
        reply = await self._call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            member,
            "s",
            [arg],
        )
        return reply.body[0]
