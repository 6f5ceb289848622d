"""How a bad job is reported: :class:`JobError` (one line per problem) and the
:class:`Problems` collector that the readers and checks fill, sorted by subtask position."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

MAX_REPORTED: Final = 100  # problems spelt out in a JobError's message (all are in .errors)


class JobError(ValueError):
    """A bad job. ``str(err)`` reads ``subtask "plan": after: unknown subtask "lnt" ...``.

    A JobError raised by this module for several problems has one line per problem in
    its message and the single problems in ``errors``; for one problem ``errors`` is
    ``[err]`` itself. ``subtask`` is the id, or ``"#N"`` (1-based position in the file)
    for a subtask whose id is missing or invalid.
    """

    def __init__(
        self,
        message: str,
        subtask: str | None = None,
        key: str | None = None,
        *,
        source: str | None = None,
    ) -> None:
        self.message = message
        self.subtask = subtask
        self.key = key
        self.source = source
        self.errors: list[JobError] = [self]
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.source:
            parts.append(self.source)
        if self.subtask is not None:
            label = self.subtask
            parts.append(f"subtask {label}" if label.startswith("#") else f'subtask "{label}"')
        if self.key:
            parts.append(self.key)
        parts.append(self.message)
        return ": ".join(parts)

    @classmethod
    def combine(cls, errors: Sequence[JobError]) -> JobError:
        """One error for all of ``errors`` (itself when there is just one)."""
        if not errors:
            raise ValueError("no errors to combine")
        if len(errors) == 1:
            return errors[0]
        lines = [str(e) for e in errors[:MAX_REPORTED]]
        if len(errors) > MAX_REPORTED:
            lines.append(f"… and {len(errors) - MAX_REPORTED} more problems")
        combined = cls("\n".join(lines))
        combined.errors = list(errors)
        return combined


class Problems:
    """Problems found so far, each tagged with the position of its subtask for sorting."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        self._items: list[tuple[int, int, JobError]] = []

    def add(
        self, message: str, subtask: str | None = None, key: str | None = None, pos: int = -1
    ) -> None:
        err = JobError(message, subtask, key, source=self.source)
        self._items.append((pos, len(self._items), err))

    def __bool__(self) -> bool:
        return bool(self._items)

    def raise_if_any(self) -> None:
        if self._items:
            raise JobError.combine([e for _, _, e in sorted(self._items, key=lambda t: t[:2])])
