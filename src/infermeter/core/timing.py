"""The step-timer seam between runtime (which runs steps) and metering (which times them).

An engine calls ``begin()`` just before it launches a step's work and ``end()`` just after,
then ``elapsed_us()`` once its own result sync has happened. A GPU timer records CUDA events
on the engine's stream and reads them at that sync; it never synchronizes for metering.
"""

from __future__ import annotations

import time
from typing import Protocol


class StepTimer(Protocol):
    def begin(self) -> None: ...

    def end(self) -> None: ...

    def elapsed_us(self) -> int:
        """Device time of the last begin/end pair in integer microseconds (after the step's sync)."""
        ...


class NullTimer:
    """Metering off: records nothing (used by the metering-overhead benchmark)."""

    def begin(self) -> None:
        return None

    def end(self) -> None:
        return None

    def elapsed_us(self) -> int:
        return 0


class WallTimer:
    """The wall time of the last begin/end pair, in integer microseconds.

    The CPU step timer (``metering.timers.CpuStepTimer``) is this; the engine builders'
    speed gates time steps with it too.
    """

    __slots__ = ("_elapsed_ns", "_start")

    def __init__(self) -> None:
        self._start = 0
        self._elapsed_ns = 0

    def begin(self) -> None:
        self._start = time.perf_counter_ns()

    def end(self) -> None:
        self._elapsed_ns = time.perf_counter_ns() - self._start

    def elapsed_us(self) -> int:
        return self._elapsed_ns // 1000
