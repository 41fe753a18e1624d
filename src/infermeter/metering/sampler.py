"""The window sampler: a background thread that reads the device every window (100 ms).

Per window it reads a ``SampleSource`` once (energy counter, SM / tensor / DRAM activity,
memory), and splits the window's energy and activity over requests through the step
shares the pipeline recorded (``record_step``), with ``windows.attribute_window``. Each
closed window goes to ``on_window`` (e.g. the window ledger), idle energy and gaps included
as the unattributed pool.

Timing. Windows are aligned to multiples of ``window_ms`` of the monotonic clock, and a
read is never sooner than ``min_activity_ms`` after the previous one (GPM needs >= 100 ms).
A window is attributed one tick after it closed, so a step that ended just before the edge
but was recorded just after it still counts in it.

Guards. A window's activities are rejected (and counted) when the window is shorter than
``min_activity_ms`` or, while steps ran, SM activity is 0 or NaN or DRAM activity is NaN:
GPM returns exactly those with a success code for windows that were too short. A rejected
window still meters energy (the counter is independent of GPM) but no weighted ms. A
counter that went backwards (driver reload) yields an energy-less window, also counted.

Threads: ``record_step`` may be called from any thread (the worker's); everything else runs
on the sampler thread, or on the caller's in tests that drive ``poll()``/``flush()``.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from infermeter.core.records import StepShares
from infermeter.metering.sources import Sample, SampleSource
from infermeter.metering.windows import WindowAttribution, attribute_window

log = logging.getLogger(__name__)

NS_PER_MS = 1_000_000
RING_SIZE = 1 << 16
IDLE_HISTORY = 32

SHORT = "short"  # window under min_activity_ms: GPM values are not trustworthy
ZERO_OR_NAN = "zero_or_nan"  # steps ran, yet SM activity read 0/NaN or DRAM NaN
COUNTER_RESET = "counter_reset"  # the energy counter went backwards
NO_ACTIVITY = "no_activity"  # the source has no activity counters (not a rejection)


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A closed window: its attribution, the raw readings, and whether the guards passed."""

    attribution: WindowAttribution
    sm_activity: float | None
    tensor_activity: float | None
    dram_activity: float | None
    memory_used_mb: int | None
    valid: bool  # activities passed every guard and were used for weighted ms
    reason: str | None  # SHORT | ZERO_OR_NAN | COUNTER_RESET | NO_ACTIVITY | None
    steps: int  # steps that overlapped the window
    source: str


@dataclass(slots=True)
class SamplerStats:
    """Counters an operator sees (``/metrics``, the GPU check's table)."""

    windows: int = 0
    valid: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    no_activity: int = 0
    read_errors: int = 0
    publish_errors: int = 0
    dropped_steps: int = 0  # the step ring was full
    energy_mj: int = 0
    attributed_energy_mj: int = 0
    unattributed_energy_mj: int = 0


