"""Step timers. CPU: wall time of the step under serialized execution.

ONNX Runtime's intra-op threads make the calling thread's CPU time undercount, and the
worker runs one step at a time, so the step's wall-clock interval is the device time the
step occupied. The GPU timer (CUDA events on the engine's stream) lives in ``cuda_timer``.
"""

from __future__ import annotations

from infermeter.core.timing import WallTimer


class CpuStepTimer(WallTimer):
    """begin/end around the step's launch; ``elapsed_us`` in integer microseconds."""

    __slots__ = ()
