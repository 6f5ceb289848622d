"""Merge laws, digest/delta anti-entropy and tombstones of swarmd.core.membership.

Property tests run derandomized (fixed seed, no example database), so a run is
reproducible: the same examples every time, on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.messages import KV, DigestEntry, NodeDelta
from swarmd.core.membership import ClusterState, NodeState, Versioned

# Generating nested views is what costs (the checks are cheap); the value and version
# domains are small enough that 100 examples hit the collisions many times over.
DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=100)
HISTORIES = settings(DETERMINISTIC, max_examples=300)

NODE_IDS = ("a", "b", "c", "d")
KEYS = ("addr", "status", "queue", "hw", "x")

# Few distinct values and versions, so that two copies often hold the same version of a
# key with different values (only possible with a misbehaving owner, but merge must still
# be a join) and the tie-break is exercised. Flat tuples mapped into objects: much
# cheaper for hypothesis to generate than nested builds.
values = st.sampled_from([-2, -1, 0, 1, 2, 2.5, "", "alive", "left", None, True, [0], [1, 2]])
key_values = st.lists(
    st.tuples(st.sampled_from(KEYS), values, st.integers(min_value=1, max_value=6)), max_size=5
)
NodeParts = tuple[int, int, list[tuple[str, Any, int]]]
node_parts = st.tuples(
    st.integers(min_value=1, max_value=3),  # generation
    st.integers(min_value=0, max_value=5),  # heartbeat
    key_values,
)


def build_node(node_id: str, parts: NodeParts) -> NodeState:
    generation, heartbeat, kvs = parts
    return NodeState(node_id, generation, heartbeat, {k: Versioned(v, ver) for k, v, ver in kvs})


def node_states(node_id: str) -> st.SearchStrategy[NodeState]:
    return node_parts.map(lambda parts: build_node(node_id, parts))


def build_cluster(parts: tuple[dict[str, int], dict[str, NodeParts]]) -> ClusterState:
    """A well-formed view: no node of a generation at or below its tombstone."""
    forgotten, nodes = parts
    state = ClusterState(forgotten=forgotten)
    for node_id, node in nodes.items():
        if node[0] > forgotten.get(node_id, -1):
            state.nodes[node_id] = build_node(node_id, node)
    return state


cluster_states = st.tuples(
    st.dictionaries(st.sampled_from(NODE_IDS), st.integers(min_value=0, max_value=2)),
    st.dictionaries(st.sampled_from(NODE_IDS), node_parts),
).map(build_cluster)


Canonical = tuple[int, int, int, dict[str, tuple[Any, int]]]


def canon_node(node: NodeState) -> Canonical:
    kvs = {key: (item.value, item.version) for key, item in node.kvs.items()}
    return (node.generation, node.heartbeat, node.max_version, kvs)


def canon(state: ClusterState) -> tuple[dict[str, Canonical], dict[str, int]]:
    for node_id, node in state.nodes.items():
        assert node.node_id == node_id
    return {i: canon_node(n) for i, n in state.nodes.items()}, dict(state.forgotten)


# ------------------------------------------------------------------ NodeState


def test_owner_writes_are_versioned_and_deltas_oldest_first() -> None:
    node = NodeState("a", 1)
    assert node.max_version == 0
    assert node.set("addr", "10.0.0.1:7946")
    assert node.set("queue", 1)
    assert not node.set("queue", 1)  # unchanged: no new version
    assert node.set("addr", "10.0.0.2:7946")
    assert node.max_version == 3
    assert node.kvs["addr"] == Versioned("10.0.0.2:7946", 3)
    assert node.newer_than(0) == [KV("queue", 1, 2), KV("addr", "10.0.0.2:7946", 3)]
    assert node.newer_than(2) == [KV("addr", "10.0.0.2:7946", 3)]
    assert node.newer_than(3) == []
    assert node.digest() == DigestEntry("a", 1, 0, 3)


def test_apply_takes_only_newer_versions() -> None:
    node = NodeState("a", 1, kvs={"queue": Versioned(5, 4)})
    assert not node.apply([KV("queue", 9, 4), KV("queue", 9, 3)])
    assert node.get("queue") == 5
    assert node.apply([KV("queue", 7, 6), KV("name", "n", 2)])
    assert node.get("queue") == 7 and node.get("name") == "n"
    assert node.max_version == 6
    assert node.get("missing", "default") == "default"


@DETERMINISTIC
@given(node_states("a"), node_states("a"))
def test_node_merge_commutes(a: NodeState, b: NodeState) -> None:
    assert canon_node(a.merge(b)) == canon_node(b.merge(a))


@DETERMINISTIC
@given(node_states("a"), node_states("a"), node_states("a"))
def test_node_merge_associates(a: NodeState, b: NodeState, c: NodeState) -> None:
    assert canon_node(a.merge(b).merge(c)) == canon_node(a.merge(b.merge(c)))


@DETERMINISTIC
@given(node_states("a"), node_states("a"))
def test_node_merge_is_idempotent_and_an_upper_bound(a: NodeState, b: NodeState) -> None:
    assert canon_node(a.merge(a)) == canon_node(a)
    joined = a.merge(b)
    assert canon_node(joined.merge(a)) == canon_node(joined)
    assert canon_node(joined.merge(b)) == canon_node(joined)
    assert joined.max_version == max((v.version for v in joined.kvs.values()), default=0)


@DETERMINISTIC
@given(node_states("a"), node_states("a"))
def test_node_merge_of_one_generation_keeps_every_newest_key(a: NodeState, b: NodeState) -> None:
    b.generation = a.generation
    joined = a.merge(b)
    assert joined.heartbeat == max(a.heartbeat, b.heartbeat)
    assert joined.kvs.keys() == a.kvs.keys() | b.kvs.keys()
    for key, item in joined.kvs.items():
        versions = [s.kvs[key].version for s in (a, b) if key in s.kvs]
        assert item.version == max(versions)


@DETERMINISTIC
@given(node_states("a"), node_states("a"))
def test_higher_generation_supersedes(a: NodeState, b: NodeState) -> None:
    b.generation = a.generation + 1
    # Whatever the old generation held (more keys, higher versions, a later heartbeat),
    # the restarted node's state replaces it wholesale.
    assert canon_node(a.merge(b)) == canon_node(b)
    assert canon_node(b.merge(a)) == canon_node(b)


def test_same_version_collision_is_resolved_the_same_way_on_both_sides() -> None:
    a = NodeState("a", 1, kvs={"queue": Versioned(1, 3)})
    b = NodeState("a", 1, kvs={"queue": Versioned(2, 3)})
    assert a.merge(b).get("queue") == b.merge(a).get("queue") == 2


# ------------------------------------------------------------------ ClusterState.merge


@DETERMINISTIC
@given(cluster_states, cluster_states)
def test_cluster_merge_commutes(a: ClusterState, b: ClusterState) -> None:
    assert canon(a.merge(b)) == canon(b.merge(a))


@DETERMINISTIC
@given(cluster_states, cluster_states, cluster_states)
def test_cluster_merge_associates(a: ClusterState, b: ClusterState, c: ClusterState) -> None:
    assert canon(a.merge(b).merge(c)) == canon(a.merge(b.merge(c)))


@DETERMINISTIC
@given(cluster_states, cluster_states)
def test_cluster_merge_is_idempotent(a: ClusterState, b: ClusterState) -> None:
    assert canon(a.merge(a)) == canon(a)
    joined = a.merge(b)
    assert canon(joined.merge(joined)) == canon(joined)
    assert canon(joined.merge(a)) == canon(joined)


@DETERMINISTIC
@given(cluster_states, cluster_states)
def test_cluster_merge_respects_tombstones_and_copies(a: ClusterState, b: ClusterState) -> None:
    before = canon(a), canon(b)
    joined = a.merge(b)
    for node_id, node in joined.nodes.items():
        assert not joined.is_forgotten(node_id, node.generation)
    for node_id in a.forgotten.keys() | b.forgotten.keys():
        assert joined.forgotten[node_id] == max(
            a.forgotten.get(node_id, -1), b.forgotten.get(node_id, -1)
        )
    # The result shares no mutable state with its inputs.
    for node in joined:
        node.heartbeat += 100
        node.set("x", object())
    assert (canon(a), canon(b)) == before


# ------------------------------------------------------------------ digest / delta


@DETERMINISTIC
@given(cluster_states, cluster_states, st.integers(min_value=1, max_value=4), st.randoms())
def test_delta_is_a_budgeted_prefix_of_what_the_digest_lacks(
    mine: ClusterState, theirs: ClusterState, max_kvs: int, rng: random.Random
) -> None:
    digest = theirs.digest()
    known = {d.id: d for d in digest}
    delta = mine.delta_for(digest, max_kvs, rng)
    assert sum(len(nd.kvs) for nd in delta) <= max_kvs
    assert len({nd.id for nd in delta}) == len(delta)
    for nd in delta:
        node = mine.nodes[nd.id]
        assert (nd.gen, nd.hb) == (node.generation, node.heartbeat)
        d = known.get(nd.id)
        assert d is None or d.gen < node.generation or d.maxv < node.max_version
        since = d.maxv if d is not None and d.gen == node.generation else 0
        # Oldest first and without gaps: the receiver's max version can safely jump to
        # the last one sent.
        assert nd.kvs == node.newer_than(since)[: len(nd.kvs)]
    if not delta:
        # Nothing sent: either the digest holds everything or some budget is spent.
        for node in mine:
            d = known.get(node.node_id)
            assert d is not None
            assert d.gen > node.generation or (
                d.gen == node.generation and d.maxv >= node.max_version
            )


@dataclass
class Owner:
    """A node and the log of everything it ever wrote, to check the replicas against."""

    node_id: str
    generation: int = 1
    state: NodeState = field(init=False)
    log: dict[tuple[int, int], tuple[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = NodeState(self.node_id, self.generation)

    def write(self, key: str, value: Any) -> None:
        if self.state.set(key, value):
            self.log[(self.generation, self.state.max_version)] = (key, value)

    def restart(self) -> None:
        self.generation += 1
        self.state = NodeState(self.node_id, self.generation)


def pull(into: ClusterState, source: ClusterState, max_kvs: int, rng: random.Random) -> int:
    """``into`` sends its digest, ``source`` answers with a delta; kvs transferred."""
    moved = 0
    for nd in source.delta_for(into.digest(), max_kvs, rng):
        into.apply_delta(nd)
        moved += len(nd.kvs)
    return moved


operations = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 2), st.sampled_from(KEYS), values),
        st.tuples(st.just("beat"), st.integers(0, 2)),
        st.tuples(st.just("restart"), st.integers(0, 2)),
        st.tuples(st.just("pull"), st.integers(0, 2), st.integers(0, 2), st.integers(1, 3)),
    ),
    max_size=40,
)


def check_copies(owners: list[Owner], view: ClusterState) -> None:
    """What scuttlebutt guarantees of every copy at every moment, not only at the end."""
    for node in view:
        owner = next(o for o in owners if o.node_id == node.node_id)
        # Provenance: each key-value is exactly what the owner wrote at that version.
        for key, item in node.kvs.items():
            assert owner.log[(node.generation, item.version)] == (key, item.value)
        assert node.max_version == max((v.version for v in node.kvs.values()), default=0)
        assert node.generation <= owner.generation
        if node.generation == owner.generation:
            # No gaps: every key whose current version is at or below the copy's max
            # version is held at that version (what makes oldest-first truncation safe).
            for key, item in owner.state.kvs.items():
                if item.version <= node.max_version:
                    assert node.kvs.get(key) == item


@HISTORIES
@given(
    st.integers(min_value=2, max_value=3),
    operations,
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=0, max_value=2**32),
)
def test_digest_delta_exchanges_converge(
    n: int, ops: list[tuple[Any, ...]], max_kvs: int, seed: int
) -> None:
    """Two or three nodes, each writing only its own state, converge by anti-entropy.

    First a random history: owners write, beat, restart (losing their view), and pull
    from one another with small budgets, so copies are partial and truncated. Then
    digest -> delta both ways between every pair, with a budget of 1 to 3 key-values,
    until all views hold the same key-values and max versions.
    """
    rng = random.Random(seed)
    owners = [Owner(f"n{i}") for i in range(n)]
    views = [ClusterState({o.node_id: o.state}) for o in owners]
    for op in ops:
        i = op[1] % n
        if op[0] == "write":
            owners[i].write(op[2], op[3])
        elif op[0] == "beat":
            owners[i].state.heartbeat += 1
        elif op[0] == "restart":
            owners[i].restart()
            views[i] = ClusterState({owners[i].node_id: owners[i].state})  # a reboot forgets
        elif i != op[2] % n:
            pull(views[i], views[op[2] % n], op[3], rng)
            check_copies(owners, views[i])

    # Bound: while views differ, every round moves at least one key-value or one
    # (node, generation) into some view, and there are at most this many to move.
    bound = n * sum(1 + len(o.state.kvs) for o in owners)
    rounds = 0
    while not all(_same(views[0], other) for other in views[1:]):
        assert rounds < bound, f"no convergence after {rounds} rounds (bound {bound})"
        rounds += 1
        for i, a in enumerate(views):
            for b in views[i + 1 :]:
                pull(a, b, max_kvs, rng)  # digest -> delta, both ways
                pull(b, a, max_kvs, rng)
                check_copies(owners, a)
                check_copies(owners, b)
    for view in views:
        # Everybody holds every owner's current state verbatim (heartbeats aside: they
        # travel in digests, not deltas).
        assert {n.node_id: canon_kvs(n) for n in view} == {
            o.node_id: canon_kvs(o.state) for o in owners
        }
    # Once converged, an exchange has nothing to send.
    for a in views:
        for b in views:
            if a is not b:
                assert a.delta_for(b.digest(), max_kvs, rng) == []


def canon_kvs(node: NodeState) -> tuple[int, int, dict[str, tuple[Any, int]]]:
    generation, _heartbeat, max_version, kvs = canon_node(node)
    return generation, max_version, kvs


def _same(a: ClusterState, b: ClusterState) -> bool:
    """Equal key-values, generations and max versions (heartbeats travel in digests)."""
    return {i: canon_kvs(x) for i, x in a.nodes.items()} == {
        i: canon_kvs(y) for i, y in b.nodes.items()
    }


def test_truncated_exchanges_converge_on_a_large_state() -> None:
    """A node with 50 key-values reaches a new peer through a 3-kv budget in 17 pulls."""
    rng = random.Random(7)
    owner = NodeState("big", 1)
    for i in range(50):
        owner.set(f"k{i}", i)
    for i in range(0, 50, 7):
        owner.set(f"k{i}", -i)  # overwritten keys: their versions move up
    source = ClusterState({"big": owner})
    sink = ClusterState()
    pulls = 0
    while pull(sink, source, 3, rng):
        pulls += 1
        assert pulls <= 50
    assert pulls == 17  # ceil(50 / 3)
    assert _same(sink, source)


# ------------------------------------------------------------------ tombstones


def test_forget_records_the_generation() -> None:
    state = ClusterState({"a": NodeState("a", 3)})
    state.forget("a")
    state.forget("a")  # already gone: no change
    state.forget("never-seen")
    assert state.nodes == {} and state.forgotten == {"a": 3}
    assert state.is_forgotten("a", 3) and state.is_forgotten("a", 1)
    assert not state.is_forgotten("a", 4) and not state.is_forgotten("b", 0)


@DETERMINISTIC
@given(
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=0, max_value=5),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=0, max_value=9),
    st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=4),
)
def test_forgotten_generation_is_never_resurrected(
    generation: int, older_by: int, newer_by: int, stale_hb: int, kvs: list[tuple[str, Any]]
) -> None:
    node = NodeState("z", generation)
    for key, value in kvs:
        node.set(key, value)
    node.heartbeat = 9
    state = ClusterState({"z": node.copy()})
    state.forget("z")

    # Old gossip: that generation or an older one, with a heartbeat no later than the one
    # we had (what a peer that has not forgotten the dead node yet still holds) but
    # possibly more or newer key-values.
    stale_gen = max(0, generation - older_by)
    stale = NodeDelta("z", stale_gen, stale_hb, [KV("status", "alive", 10**6)])
    assert state.apply_delta(stale) == (None, False)
    peer = ClusterState({"z": NodeState("z", stale_gen, stale_hb, {"queue": Versioned(1, 99)})})
    for merged in (state.merge(peer), peer.merge(state)):
        assert "z" not in merged.nodes
    # The forgotten node's old state keeps being offered by a peer that still holds it
    # (our digest lacks it), and keeps being refused.
    for nd in peer.delta_for(state.digest(), 4096, random.Random(0)):
        assert state.apply_delta(nd) == (None, False)
    assert "z" not in state.nodes

    # A restart (a newer generation) is a new node and is accepted, tombstone or not.
    fresh = NodeDelta("z", generation + newer_by, 1, [KV("status", "alive", 1)])
    applied, advanced = state.apply_delta(fresh)
    assert applied is not None and advanced
    assert (applied.generation, applied.get("status")) == (generation + newer_by, "alive")
    assert state.nodes["z"] is applied
    newer = ClusterState({"z": NodeState("z", generation + newer_by, 0, {})})
    assert newer.merge(ClusterState(forgotten={"z": generation})).nodes.keys() == {"z"}
    # ... and the old generation still cannot come back over it.
    assert state.apply_delta(stale) == (None, False)
    assert state.nodes["z"].generation == generation + newer_by


def test_apply_delta_reports_heartbeat_progress_and_refuses_older_generations() -> None:
    state = ClusterState()
    node, advanced = state.apply_delta(NodeDelta("a", 2, 5, [KV("queue", 1, 1)]))
    assert node is not None and advanced and node.heartbeat == 5
    node, advanced = state.apply_delta(NodeDelta("a", 2, 5, []))
    assert node is not None and not advanced
    node, advanced = state.apply_delta(NodeDelta("a", 2, 4, [KV("queue", 2, 2)]))
    assert node is not None and not advanced and node.heartbeat == 5 and node.get("queue") == 2
    assert state.apply_delta(NodeDelta("a", 1, 50, [KV("queue", 3, 9)])) == (None, False)
    assert state.nodes["a"].generation == 2 and state.nodes["a"].get("queue") == 2
