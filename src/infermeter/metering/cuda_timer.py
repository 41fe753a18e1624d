"""The GPU step timer: a pair of pooled CUDA events around each step on the engine's stream.

Contract (the StepTimer protocol, ``core.timing``):

- ``begin()`` records a start event on the engine's stream just before the step's work is
  enqueued, ``end()`` records the end event just after. Both are asynchronous: they enqueue
  a marker and return (a few µs of CPU).
- ``elapsed_us()`` is valid only **after the engine's own sync point** for that step (e.g.
  the logits ``.cpu()`` copy, which waits for everything enqueued before it on the stream).
  It then reads ``start.elapsed_time(end)`` (ms, float, ~0.5 µs resolution) and returns
  integer µs. The timer never calls ``synchronize()``: metering adds no sync. Called too
  early, it raises ``EngineError`` instead of blocking (``event.query()`` does not block).
- Elapsed time covers everything enqueued on the stream between the two events, so an
  engine must keep one compute stream and record around CUDA-graph launches, not inside.

Events are pooled (created once, reused round-robin), so a step allocates nothing; with
``pool_size`` >= 2 an engine may begin the next step before it harvests the previous one
(``elapsed_us_of``). PyTorch is imported lazily: the rest of infermeter runs without it.
"""

from __future__ import annotations

import importlib
from typing import Any

from infermeter.core.errors import ConfigError, EngineError


def import_torch() -> Any:
    """``torch``, or a ConfigError that names the extra to install."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise ConfigError(
            "the CUDA step timer needs PyTorch: pip install 'infermeter[torch]' "
            "(or use the CPU engine and its wall-clock step timer)"
        ) from exc


class CudaEventTimer:
    """StepTimer over pooled ``torch.cuda.Event(enable_timing=True)`` pairs on one stream."""

    __slots__ = ("_events", "_last", "_next", "_open", "_stream", "pool_size")

    def __init__(self, stream: Any | None = None, pool_size: int = 4) -> None:
        """``stream``: the engine's ``torch.cuda.Stream`` (None: the current stream now)."""
        if pool_size < 1:
            raise ValueError(f"pool_size={pool_size} must be >= 1 (4 is plenty)")
        torch = import_torch()
        if not torch.cuda.is_available():
            raise ConfigError(
                "CudaEventTimer needs a CUDA device, and torch.cuda.is_available() is False; "
                "use the CPU step timer (metering.timers.CpuStepTimer)"
            )
        self._stream = stream if stream is not None else torch.cuda.current_stream()
        self.pool_size = pool_size
        self._events: list[tuple[Any, Any]] = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(pool_size)
        ]
        self._next = 0  # the pair the next begin() uses
        self._open: int | None = None  # pair begun and not yet ended
        self._last: int | None = None  # pair of the last completed begin/end

    def begin(self) -> None:
        """Record the start event of a new step (its slot is then ``current_slot``)."""
        slot = self._next
        self._next = (slot + 1) % self.pool_size
        self._events[slot][0].record(self._stream)
        self._open = slot

    @property
    def current_slot(self) -> int | None:
        """The slot of the step begun last (for ``elapsed_us_of``); None before any begin."""
        return self._open if self._open is not None else self._last

    def end(self) -> None:
        """Record the end event of the step begun last."""
        if self._open is None:
            raise EngineError("CudaEventTimer.end() without begin(); call begin() first")
        self._events[self._open][1].record(self._stream)
        self._last, self._open = self._open, None

    def ready(self) -> bool:
        """True when the last step's end event has completed (non-blocking query)."""
        return self._last is not None and bool(self._events[self._last][1].query())

    def elapsed_us(self) -> int:
        """Device µs of the last begin/end pair; call after the step's own sync."""
        if self._last is None:
            raise EngineError("CudaEventTimer.elapsed_us() before any begin()/end() pair")
        return self.elapsed_us_of(self._last)

    def elapsed_us_of(self, slot: int) -> int:
        """Device µs of the pair in ``slot`` (``current_slot`` after its begin), once it completed.

        Reusing a slot (``pool_size`` begins later) overwrites it: harvest before then.
        """
        start, end = self._events[slot]
        if not end.query():
            raise EngineError(
                "CUDA step timer read before the step finished: call elapsed_us() after the "
                "engine's own sync point (e.g. the logits .cpu() copy); the timer never "
                "synchronizes for metering"
            )
        ms = float(start.elapsed_time(end))
        return max(0, round(ms * 1000))


__all__ = ["CudaEventTimer", "import_torch"]
