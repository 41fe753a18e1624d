"""Step timers. CPU: wall time of the step under serialized execution.

ONNX Runtime's intra-op threads make the calling thread's CPU time undercount, and the
worker runs one step at a time, so the step's wall-clock interval is the device time the
step occupied. The GPU timer (CUDA events on the engine's stream) lives in ``cuda_timer``.
"""

from __future__ import annotations

import time


class CpuStepTimer:
    """begin/end around the step's launch; ``elapsed_us`` in integer microseconds."""

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
