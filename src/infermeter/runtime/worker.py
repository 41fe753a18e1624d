"""The worker loop: the only thread that touches engines.

One worker per device. It owns one scheduler per engine and repeats
``schedule → engine.step → sample → scheduler.update``; every step becomes a StepRecord handed
to the metering sink, and every finished request a ``FinishedRequest`` handed to the sink,
which prices it, makes it durable and only then calls the request's ``on_finish``.

``flex`` work runs below ``default`` work: when several engines have work, an engine whose
requests are all ``flex`` gets a step only when no ``default`` engine has work, or once
every ``flex_every`` steps so it is never starved.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import numpy as np

from infermeter.core.records import Participant, StepRecord, utc_now
from infermeter.core.types import ServiceTier, Status
from infermeter.runtime.engine import Engine, EngineInfo, SeqInput
from infermeter.runtime.sampling import SamplingParams, sample
from infermeter.runtime.scheduler import Finished, FinishReason, Scheduler, SchedulerConfig, StepPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TokenEvent:
    text: str  # newly decoded text (may be empty while a UTF-8 sequence is incomplete)
    token_id: int


@dataclass(slots=True)
class GenerationRequest:
    """A request handed to the worker. Callbacks run on the worker (or store writer) thread."""

    request_id: str
    tenant_id: str
    model: str
    engine_id: str
    tier: ServiceTier
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    on_token: Callable[[TokenEvent], None] | None = None
    on_finish: Callable[[object], None] | None = None  # receives the durable record or an error
    arrived_ns: int = field(default_factory=time.monotonic_ns)
    arrived_at: datetime = field(default_factory=utc_now)
    first_step_ns: int | None = None
    output_text: str = ""
    emitted: int = 0  # characters of output_text already sent to on_token
    rng: np.random.Generator | None = None


@dataclass(frozen=True, slots=True)
class FinishedRequest:
    """What the metering sink needs to write a request's usage record."""

    request: GenerationRequest
    engine: EngineInfo
    status: Status
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    text: str
    queue_ms: int
    latency_ms: int
    started_at: datetime
    ended_at: datetime


class WorkerSink(Protocol):
    def on_step(self, step: StepRecord, kv_bytes: dict[str, int]) -> None: ...

    def on_finish(self, finished: FinishedRequest) -> None:
        """Price and persist; call ``finished.request.on_finish`` once the record is durable."""
        ...


class Tokenish(Protocol):
    def decode(self, ids: list[int]) -> str: ...


@dataclass(slots=True)
class _EngineSlot:
    engine: Engine
    tokenizer: Tokenish
    scheduler: Scheduler


