"""The coordinator's live output of running shell subtasks (swarmd/livelog.py)."""

from __future__ import annotations

from swarmd.livelog import Stream


def test_chunks_twice_or_overlapping_are_kept_once() -> None:
    s = Stream()
    s.add(0, b"line1\n")
    s.add(0, b"line1\n")
    s.add(3, b"e1\nline2\n")
    assert s.since(0) == (0, b"line1\nline2\n")
    assert s.since(6) == (6, b"line2\n")


def test_a_gap_stops_the_live_stream_instead_of_skipping_over_it() -> None:
    """A chunk the worker could not send is never sent again: a follower must not be
    moved past it (the line would be lost for it); it reads the rest from the result."""
    s = Stream()
    s.add(0, b"line1\n")
    s.add(12, b"line3\n")  # line2's chunk (6..12) never came
    s.add(6, b"line2\n")  # (nor is anything taken after the gap, even what fits)
    assert s.since(0) == (0, b"line1\n")
    assert s.since(6) == (6, b"")  # stays at the gap: nothing skipped


def test_only_the_last_limit_bytes_are_kept() -> None:
    s = Stream(limit=8)
    s.add(0, b"0123456789")
    assert s.since(0) == (2, b"23456789")  # trimmed on purpose: the result keeps as much
