"""The daemon's ZeroMQ transport, opened and bound (:func:`listening`)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from pathlib import Path

import zmq
import zmq.asyncio

from ..identity import ClusterKeys
from .base import BindError, LinkHandler, ServerHandler, TransportFactory, UndeliveredHandler
from .zmq import ZmqTransport


def listening(bind: str, port: int, control_path: Path | None) -> TransportFactory:
    """The daemon's transport: its own context, ZAP, the cluster socket on
    ``bind:port`` and (unless None) the owner-only control socket at ``control_path``."""

    async def open_transport(
        *,
        address: str,
        keys: ClusterKeys,
        on_server: ServerHandler,
        on_link: LinkHandler,
        on_undelivered: UndeliveredHandler | None,
        counters: Counter[str],
        log: logging.Logger,
    ) -> ZmqTransport:
        transport = ZmqTransport(
            ctx=zmq.asyncio.Context(),
            keys=keys,
            on_server=on_server,
            on_link=on_link,
            log=log,
            counters=counters,
            on_undelivered=on_undelivered,
        )
        transport.owns_context = True
        try:
            transport.start_auth()
            _bind(transport, bind, port, control_path)
        except BaseException:
            await transport.close()
            raise
        return transport

    return open_transport


def _bind(transport: ZmqTransport, bind: str, port: int, control_path: Path | None) -> None:
    try:
        transport.bind_tcp(bind, port)
    except zmq.ZMQError as exc:
        raise BindError(f"cannot listen on {bind}:{port}: {exc}") from None
    if control_path is None:
        return
    with contextlib.suppress(FileNotFoundError):
        control_path.unlink()  # stale: the state-dir lock proves no daemon owns it
    try:
        transport.bind_ipc(str(control_path))
    except zmq.ZMQError as exc:
        raise BindError(f"cannot create control socket {control_path}: {exc}") from None
    os.chmod(control_path, 0o600)
