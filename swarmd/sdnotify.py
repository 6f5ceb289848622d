"""systemd readiness, status and watchdog over the plain ``$NOTIFY_SOCKET`` protocol.

No libsystemd: a notification is one datagram of ``KEY=VALUE`` lines sent to the unix
socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` names an abstract socket). Without
that variable (not started by systemd with ``Type=notify``) everything here is a no-op.
Nothing here raises: a failed send is logged at debug level and reported as ``False``.

A PyInstaller onefile binary runs Python in a child of the bootloader, so the unit needs
``NotifyAccess=all`` and ``$WATCHDOG_PID`` names the bootloader (our parent) there.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import socket
import sys
from collections.abc import Callable

log = logging.getLogger("swarmd.sdnotify")

SEND_TIMEOUT_S = 1.0


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    if path:
        log.debug("NOTIFY_SOCKET=%r: only unix sockets are supported", path)
    return None


def enabled() -> bool:
    """Whether a service manager listens (``$NOTIFY_SOCKET`` names a unix socket)."""
    return _address() is not None


def notify(**fields: object) -> bool:
    """Send ``KEY=VALUE`` lines, e.g. ``notify(READY=1, STATUS="3 peers alive")``.

    Returns True if the datagram was sent, False when there is no socket or it failed.
    Newlines in a value are replaced by spaces (one line per field).
    """
    addr = _address()
    if addr is None or not fields:
        return False
    lines = [f"{k}={str(v).replace(chr(10), ' ')}" for k, v in fields.items()]
    data = ("\n".join(lines) + "\n").encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT_S)
            sock.connect(addr)
            sock.sendall(data)
    except Exception as exc:  # never let the service manager take the daemon down
        log.debug("sd_notify %s to %r failed: %r", list(fields), addr, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """``$WATCHDOG_USEC`` in seconds if the watchdog is meant for this process, else None.

    Like sd_watchdog_enabled(3): ``$WATCHDOG_PID``, when set, must be our PID; a frozen
    (PyInstaller onefile) binary also accepts its parent, the bootloader systemd started.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    try:
        value = int(usec)
    except ValueError:
        if usec:
            log.debug("WATCHDOG_USEC=%r is not a number", usec)
        return None
    if value <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid:
        ours = {os.getpid()}
        if getattr(sys, "frozen", False):
            ours.add(os.getppid())
        try:
            if int(pid) not in ours:
                return None
        except ValueError:
            log.debug("WATCHDOG_PID=%r is not a number", pid)
            return None
    return value / 1_000_000


async def supervise(
    status: Callable[[], str], healthy: Callable[[], bool], period: float = 1.0
) -> None:
    """Run on the event loop for the daemon's life: keep systemd informed.

    - ``STATUS=`` with ``status()`` whenever it changes, checked every ``period`` s;
    - ``WATCHDOG=1`` every half watchdog interval, but only while ``healthy()`` holds,
      so a wedged loop (or one whose main timer stopped) gets restarted by systemd;
      with the watchdog on, faulthandler prints every thread's stack on its SIGABRT.
    Returns at once when no service manager listens.
    """
    if not enabled():
        return
    interval = watchdog_interval()
    half = interval / 2 if interval else None
    if interval and not faulthandler.is_enabled():
        # systemd's watchdog kills with SIGABRT: leave the stuck stacks in the journal.
        faulthandler.enable(all_threads=True)
    loop = asyncio.get_running_loop()
    last_status: str | None = None
    last_ping = float("-inf")
    while True:
        try:
            text = status()
        except Exception as exc:
            log.debug("status failed: %r", exc)
            text = last_status or ""
        fields: dict[str, object] = {}
        if text != last_status:
            fields["STATUS"] = text
        sleep = period
        now = loop.time()
        if half is not None:
            if now - last_ping >= half:
                if healthy():
                    fields["WATCHDOG"] = 1
                    last_ping = now
                else:
                    log.debug("main loop unhealthy: no watchdog ping")
            due = last_ping + half - now
            sleep = min(period, max(0.05, due if due > 0 else half / 4))
        if fields and notify(**fields):
            last_status = text
        await asyncio.sleep(sleep)
