"""Deterministic simulation of the membership core: N virtual nodes, one process.

The same :class:`~swarmd.core.gossip.Gossip` objects the daemon runs are driven by a
virtual clock and an in-memory network with latency, random loss and partitions.
Everything random comes from one seed, so a run can be replayed exactly.
"""

from __future__ import annotations

import gc
import heapq
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from protocol import codec
from protocol.messages import GossipMessage

from .core.failure import Liveness
from .core.gossip import Gossip, GossipConfig


@dataclass
class Network:
    loss: float = 0.0
    latency_s: tuple[float, float] = (0.0005, 0.005)
    # node address -> partition label; messages only flow between equal labels
    partition: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    lost: int = 0
    # When true, every message is encoded (as the real transport would) and its size
    # added to ``bytes_sent``: costs CPU, so benches turn it on only where they count.
    count_bytes: bool = False
    bytes_sent: int = 0
    bytes_max: int = 0  # the largest message counted

    def delivers(self, src: str, dst: str, rng: random.Random) -> bool:
        if self.partition.get(src, 0) != self.partition.get(dst, 0):
            self.lost += 1
            return False
        if self.loss and rng.random() < self.loss:
            self.lost += 1
            return False
        return True


class Simulation:
    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        config: GossipConfig | None = None,
        seeds: int = 1,
        network: Network | None = None,
        wire: bool = False,
    ) -> None:
        """``n`` nodes; each knows the first ``seeds`` addresses as --join seeds.

        ``wire=True`` pushes every message through the real codec (slower, stricter).
        """
        self.config = config or GossipConfig()
        self.rng = random.Random(seed)
        self.network = network or Network()
        self.wire = wire
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._order = 0
        self.nodes: dict[str, Gossip] = {}
        self._rngs: dict[str, random.Random] = {}
        self._asleep: dict[str, Gossip] = {}  # suspended machines, by address
        seed_addrs = tuple(self.addr(i) for i in range(min(seeds, n)))
        for i in range(n):
            self.start(i, seeds=seed_addrs)

    @staticmethod
    def addr(i: int) -> str:
        return f"10.0.{i // 250}.{i % 250 + 1}:7946"

    @staticmethod
    def node_id(i: int) -> str:
        return f"node{i:04d}"

    # ------------------------------------------------------------ lifecycle

    def start(self, i: int, seeds: tuple[str, ...] = (), generation: int = 1) -> Gossip:
        addr = self.addr(i)
        g = Gossip(
            node_id=self.node_id(i),
            generation=generation,
            boot=self.rng.getrandbits(32),
            addr=addr,
            now=self.now,
            config=self.config,
            seeds=seeds or (self.addr(0),),
        )
        self.nodes[addr] = g
        self._rngs[addr] = random.Random(self.rng.getrandbits(64))
        # Nodes start at random phases within one interval, like real daemons.
        self._at(self.now + self.rng.uniform(0, self.config.interval_s), self._ticker(addr, g))
        return g

    def kill(self, i: int) -> None:
        """Stop a node dead: no more ticks, messages to it vanish."""
        self.nodes.pop(self.addr(i), None)

    def leave(self, i: int) -> None:
        g = self.nodes.get(self.addr(i))
        if g is not None:
            self._send_all(self.addr(i), g.leave(self.now))

    def sleep(self, i: int, announce_s: float = 0.05) -> None:
        """The machine suspends: it announces ``sleeping``, has ``announce_s`` for the
        exchange to finish, then is frozen (no ticks, messages to it vanish)."""
        addr = self.addr(i)
        g = self.nodes.get(addr)
        if g is None:
            return
        self._send_all(addr, g.sleep(self.now))

        def freeze() -> None:
            if self.nodes.get(addr) is g:
                self._asleep[addr] = self.nodes.pop(addr)

        self._at(self.now + announce_s, freeze)

    def wake(self, i: int) -> None:
        """The machine resumes: ticks again and tells every member it knows."""
        addr = self.addr(i)
        g = self._asleep.pop(addr, None)
        if g is None:
            return
        self.nodes[addr] = g
        self._send_all(addr, g.wake(self.now))
        self._at(self.now + self.config.interval_s, self._ticker(addr, g))

    # ------------------------------------------------------------ the event loop

    def _at(self, when: float, action: Callable[[], None]) -> None:
        self._order += 1
        heapq.heappush(self._queue, (when, self._order, action))

    def _ticker(self, addr: str, g: Gossip) -> Callable[[], None]:
        def tick() -> None:
            if self.nodes.get(addr) is not g:
                return  # killed or restarted
            self._send_all(addr, g.tick(self.now, self._rngs[addr]))
            self._at(self.now + self.config.interval_s, tick)

        return tick

    def _send_all(self, src: str, sends: Iterable[object], reply_to: str | None = None) -> None:
        for send in sends:
            dst = send.addr or reply_to  # type: ignore[attr-defined]
            assert dst is not None
            self._transmit(src, dst, send.message)  # type: ignore[attr-defined]

    def _transmit(self, src: str, dst: str, message: GossipMessage) -> None:
        self.network.sent += 1
        if self.network.count_bytes:
            size = len(codec.encode(message))
            self.network.bytes_sent += size
            self.network.bytes_max = max(self.network.bytes_max, size)
        if not self.network.delivers(src, dst, self.rng):
            return
        if self.wire:
            decoded = codec.decode(codec.encode(message))
            assert isinstance(decoded, type(message))
            message = decoded
        delay = self.rng.uniform(*self.network.latency_s)

        def deliver() -> None:
            g = self.nodes.get(dst)
            if g is None:
                return
            self._send_all(dst, g.receive(message, self.now, self._rngs[dst]), reply_to=src)

        self._at(self.now + delay, deliver)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, t: float) -> None:
        # A large simulation holds millions of long-lived objects (node states, key-values,
        # detector windows) and creates few reference cycles: the cyclic collector would
        # spend its time re-scanning them. It is paused while the events run.
        collecting = gc.isenabled()
        gc.disable()
        try:
            queue, pop = self._queue, heapq.heappop
            while queue and queue[0][0] <= t:
                when, _, action = pop(queue)
                self.now = when
                action()
        finally:
            if collecting:
                gc.enable()
        self.now = t

    def run_until_true(self, predicate: Callable[[], bool], limit_s: float, step_s: float) -> bool:
        """Run in steps of ``step_s`` until ``predicate()`` holds; False at the limit."""
        deadline = self.now + limit_s
        while self.now < deadline:
            self.run_for(step_s)
            if predicate():
                return True
        return predicate()

    # ------------------------------------------------------------ observations

    def view(self, addr: str) -> dict[str, Liveness]:
        g = self.nodes[addr]
        return {m.node_id: m.liveness for m in g.members(self.now)}

    def converged(self) -> bool:
        """Every running node sees exactly the running nodes, all alive."""
        # Same answer as comparing each node's ALIVE members() with the running set, without
        # building N*N Member objects: this is polled after every simulated step.
        expected = {g.node_id for g in self.nodes.values()}
        alive = Liveness.ALIVE
        for g in self.nodes.values():
            known = g.state.nodes.keys()
            if not expected <= known or g.liveness(g.node_id) is not alive:
                return False
            # g.liveness() of the others, inlined: the detector's verdict.
            state_of = g.detector.state
            for node_id in expected:
                if state_of(node_id) is not alive and node_id != g.node_id:
                    return False
            for node_id in known - expected:
                if state_of(node_id) is alive:
                    return False
        return True

    def count(self, liveness: Liveness, among: Iterable[str] | None = None) -> int:
        """How many (observer, subject) pairs are in ``liveness`` for running subjects."""
        subjects = set(among) if among is not None else {g.node_id for g in self.nodes.values()}
        total = 0
        for g in self.nodes.values():
            # g.liveness(), inlined: the detector's verdict, except on itself.
            me, state_of = g.node_id, g.detector.state
            for node_id in subjects & g.state.nodes.keys():
                observed = g.liveness(node_id) if node_id == me else state_of(node_id)
                if observed is liveness:
                    total += 1
        return total

    def rounds(self, seconds: float) -> int:
        return math.ceil(seconds / self.config.interval_s)
