"""The phi-accrual failure detector with suspicion, on a fake clock.

With the defaults (DetectorConfig()): a peer beating every 0.2 s has a measured mean of
0.2 s and a deviation of ~0, floored to min_std_s = 0.1; the acceptable pause of 0.3 s
moves the mean to 0.5 s. phi crosses the threshold 8 where the normal approximation
y * (1.5976 + 0.070566 * y^2) / ln(10) = 8, i.e. y ~ 5.22 deviations past that mean:
suspect ~1.02 s after the last heartbeat, dead suspicion_s = 1.0 s later.
"""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from swarmd.core.failure import DetectorConfig, FailureDetector, Liveness, phi

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=200)
STEP = 0.01  # resolution of the fake clock when looking for a transition


def beat_regularly(
    detector: FailureDetector, peer: str, start: float, n: int, every: float
) -> float:
    """``n`` heartbeats ``every`` seconds from ``start``; returns the time of the last one."""
    now = start
    for i in range(n):
        now = start + i * every
        detector.heartbeat(peer, now)
        assert detector.update(now) == []
    return now


def first_transition(
    detector: FailureDetector, start: float, limit: float = 30.0
) -> tuple[float, list[tuple[str, Liveness, Liveness]]]:
    """Tick the detector every STEP from ``start`` until something changes."""
    for i in range(1, int(limit / STEP)):
        now = start + i * STEP
        changes = detector.update(now)
        if changes:
            return now, changes
    raise AssertionError(f"no transition within {limit} s")


def suspicion_delay(intervals: list[float]) -> float:
    """Silence after the last of these heartbeat intervals until the peer is suspect."""
    detector = FailureDetector()
    now = 0.0
    detector.heartbeat("p", now)
    for interval in intervals:
        now += interval
        detector.heartbeat("p", now)
    when, changes = first_transition(detector, now)
    assert changes == [("p", Liveness.ALIVE, Liveness.SUSPECT)]
    return when - now


def test_expected_suspicion_point_of_the_defaults() -> None:
    """The module docstring's arithmetic, against the phi function itself."""
    cfg = DetectorConfig()
    mean, std = 0.2 + cfg.acceptable_pause_s, cfg.min_std_s
    assert phi(1.00, mean, std) < cfg.phi_threshold < phi(1.05, mean, std)
    assert math.isclose(phi(mean, mean, std), math.log10(2))  # even odds at the mean


def test_regular_heartbeats_keep_a_peer_alive_with_low_phi() -> None:
    detector = FailureDetector()
    for i in range(500):  # 100 s of heartbeats every 0.2 s
        now = i * 0.2
        detector.heartbeat("p", now)
        assert detector.update(now) == []
        # Half way to the next heartbeat, and even at a whole interval of silence on top,
        # the peer is far from suspicion.
        assert detector.phi("p", now + 0.1) < 0.01
        assert detector.phi("p", now + 0.4) < 1.0
        assert detector.update(now + 0.1) == []
        assert detector.state("p") is Liveness.ALIVE
    assert detector.last_heartbeat("p") == now
    assert detector.since("p") == 0.0
    assert detector.phi("unknown", 5.0) == 0.0
    assert detector.state("unknown") is None


def test_silence_makes_a_peer_suspect_then_dead_on_schedule() -> None:
    cfg = DetectorConfig()
    detector = FailureDetector(cfg)
    last = beat_regularly(detector, "p", 0.0, 50, 0.2)

    suspect_at, changes = first_transition(detector, last)
    assert changes == [("p", Liveness.ALIVE, Liveness.SUSPECT)]
    # Expected ~1.02 s (module docstring); the window allows for the clock step.
    assert 0.98 <= suspect_at - last <= 1.06, suspect_at - last
    assert detector.state("p") is Liveness.SUSPECT
    assert detector.since("p") == suspect_at

    dead_at, changes = first_transition(detector, suspect_at)
    assert changes == [("p", Liveness.SUSPECT, Liveness.DEAD)]
    assert cfg.suspicion_s <= dead_at - suspect_at <= cfg.suspicion_s + STEP + 1e-9
    assert detector.state("p") is Liveness.DEAD
    # Nothing more happens to a dead peer.
    assert detector.update(dead_at + 1000.0) == []


def test_only_the_silent_peer_is_suspected() -> None:
    detector = FailureDetector()
    transitions = []
    for i in range(27):  # a gossip tick every 0.2 s, up to 5.2 s
        now = i * 0.2
        if i < 20:
            detector.heartbeat("quiet", now)  # last heartbeat at 3.8 s
        detector.heartbeat("chatty", now)
        transitions += [(now, *change) for change in detector.update(now)]
    # 1.02 s of silence needed: at 4.8 s (1.0 s) not yet, at 5.0 s (1.2 s) suspect;
    # dead suspicion_s (0.6 s) later at 5.6 s, after the last tick.
    assert len(transitions) == 1
    when, node, old, new = transitions[0]
    assert math.isclose(when, 5.0) and (node, old, new) == (
        "quiet",
        Liveness.ALIVE,
        Liveness.SUSPECT,
    )
    assert detector.state("chatty") is Liveness.ALIVE


def test_a_heartbeat_while_suspect_revives_and_keeps_the_history() -> None:
    detector = FailureDetector()
    last = beat_regularly(detector, "p", 0.0, 50, 0.2)
    suspect_at, _ = first_transition(detector, last)
    back = suspect_at + 0.5
    assert detector.heartbeat("p", back) is Liveness.SUSPECT  # the transition is reported
    assert detector.state("p") is Liveness.ALIVE
    assert detector.since("p") == back
    assert detector.update(back) == []
    # The long silence was recorded as an interval: the detector is now more patient.
    later = beat_regularly(detector, "p", back + 0.2, 10, 0.2)
    when, changes = first_transition(detector, later)
    assert changes == [("p", Liveness.ALIVE, Liveness.SUSPECT)]
    assert when - later > 1.2


