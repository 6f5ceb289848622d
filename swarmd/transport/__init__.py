"""Moving messages between nodes: the interface (:mod:`.base`), ZeroMQ with CURVE
(:mod:`.zmq`, the daemon's) and an in-process hub (:mod:`.memory`, tests/simulator).

``from swarmd.transport import Transport, curve_client, Reply`` keeps working:
``Transport`` is the ZeroMQ transport, as before this was a package; the interface
every implementation meets is :class:`.base.Transport`.
"""

from .base import (
    BindError,
    EnrollHandler,
    LinkHandler,
    Reply,
    ServerHandler,
    TransportFactory,
    UndeliveredHandler,
)
from .bundler import BUNDLE_MAX, Bundler
from .zmq import (
    LINK_IDLE_S,
    POLL_MS,
    ZAP_DOMAIN,
    Transport,
    ZmqTransport,
    curve_client,
)
from .zmq_listen import listening

__all__ = [
    "BUNDLE_MAX",
    "LINK_IDLE_S",
    "POLL_MS",
    "ZAP_DOMAIN",
    "BindError",
    "Bundler",
    "EnrollHandler",
    "LinkHandler",
    "Reply",
    "ServerHandler",
    "Transport",
    "TransportFactory",
    "UndeliveredHandler",
    "ZmqTransport",
    "curve_client",
    "listening",
]
