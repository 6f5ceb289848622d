"""Fixtures shared by the real-daemon tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Daemon


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test starts (append them): each is stopped at the end, pass or fail."""
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()
