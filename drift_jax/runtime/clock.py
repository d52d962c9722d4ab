"""Seconds of work a stage's outputs hold, summed over the attempts that resumed it after a preemption.

A stage that is stopped (preemption, kill -9, a lost machine) and rerun resumes from what it saved: trainer
checkpoints, rollout shards, online RL checkpoints. Its cost is the time of every attempt up to the last
thing that attempt saved, plus the last attempt's time, not the last attempt's alone. So:

- `Stages.run` measures each stage on a `Clock` (`measuring()`), and reports `clock.elapsed()`.
- Code that saves resumable work stores `current().elapsed()` with it (the stage's seconds so far).
- Code that restores such work calls `current().resumed(seconds)` with what was stored.

`elapsed()` is then the seconds of the earlier attempts up to their newest save (the largest value restored:
a value stored late in a stage holds everything before it) plus this attempt's. Work an attempt did after
its last save is done again and counted once, by the attempt that redoes it. Outside a stage, `current()`
is a clock started at the call, so a trainer used on its own stores and restores its own seconds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

_now = time.time  # tests replace it with a clock they advance


class Clock:
    def __init__(self) -> None:
        self.start = _now()
        self.earlier = 0.0  # seconds of earlier attempts, up to the newest save this attempt restored

    def elapsed(self) -> float:
        return self.earlier + (_now() - self.start)

    def resumed(self, seconds: float | None) -> None:
        """Restored work that took `seconds` of the stage's earlier attempts (None: saved before they were stored)."""
        self.earlier = max(self.earlier, float(seconds or 0.0))


_active: list[Clock] = []


@contextlib.contextmanager
def measuring() -> Iterator[Clock]:
    """A clock for the stage run inside; `current()` returns it there."""
    clock = Clock()
    _active.append(clock)
    try:
        yield clock
    finally:
        _active.remove(clock)


def current() -> Clock:
    """The running stage's clock, or outside a stage a clock started now."""
    return _active[-1] if _active else Clock()
