"""Emit logind's PrepareForSleep(true|false) on the system bus (or ``--address``) from
this process, and stay connected ``--hold`` seconds so that the receiver can ask the
bus who sent it (swarmd takes the signal only from logind or a process of root's).

    python tests/emit_sleep.py true [--address unix:path=...] [--hold 2]

A standalone script (only dbus-fast): the nspawn boot test runs it inside the container.
"""

from __future__ import annotations

import argparse
import asyncio

from dbus_fast import BusType, Message
from dbus_fast.aio import MessageBus


async def emit(start: bool, address: str | None, hold_s: float) -> None:
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    signal = Message.new_signal(
        "/org/freedesktop/login1", "org.freedesktop.login1.Manager", "PrepareForSleep", "b", [start]
    )
    await bus.send(signal)
    await asyncio.sleep(hold_s)
    bus.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("start", choices=["true", "false"])
    parser.add_argument("--address", default=None, help="a bus address (default: the system bus)")
    parser.add_argument("--hold", type=float, default=2.0, help="seconds to stay connected")
    args = parser.parse_args()
    asyncio.run(emit(args.start == "true", args.address, args.hold))


if __name__ == "__main__":
    main()