class Worker:
    """Runs steps for the engines of one device on a single background thread."""

    def __init__(self, sink: WorkerSink, *, name: str = "worker", flex_every: int = 4) -> None:
        self._sink = sink
        self._slots: dict[str, _EngineSlot] = {}
        self._requests: dict[str, GenerationRequest] = {}
        self._inbox: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._step_id = 0
        self._flex_every = flex_every
        self._since_flex = 0
        self.steps = 0

    # set-up ---------------------------------------------------------------------
    def add_engine(self, engine: Engine, tokenizer: Tokenish, config: SchedulerConfig) -> None:
        self._slots[engine.info.engine_id] = _EngineSlot(engine, tokenizer, Scheduler(config))

    def engines(self) -> list[EngineInfo]:
        return [s.engine.info for s in self._slots.values()]

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # requests (any thread) ---------------------------------------------------
    def submit(self, request: GenerationRequest) -> None:
        if request.engine_id not in self._slots:
            raise KeyError(f"engine {request.engine_id!r} is not loaded on this worker")
        self._inbox.put(("submit", request))
        self._wake.set()

    def cancel(self, request_id: str) -> None:
        """The client went away: stop the request; it is billed for the work done."""
        self._inbox.put(("cancel", request_id))
        self._wake.set()

    def cancel_all(self, timeout: float = 10.0) -> int:
        """Cancel every request, running or waiting; each is billed for the work done.

        Returns once the worker has handed every one to the sink (or ``timeout`` passed);
        returns how many requests were in flight when it was asked. For shutdown and for a
        ledger that cannot append.
        """
        count = self.in_flight()
        done = threading.Event()
        self._inbox.put(("cancel_all", done))
        self._wake.set()
        if self._thread.is_alive():
            done.wait(timeout)
        return count

    def in_flight(self) -> int:
        return len(self._requests)

    def queue_depth(self) -> int:
        return sum(s.scheduler.num_waiting for s in self._slots.values())

    # warm-up (call before start) ---------------------------------------------
    def warmup(self, engine_id: str, prompt_ids: list[int], steps: int) -> list[StepRecord]:
        """Run prefill and decode steps that are platform overhead: ``warmup=True``, never billed."""
        slot = self._slots[engine_id]
        seq_id = f"warmup-{engine_id}"
        records: list[StepRecord] = []
        inputs = [SeqInput(seq_id, prompt_ids)]
        part = Participant(seq_id, prefill_tokens=len(prompt_ids))
        for _ in range(max(1, steps)):
            out = slot.engine.step(inputs)
            token = int(np.argmax(out.logits[seq_id]))
            # participants are kept so the step's shape informs cost estimates; attribution
            # gives a warm-up step's whole time to the unattributed (platform) pool
            record = StepRecord(
                self._next_step_id(),
                engine_id,
                slot.engine.info.device,
                out.device_us,
                (part,),
                time.monotonic_ns(),
                warmup=True,
            )
            records.append(record)
            self._sink.on_step(record, {})
            context = part.context_tokens + part.new_tokens
            part = Participant(seq_id, context_tokens=context, decode_tokens=1)
            inputs = [SeqInput(seq_id, [token])]
        slot.engine.release(seq_id)
        return records

    # the loop ------------------------------------------------------------------
    def _next_step_id(self) -> int:
        self._step_id += 1
        return self._step_id

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._drain_inbox()
            except Exception:  # one bad message must not stop the device's only loop
                log.exception("worker inbox")
            slot = self._pick()
            if slot is None:
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                self._step(slot)
            except Exception as exc:  # an engine failure fails its running requests, not the worker
                log.exception("step failed on %s", slot.engine.info.engine_id)
                self._fail_all(slot, exc)

    def _drain_inbox(self) -> None:
        while True:
            try:
                op, arg = self._inbox.get_nowait()
            except queue.Empty:
                return
            if op == "submit":
                assert isinstance(arg, GenerationRequest)
                slot = self._slots[arg.engine_id]
                try:
                    slot.scheduler.add(
                        arg.request_id,
                        arg.prompt_ids,
                        max_tokens=arg.max_tokens,
                        tier=arg.tier,
                        eos_token_id=slot.engine.info.eos_token_id,
                    )
                except ValueError as exc:  # admission checks this first; never kill the loop
                    if arg.on_finish is not None:
                        arg.on_finish(exc)
                    continue
                self._requests[arg.request_id] = arg
                if arg.rng is None:
                    arg.rng = np.random.default_rng(arg.sampling.seed)
            elif op == "cancel_all":
                assert isinstance(arg, threading.Event)
                for req in list(self._requests.values()):
                    slot = self._slots[req.engine_id]
                    fin = slot.scheduler.abort(req.request_id)
                    if fin is not None:
                        self._finish(slot, fin)
                arg.set()
            elif op == "cancel":
                assert isinstance(arg, str)
                for slot in self._slots.values():
                    fin = slot.scheduler.abort(arg)
                    if fin is not None:
                        self._finish(slot, fin)

    def _pick(self) -> _EngineSlot | None:
        busy = [s for s in self._slots.values() if s.scheduler.has_work()]
        if not busy:
            return None
        default = [s for s in busy if s.scheduler.has_tier(ServiceTier.DEFAULT)]
        flex_only = [s for s in busy if s not in default]
        if default and flex_only and self._since_flex < self._flex_every:
            self._since_flex += 1
            return default[self.steps % len(default)]
        self._since_flex = 0
        pool = flex_only or default
        return pool[self.steps % len(pool)]

    def _step(self, slot: _EngineSlot) -> None:
        plan = slot.scheduler.schedule()
        if not plan:
            return
        now = time.monotonic_ns()
        for item in plan.items:
            req = self._requests[item.request_id]
            if req.first_step_ns is None:
                req.first_step_ns = now
        out = slot.engine.step([SeqInput(i.request_id, i.tokens) for i in plan.items])
        self.steps += 1
        info = slot.engine.info
        step = StepRecord(
            self._next_step_id(),
            info.engine_id,
            info.device,
            out.device_us,
            tuple(i.participant() for i in plan.items),
            now,
        )
        per_token = info.kv_bytes_per_token
        kv = {i.request_id: (i.context + len(i.tokens)) * per_token for i in plan.items}
        self._sink.on_step(step, kv)
        sampled = self._sample(plan, out.logits)
        for fin in slot.scheduler.update(plan, sampled):
            self._finish(slot, fin)
        self._emit_tokens(slot, plan, sampled)

    def _sample(self, plan: StepPlan, logits: dict[str, np.ndarray]) -> dict[str, int]:
        sampled: dict[str, int] = {}
        for item in plan.items:
            if item.samples:
                req = self._requests[item.request_id]
                assert req.rng is not None
                sampled[item.request_id] = sample(logits[item.request_id], req.sampling, req.rng)
        return sampled

    def _emit_tokens(self, slot: _EngineSlot, plan: StepPlan, sampled: dict[str, int]) -> None:
        for request_id, token in sampled.items():
            req = self._requests.get(request_id)
            seq = slot.scheduler.get(request_id)
            if req is None or seq is None:
                continue  # finished this step; _finish sent its text
            self._advance_text(slot, req, seq.output)
            if _find_stop(req.output_text, req.stop) is not None:
                fin = slot.scheduler.abort(request_id, FinishReason.STOP)
                if fin is not None:
                    self._finish(slot, fin)
                continue
            # hold back a tail that could still become a stop string
            hold = max((len(s) for s in req.stop), default=1) - 1
            safe = len(req.output_text) - hold
            if safe > req.emitted and req.on_token is not None:
                req.on_token(TokenEvent(req.output_text[req.emitted : safe], token))
                req.emitted = safe

    def _advance_text(self, slot: _EngineSlot, req: GenerationRequest, output: list[int]) -> None:
        eos = slot.engine.info.eos_token_id
        ids = output[:-1] if output and output[-1] == eos else output
        text = slot.tokenizer.decode(list(ids))
        if text.endswith("\ufffd"):  # hold back an incomplete UTF-8 sequence
            text = text.rstrip("\ufffd")
        if len(text) >= len(req.output_text):
            req.output_text = text

    def _finish(self, slot: _EngineSlot, fin: Finished, status: Status | None = None) -> None:
        req = self._requests.pop(fin.request_id, None)
        slot.engine.release(fin.request_id)
        if req is None:
            return
        self._advance_text(slot, req, list(fin.output))
        text = req.output_text
        reason = fin.reason
        stop_at = _find_stop(text, req.stop)
        if stop_at is not None:
            text, reason = text[:stop_at], FinishReason.STOP
        if reason != FinishReason.CANCELLED and len(text) > req.emitted and req.on_token is not None:
            req.on_token(TokenEvent(text[req.emitted :], fin.output[-1] if fin.output else -1))
            req.emitted = len(text)
        now_ns = time.monotonic_ns()
        first = req.first_step_ns or now_ns
        if status is None:
            status = {
                FinishReason.STOP: Status.COMPLETED,
                FinishReason.LENGTH: Status.LENGTH,
                FinishReason.CANCELLED: Status.CANCELLED,
            }[reason]
        finished = FinishedRequest(
            request=req,
            engine=slot.engine.info,
            status=status,
            finish_reason=reason.value,
            prompt_tokens=len(req.prompt_ids),
            completion_tokens=len(fin.output),
            text=text,
            queue_ms=(first - req.arrived_ns) // 1_000_000,
            latency_ms=(now_ns - req.arrived_ns) // 1_000_000,
            started_at=req.arrived_at,
            ended_at=utc_now(),
        )
        self._sink.on_finish(finished)

    def _fail_all(self, slot: _EngineSlot, exc: Exception) -> None:
        """An engine failure is the platform's fault: its requests end ``failed`` (priced at zero)."""
        for req in list(self._requests.values()):
            if req.engine_id == slot.engine.info.engine_id:
                fin = slot.scheduler.abort(req.request_id, FinishReason.CANCELLED)
                if fin is not None:
                    self._finish(slot, fin, Status.FAILED)


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None
