"""The models of the live cluster, from each alive member's gossiped profiles, and a
short-lived memory of that view for the request path."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any, Final

from ..core.failure import Liveness
from ..core.gateway import Catalog, served_from_gossip

# How long a built catalog, and a request target found feasible, are taken as they are
# while no member changed liveness or restarted: the gossip that changes them (models,
# draining, free VRAM) moves on that scale anyway. A target found infeasible is checked
# again on every request (its 503 says why, as of now).
FRESH_S: Final = 0.5


def catalog_of(members: list[Any]) -> Catalog:
    served = []
    for m in members:
        if m.liveness is not Liveness.ALIVE:
            continue
        name = m.state.get("name") or m.node_id
        served += served_from_gossip(str(name), m.state.get("models") or [])
    return Catalog(served)


class ClusterView:
    """The catalog and the feasible targets, rebuilt after :data:`FRESH_S` or as soon
    as a member's liveness or generation changes (a node died, left or restarted)."""

    def __init__(
        self, members: Callable[[], list[Any]], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.members = members
        self.clock = clock
        self._key: tuple[Any, ...] = ()
        self._until = 0.0
        self._catalog: Catalog | None = None
        self._feasible: set[Hashable] = set()

    def _fresh(self) -> list[Any]:
        members = self.members()
        key = tuple((m.node_id, m.liveness, m.state.generation) for m in members)
        now = self.clock()
        if key != self._key or now >= self._until:
            self._key, self._until = key, now + FRESH_S
            self._catalog = None
            self._feasible.clear()
        return members

    def catalog(self) -> Catalog:
        members = self._fresh()
        if self._catalog is None:
            self._catalog = catalog_of(members)
        return self._catalog

    def check_feasible(self, target: Hashable, check: Callable[[], None]) -> None:
        """Run ``check`` (it raises when ``target`` cannot be served) unless it passed
        for ``target`` since the view was last rebuilt."""
        self._fresh()
        if target in self._feasible:
            return
        check()
        self._feasible.add(target)