class WindowSampler:
    """Reads ``source`` once per window on its own thread and publishes ``ClosedWindow``s."""

    def __init__(
        self,
        source: SampleSource,
        on_window: Callable[[ClosedWindow], None] | None = None,
        *,
        window_ms: int = 100,
        min_activity_ms: int = 100,
        idle_power_mw: int | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        ring_size: int = RING_SIZE,
    ) -> None:
        """``idle_power_mw``: fixed idle power; None uses the source's hint, else learns it
        as the median power of recent windows in which no step ran."""
        if window_ms < 1 or min_activity_ms < 0:
            raise ValueError(
                f"window_ms={window_ms} must be >= 1 and min_activity_ms={min_activity_ms} "
                ">= 0 (GPM needs windows of at least 100 ms)"
            )
        self.source = source
        self.on_window = on_window
        self.window_ns = window_ms * NS_PER_MS
        self.min_activity_ns = min_activity_ms * NS_PER_MS
        fixed = idle_power_mw if idle_power_mw is not None else source.idle_power_mw
        self._idle_fixed = fixed
        self._idle_seen: deque[int] = deque(maxlen=IDLE_HISTORY)
        self._clock = clock
        self._ring: deque[tuple[int, int, StepShares]] = deque()
        self._ring_size = ring_size
        self._lock = threading.Lock()
        self._prev: Sample | None = None
        self._pending: tuple[Sample, Sample] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.stats = SamplerStats()

    # the request path (any thread): O(1), no device access ------------------------------
    def record_step(self, start_ns: int, end_ns: int, shares: StepShares) -> None:
        """Remember a step's wall-clock span and shares for the windows it overlaps."""
        with self._lock:
            if len(self._ring) >= self._ring_size:
                self._ring.popleft()
                self.stats.dropped_steps += 1
            self._ring.append((start_ns, end_ns, shares))

    # the sampler thread -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="window-sampler", daemon=True)
        self._thread.start()

    def stop(self, *, flush: bool = True, timeout: float = 5.0) -> None:
        """Stop the thread; with ``flush`` take a last reading and publish pending windows."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout)
        if self._closed:
            return
        if flush:
            self.poll()
            self.flush()
        self._closed = True
        self.source.close()

    @property
    def idle_power_mw(self) -> int:
        """The idle power the next window subtracts before attributing energy."""
        if self._idle_fixed is not None:
            return self._idle_fixed
        return int(statistics.median(self._idle_seen)) if self._idle_seen else 0

    def _run(self) -> None:
        if self._prev is None:
            self.poll()  # the first window starts now, not at the next boundary
        while not self._stop.is_set():
            now = self._clock()
            wait_ns = (now // self.window_ns + 1) * self.window_ns - now
            prev = self._prev
            if prev is not None:  # never read sooner than GPM's minimum after the last read
                wait_ns = max(wait_ns, prev.timestamp_ns + self.min_activity_ns - now)
            if self._stop.wait(wait_ns / 1e9):
                return
            self.poll()

    def poll(self) -> list[ClosedWindow]:
        """Read the source once; attribute and publish the window that closed one tick ago."""
        try:
            sample = self.source.read()
        except Exception:  # a failed read skips a tick; the next window spans the gap
            self.stats.read_errors += 1
            log.exception("sampler source %s failed to read", self.source.name)
            return []
        closed = self.flush()
        if self._prev is not None:
            self._pending = (self._prev, sample)
        self._prev = sample
        return closed

    def flush(self) -> list[ClosedWindow]:
        """Attribute and publish the pending window, if any (``stop`` calls this)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return []
        window = self._close(*pending)
        if self.on_window is not None:
            try:
                self.on_window(window)
            except Exception:
                self.stats.publish_errors += 1
                log.exception("publishing window %d failed", window.attribution.window_start_ns)
        return [window]

    def _close(self, first: Sample, last: Sample) -> ClosedWindow:
        start, end = first.timestamp_ns, last.timestamp_ns
        with self._lock:
            steps = [s for s in self._ring if s[0] < end and s[1] >= start]
            while self._ring and self._ring[0][1] < end:
                self._ring.popleft()
        ran = len(steps)
        delta = last.energy_mj - first.energy_mj
        reason: str | None = None
        if delta < 0:
            reason, delta = COUNTER_RESET, 0
        sm, dram = last.sm_activity, last.dram_activity
        if sm is None and dram is None:
            reason = reason or NO_ACTIVITY
        elif end - start < self.min_activity_ns:
            reason = reason or SHORT
            sm = dram = None
        elif ran and (sm is None or math.isnan(sm) or sm == 0.0 or dram is None or math.isnan(dram)):
            reason = reason or ZERO_OR_NAN
            sm = dram = None
        if sm is not None and math.isnan(sm):
            sm = None  # idle window: NaN carries no activity, and none is needed
        if dram is not None and math.isnan(dram):
            dram = None
        idle = self.idle_power_mw
        attribution = attribute_window(start, end, delta, idle, steps, sm, dram)
        if not ran and reason != COUNTER_RESET and end > start:
            self._idle_seen.append(delta * 1_000_000_000 // (end - start))  # mJ/ns -> mW
        valid = reason is None
        self._count(attribution, reason)
        return ClosedWindow(
            attribution,
            last.sm_activity,
            last.tensor_activity,
            last.dram_activity,
            last.memory_used_mb,
            valid,
            reason,
            ran,
            self.source.name,
        )

    def _count(self, attribution: WindowAttribution, reason: str | None) -> None:
        s = self.stats
        s.windows += 1
        s.energy_mj += attribution.energy_mj
        s.unattributed_energy_mj += attribution.unattributed_energy_mj
        s.attributed_energy_mj += attribution.energy_mj - attribution.unattributed_energy_mj
        if reason is None:
            s.valid += 1
        elif reason == NO_ACTIVITY:
            s.no_activity += 1
        else:
            s.rejected += 1
            s.rejected_by_reason[reason] = s.rejected_by_reason.get(reason, 0) + 1


__all__ = [
    "COUNTER_RESET",
    "NO_ACTIVITY",
    "SHORT",
    "ZERO_OR_NAN",
    "ClosedWindow",
    "Sample",
    "SampleSource",
    "SamplerStats",
    "WindowSampler",
]
