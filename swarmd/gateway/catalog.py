"""The models of the live cluster, from each alive member's gossiped profiles."""

from __future__ import annotations

from typing import Any

from ..core.failure import Liveness
from ..core.gateway import Catalog, served_from_gossip


def catalog_of(members: list[Any]) -> Catalog:
    served = []
    for m in members:
        if m.liveness is not Liveness.ALIVE:
            continue
        name = m.state.get("name") or m.node_id
        served += served_from_gossip(str(name), m.state.get("models") or [])
    return Catalog(served)
