"""How accurate is per-request attribution? Solo runs against the same requests batched.

1. Solo: each request runs alone (prefill, then one decode step per further token); its
   device time is the sum of its own steps (best of ``repeats``, to shed machine noise).
2. Batched: the same requests run together under continuous batching (request i joins at
   step i·``stagger``; every running request decodes each step while newcomers prefill).
   Every step's measured time is split by a cost model (``attribution.attribute``).
3. Per request: attributed batched device time against its solo time.

Two errors are reported. ``raw``: |attributed - solo| / solo; batching makes the whole work
cheaper than the solo runs, so this includes the batching discount and is not a fairness
measure. ``share``: |attributed/Σattributed - solo/Σsolo| / (solo/Σsolo), how far each
request's share of the batch departs from its share of the solo work: the fairness error
the ≤ 5 % goal refers to. Conservation error is Σ attributed + unattributed - Σ measured
step time, which must be exactly 0. The batched steps are recorded once and split with
every model compared, so "before" and "after" calibration see identical measurements.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from infermeter.core.records import Participant, StepRecord
from infermeter.metering.attribution import CostModel, attribute
from infermeter.metering.calibrate import StepRunner


class ThreadCpuTimer:
    """StepTimer reading the calling thread's CPU time: for the accuracy benchmark only.

    With ONNX Runtime on one intra-op thread every operator runs on the calling thread, so
    its CPU time is the step's compute time, and unlike wall time it does not grow when
    other processes preempt the thread on a shared machine. That keeps machine noise out
    of an *attribution* accuracy figure. The service itself meters wall time (timers.py).
    """

    __slots__ = ("_elapsed", "_start")

    def __init__(self) -> None:
        self._start = 0
        self._elapsed = 0

    def begin(self) -> None:
        self._start = time.thread_time_ns()

    def end(self) -> None:
        self._elapsed = time.thread_time_ns() - self._start

    def elapsed_us(self) -> int:
        return self._elapsed // 1000


@dataclass(frozen=True, slots=True)
class RequestSpec:
    request_id: str
    prompt: tuple[int, ...]
    new_tokens: int  # tokens generated: one from the prefill step, the rest from decode steps


def request_set(
    count: int, vocab: int, *, seed: int = 7, max_prompt: int = 96, max_new: int = 12
) -> list[RequestSpec]:
    """Deterministic requests with varied prompt lengths (8..max_prompt) and outputs."""
    specs = []
    for i in range(count):
        length = 8 + (i * 37 + seed * 11) % (max_prompt - 7)
        new = 2 + (i * 5 + seed) % (max_new - 1)
        prompt = tuple((seed + i * 13 + k * 7) % vocab for k in range(length))
        specs.append(RequestSpec(f"acc-{seed}-{i}", prompt, new))
    return specs


def solo_device_us(runner: StepRunner, specs: Sequence[RequestSpec], *, repeats: int = 3) -> dict[str, int]:
    """Each request alone: Σ over its steps of the step's median device µs over ``repeats``."""
    out: dict[str, int] = {}
    for spec in specs:
        per_step: list[list[int]] = [[] for _ in range(spec.new_tokens)]
        for r in range(repeats + 1):  # the first run warms the shapes up and is not counted
            sid = f"{spec.request_id}-solo{r}"
            times = [runner.run([(sid, spec.prompt)])]
            for k in range(spec.new_tokens - 1):
                times.append(runner.run([(sid, [(k + 1) % runner.vocab_size])]))
            runner.release(sid)
            if r:
                for slot, t in zip(per_step, times, strict=True):
                    slot.append(t)
        out[spec.request_id] = sum(int(statistics.median(slot)) for slot in per_step)
    return out


def batched_steps(
    runner: StepRunner, specs: Sequence[RequestSpec], *, stagger: int = 1, runs: int = 1
) -> list[StepRecord]:
    """The requests together under continuous batching: one schedule, run ``runs`` times
    (after one uncounted warm-up run); each step's device µs is its median over the runs."""
    measured: list[list[int]] = []
    schedule: list[tuple[Participant, ...]] = []
    for r in range(runs + 1):
        record = _batched_run(runner, specs, stagger, f"r{r}")
        if not schedule:
            schedule = [parts for parts, _ in record]
            measured = [[] for _ in record]
        if r:
            for slot, (_, t) in zip(measured, record, strict=True):
                slot.append(t)
    return [
        StepRecord(i + 1, "accuracy", "bench", int(statistics.median(times)), parts)
        for i, (parts, times) in enumerate(zip(schedule, measured, strict=True))
    ]