def test_a_heartbeat_after_death_revives_with_a_fresh_history() -> None:
    detector = FailureDetector()
    last = beat_regularly(detector, "p", 0.0, 50, 0.2)
    suspect_at, _ = first_transition(detector, last)
    dead_at, _ = first_transition(detector, suspect_at)
    back = dead_at + 30.0  # a 30 s outage
    assert detector.heartbeat("p", back) is Liveness.DEAD
    assert detector.state("p") is Liveness.ALIVE
    assert (detector.since("p"), detector.last_heartbeat("p")) == (back, back)
    # With no interval yet the first-interval assumption applies: mean 0.5 s + 0.3 s pause,
    # deviation 0.125 s. The outage itself is not an interval, or phi would be ~0 here.
    cfg = DetectorConfig()
    expected = phi(1.5, cfg.first_interval_s + cfg.acceptable_pause_s, cfg.first_interval_s / 4)
    assert detector.phi("p", back + 1.5) == expected
    assert expected > cfg.phi_threshold
    # After regular beats again it is suspected exactly as fast as a fresh peer.
    later = beat_regularly(detector, "p", back + 0.2, 50, 0.2)
    when, _ = first_transition(detector, later)
    assert math.isclose(when - later, suspicion_delay([0.2] * 49), abs_tol=1e-6)


def test_a_fresh_peer_without_intervals_uses_the_first_interval_guess() -> None:
    detector = FailureDetector()
    detector.heartbeat("p", 10.0)
    when, changes = first_transition(detector, 10.0)
    assert changes == [("p", Liveness.ALIVE, Liveness.SUSPECT)]
    # mean 0.8 s, deviation 0.125 s: y ~ 5.22 -> ~1.45 s.
    assert 1.40 <= when - 10.0 <= 1.50


def test_mark_left_is_final_for_the_generation() -> None:
    detector = FailureDetector()
    beat_regularly(detector, "p", 0.0, 10, 0.2)
    assert detector.mark_left("p", 2.0)
    assert not detector.mark_left("p", 2.5)  # already left: no second transition
    assert detector.state("p") is Liveness.LEFT
    assert detector.since("p") == 2.0
    assert detector.heartbeat("p", 2.6) is None  # heartbeats of a left peer are ignored
    assert detector.state("p") is Liveness.LEFT
    assert detector.update(100.0) == []  # never suspected, never dead
    assert detector.state("p") is Liveness.LEFT

    assert detector.mark_left("stranger", 3.0)  # left before we ever heard a heartbeat
    assert detector.state("stranger") is Liveness.LEFT

    detector.reset("p", 50.0)  # a new generation of the node
    assert detector.state("p") is Liveness.ALIVE
    assert detector.since("p") == detector.last_heartbeat("p") == 50.0
    detector.remove("p")
    assert detector.state("p") is None


def test_jittery_peers_get_more_time() -> None:
    rng = random.Random(42)
    regular = suspicion_delay([0.2] * 100)
    # Same mean interval (0.2 s), deviation ~0.15 s.
    jittery = suspicion_delay([rng.choice((0.05, 0.35)) for _ in range(100)])
    # Mostly 0.1 s, but one gap in ten of 1 s: mean 0.19 s, deviation 0.27 s.
    bursty = suspicion_delay([0.1] * 90 + [1.0] * 10)
    assert 0.98 <= regular <= 1.06
    assert jittery > regular + 0.15
    assert bursty > jittery
    # The window forgets: after 100 regular intervals the old jitter no longer counts.
    assert math.isclose(
        suspicion_delay([rng.choice((0.05, 0.35)) for _ in range(100)] + [0.2] * 100),
        regular,
        abs_tol=STEP,
    )


def test_a_slow_regular_peer_does_not_overflow() -> None:
    """Heartbeats 3 s apart: phi right after one is ~0, not a math range error."""
    detector = FailureDetector()
    last = beat_regularly(detector, "p", 0.0, 20, 3.0)
    assert detector.phi("p", last + 0.01) == 0.0
    when, changes = first_transition(detector, last)
    assert changes == [("p", Liveness.ALIVE, Liveness.SUSPECT)]
    assert 3.8 <= when - last <= 3.9  # mean 3.0 + 0.3 s pause + ~5.22 * 0.1 s


@DETERMINISTIC
@given(
    st.lists(st.floats(min_value=0.0, max_value=5.0), max_size=120),
    st.lists(st.floats(min_value=0.0, max_value=60.0), min_size=2, max_size=10),
)
def test_phi_grows_with_silence(intervals: list[float], offsets: list[float]) -> None:
    detector = FailureDetector()
    now = 0.0
    detector.heartbeat("p", now)
    for interval in intervals:
        now += interval
        detector.heartbeat("p", now)
    values = [detector.phi("p", now + offset) for offset in sorted(offsets)]
    assert all(v >= 0.0 for v in values)
    assert values == sorted(values)


@DETERMINISTIC
@given(
    st.floats(min_value=0.0, max_value=100.0),
    st.floats(min_value=0.0, max_value=100.0),
    st.floats(min_value=0.0, max_value=10.0),
    st.floats(min_value=0.01, max_value=5.0),
)
def test_phi_function_is_monotonic(a: float, b: float, mean: float, std: float) -> None:
    lo, hi = sorted((a, b))
    assert 0.0 <= phi(lo, mean, std) <= phi(hi, mean, std)
