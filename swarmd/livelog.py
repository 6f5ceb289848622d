"""Running shell subtasks' output as the coordinator hears it, for `swarmctl logs -f`.

Workers send a running shell attempt's new stdout/stderr bytes with a stream offset in
their ``progress`` messages; this keeps the last ``limit`` bytes of each stream of the
latest attempt of each subtask. Chunks may arrive twice (offsets make that harmless) or
after a gap (a progress message the worker could not send: it does not send it again).
At a gap the live stream stops: a follower gets what came before it now, and the rest
from the attempt's result once it ended (``swarmctl logs -f`` reads on from its offset),
never a stream with a hole in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.messages import Progress

LIMIT_BYTES = 1024 * 1024  # kept per stream, as the worker keeps for the result


@dataclass(slots=True)
class Stream:
    """The last bytes of one stream, and the offset of the first of them."""

    limit: int = LIMIT_BYTES
    first: int = 0
    data: bytearray = field(default_factory=bytearray)
    broken: bool = False  # a gap came: nothing more is kept (the result has it all)

    @property
    def end(self) -> int:
        return self.first + len(self.data)

    def add(self, at: int, chunk: bytes) -> None:
        if self.broken or at > self.end:  # a gap: what lay between is lost here
            self.broken = True
            return
        skip = self.end - at  # already have the start of it
        if skip < len(chunk):
            self.data += chunk[skip:]
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.first += excess

    def since(self, offset: int) -> tuple[int, bytes]:
        start = min(max(offset, self.first), self.end)
        return start, bytes(self.data[start - self.first :])


@dataclass(slots=True)
class _Log:
    attempt: int
    out: Stream = field(default_factory=Stream)
    err: Stream = field(default_factory=Stream)


class LiveLogs:
    def __init__(self) -> None:
        self._logs: dict[tuple[str, str], _Log] = {}

    def take(self, m: Progress) -> bool:
        """Keep the output a progress message carries; whether it carried any."""
        if not m.out and not m.err:
            return False
        key = (m.task, m.subtask)
        log = self._logs.get(key)
        if log is None or m.attempt > log.attempt:
            log = self._logs[key] = _Log(m.attempt)  # a new attempt starts over
        elif m.attempt < log.attempt:
            return False  # an older attempt's late output
        log.out.add(m.out_at, m.out)
        log.err.add(m.err_at, m.err)
        return True

    def read(
        self, task: str, subtask: str, out_at: int, err_at: int
    ) -> tuple[int, bytes, int, bytes]:
        """(out offset, out bytes, err offset, err bytes) from the given offsets on."""
        log = self._logs.get((task, subtask))
        if log is None:
            return out_at, b"", err_at, b""
        return (*log.out.since(out_at), *log.err.since(err_at))

    def drop(self, task: str, subtask: str, attempt: int) -> None:
        """That attempt ended: its result holds its output from now on (a later
        attempt's output is kept)."""
        log = self._logs.get((task, subtask))
        if log is not None and log.attempt <= attempt:
            del self._logs[(task, subtask)]

    def forget(self, task: str) -> None:
        for key in [k for k in self._logs if k[0] == task]:
            del self._logs[key]