def _batched_run(
    runner: StepRunner, specs: Sequence[RequestSpec], stagger: int, tag: str
) -> list[tuple[tuple[Participant, ...], int]]:
    """One batched run; participants are named by request id, sequences by id and ``tag``."""
    steps: list[tuple[tuple[Participant, ...], int]] = []
    done: dict[str, int] = {}  # request id -> tokens generated so far
    context: dict[str, int] = {}
    step_no = 0
    pending = list(specs)
    running: list[RequestSpec] = []
    while pending or running:
        batch: list[tuple[str, Sequence[int]]] = []
        parts: list[Participant] = []
        for spec in running:
            rid = spec.request_id
            batch.append((f"{rid}-{tag}", [done[rid] % runner.vocab_size]))
            parts.append(Participant(rid, 0, context[rid], 1))
        while pending and step_no >= stagger * (len(specs) - len(pending)):
            spec = pending.pop(0)
            batch.append((f"{spec.request_id}-{tag}", spec.prompt))
            parts.append(Participant(spec.request_id, len(spec.prompt), 0, 0))
            running.append(spec)
            done[spec.request_id], context[spec.request_id] = 0, 0
        step_no += 1
        if not batch:
            continue
        steps.append((tuple(parts), runner.run(batch)))
        for part in parts:
            context[part.request_id] += part.new_tokens
            done[part.request_id] += 1
        for spec in [s for s in running if done[s.request_id] >= s.new_tokens]:
            running.remove(spec)
            runner.release(f"{spec.request_id}-{tag}")
    return steps


@dataclass(frozen=True, slots=True)
class AccuracyReport:
    model_version: str
    requests: int
    steps: int
    measured_us: int  # Σ batched step device µs
    attributed_us: int
    unattributed_us: int
    conservation_error_us: int  # attributed + unattributed - measured: must be 0
    solo_us: int  # Σ solo device µs
    raw_median: float  # |attributed - solo| / solo
    raw_p95: float
    share_median: float  # |attributed share - solo share| / solo share
    share_p95: float
    per_request: dict[str, tuple[int, int]]  # request id -> (attributed µs, solo µs)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]  # nearest rank


def evaluate(steps: Sequence[StepRecord], solo: dict[str, int], model: CostModel) -> AccuracyReport:
    """Split ``steps`` with ``model`` and compare each request's total with its solo time.

    Conservation (Σ attributed + unattributed - Σ measured) is computed in integers.
    """
    attributed: dict[str, int] = dict.fromkeys(solo, 0)
    unattributed = 0
    for step in steps:
        shares = attribute(step, model)
        unattributed += shares.unattributed_us
        for rid, part in shares.shares.items():
            attributed[rid] = attributed.get(rid, 0) + part
    measured = sum(s.device_us for s in steps)
    total_att = sum(attributed.values())
    total_solo = sum(solo.values())
    raw: list[float] = []
    share: list[float] = []
    for rid, s in solo.items():
        a = attributed[rid]
        raw.append(abs(a - s) / s if s else 0.0)
        ref = s / total_solo if total_solo else 0.0
        share.append(abs((a / total_att if total_att else 0.0) - ref) / ref if ref else 0.0)
    return AccuracyReport(
        model.version,
        len(solo),
        len(steps),
        measured,
        total_att,
        unattributed,
        total_att + unattributed - measured,
        total_solo,
        statistics.median(raw),
        _p95(raw),
        statistics.median(share),
        _p95(share),
        {rid: (attributed[rid], solo[rid]) for rid in solo},
    )


__all__ = [
    "AccuracyReport",
    "RequestSpec",
    "ThreadCpuTimer",
    "batched_steps",
    "evaluate",
    "request_set",
    "solo_device_us",
]
