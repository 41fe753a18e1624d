"""The worker loop: the only thread that touches engines.

One worker per device. It owns one scheduler per engine and repeats
``schedule → engine.step → sample → scheduler.update``; every step becomes a StepRecord handed
to the metering sink, and every finished request a ``FinishedRequest`` handed to the sink,
which prices it, makes it durable and only then calls the request's ``on_finish``.

``priority`` work runs first: while an engine has ``priority`` requests, only such engines
get steps. ``flex`` work runs below ``default`` work: when several engines have work, an
engine whose requests are all ``flex`` gets a step only when no ``default`` engine has work,
or once every ``flex_every`` steps so it is never starved.

Fair share (``fair=True``, the default): within a tier, waiting requests are admitted by
per-tenant virtual counters (``runtime.fair_share``), lifted when a tenant becomes
backlogged and charged after every step with each request's attributed device-µs divided by
its ``weight``. The counters span the worker's engines; the scheduler gets their values.

Fault isolation: an error caused by one request (its sampling, its stop strings, decoding
its tokens, its callbacks) fails that request only (status ``failed``, priced at zero) and
the batch goes on. When ``engine.step`` itself raises, only that step's requests fail:
those that had run an earlier step end ``failed`` (one record each, priced at zero); those
whose first step it was end with an ``Unavailable`` error and no record. Requests waiting
for the engine are untouched.

Cost caps: a request may carry a ``CostCap`` (its budget reservation, priced by the billing
side). Before each step the worker asks the cap whether the request's part of the step
still fits; if not, the request ends as ``length`` with ``stopped_by="budget"`` (or, if it
never ran, with ``BudgetExceeded`` and no record). After each step it charges every capped
request its attributed share, the same shares the request is priced from.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import Protocol

import numpy as np

from infermeter.core.errors import BudgetExceeded, Unavailable
from infermeter.core.records import Participant, StepRecord, StepShares, utc_now
from infermeter.core.types import ServiceTier, Status
from infermeter.runtime.engine import Engine, EngineInfo, SeqInput
from infermeter.runtime.fair_share import VirtualCounters
from infermeter.runtime.sampling import SamplingParams, generator, sample
from infermeter.runtime.scheduler import (
    Finished,
    FinishReason,
    PlanItem,
    Scheduler,
    SchedulerConfig,
    StepPlan,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TokenEvent:
    text: str  # newly decoded text (may be empty while a UTF-8 sequence is incomplete)
    token_id: int


class CostCap(Protocol):
    """A request's spend limit, kept by the billing side; the worker only reports and asks."""

    def charge(self, prefill_us: int, decode_us: int) -> None:
        """Add the request's attributed share of one step (µs, by phase)."""
        ...

    def allows(self, prefill_tokens: int, decode_tokens: int) -> bool:
        """True if a step feeding these tokens keeps the request within its cap."""
        ...


BUDGET = "budget"  # FinishedRequest.stopped_by when a request's cost cap ended it


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
    cap: CostCap | None = None  # None: no budget limit to enforce
    token_counts: dict[int, int] = field(default_factory=dict)  # output tokens, for penalties
    weight: Fraction = Fraction(1)  # fair-share weight of the tenant (a reservation raises it)
    stopped_by: str | None = None  # BUDGET when the cost cap ended it
    error: str | None = None  # why the worker failed it (status failed, or an error outcome)


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
    stopped_by: str | None = None


class WorkerSink(Protocol):
    def on_step(self, step: StepRecord, kv_bytes: dict[str, int]) -> StepShares | None:
        """Take a step's record; return its attribution if computed now (it charges cost caps)."""
        ...

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

    def __init__(
        self, sink: WorkerSink, *, name: str = "worker", flex_every: int = 4, fair: bool = True
    ) -> None:
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
        self._vtc = {tier: VirtualCounters() for tier in ServiceTier} if fair else None
        self._fair_us = self._fair_tokens = 0  # measured µs per token: admission estimates
        self._plan: StepPlan | None = None  # the step in progress, failed as a whole on a bug
        self._fresh: set[str] = set()  # its requests that had not run a step before it
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
            self._drain_inbox()
            slot = self._pick()
            if slot is None:
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            self._plan = None
            try:
                self._step(slot)
            except Exception as exc:  # a bug past the engine: fail that step's requests, not the worker
                log.exception("step failed on %s", slot.engine.info.engine_id)
                if self._plan is not None:
                    self._fail_step(slot, self._plan, exc, self._fresh)

    def _drain_inbox(self) -> None:
        while True:
            try:
                op, arg = self._inbox.get_nowait()
            except queue.Empty:
                return
            try:
                if op == "submit":
                    assert isinstance(arg, GenerationRequest)
                    self._admit(arg)
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
            except Exception:  # one bad message must not stop the device's only loop
                log.exception("worker inbox: %s", op)

    def _admit(self, req: GenerationRequest) -> None:
        slot = self._slots[req.engine_id]
        try:
            if req.rng is None:
                req.rng = generator(req.sampling.seed)
            if self._vtc is not None:
                backlogged = set().union(*(s.scheduler.tenants(req.tier) for s in self._slots.values()))
                if req.tenant_id not in backlogged:
                    self._vtc[req.tier].lift(req.tenant_id, backlogged)
            slot.scheduler.add(
                req.request_id,
                req.prompt_ids,
                max_tokens=req.max_tokens,
                tier=req.tier,
                eos_token_id=slot.engine.info.eos_token_id,
                tenant=req.tenant_id,
                weight=req.weight,
            )
        except (ValueError, TypeError) as exc:  # admission checks this first; never kill the loop
            self._refuse(req, exc)
            return
        self._requests[req.request_id] = req

    def _refuse(self, req: GenerationRequest, exc: BaseException) -> None:
        """End a request that never ran a step: no record, its outcome is the error."""
        req.error = str(exc)
        if req.on_finish is not None:
            try:
                req.on_finish(exc)
            except Exception:
                log.exception("on_finish of %s", req.request_id)

    def _pick(self) -> _EngineSlot | None:
        busy = [s for s in self._slots.values() if s.scheduler.has_work()]
        if not busy:
            return None
        priority = [s for s in busy if s.scheduler.has_tier(ServiceTier.PRIORITY)]
        if priority:  # priority work runs ahead of everything else, flex's turn included
            return priority[self.steps % len(priority)]
        default = [s for s in busy if s.scheduler.has_tier(ServiceTier.DEFAULT)]
        flex_only = [s for s in busy if s not in default]
        if default and flex_only and self._since_flex < self._flex_every:
            self._since_flex += 1
            return default[self.steps % len(default)]
        self._since_flex = 0
        pool = flex_only or default
        return pool[self.steps % len(pool)]

    def _step(self, slot: _EngineSlot) -> None:
        counters = None if self._vtc is None else {t: c.values() for t, c in self._vtc.items()}
        rate = Fraction(self._fair_us, self._fair_tokens) if self._fair_tokens else Fraction(1)
        scheduled = slot.scheduler.schedule(counters, rate)
        for seq_id in scheduled.preempted:  # over the KV budget: recomputed when readmitted
            slot.engine.release(seq_id)
        plan = self._within_caps(slot, scheduled)
        if not plan:
            return
        now = time.monotonic_ns()
        fresh: set[str] = set()  # requests whose first step this is
        for item in plan.items:
            req = self._requests[item.request_id]
            if req.first_step_ns is None:
                req.first_step_ns = now
                fresh.add(item.request_id)
        self._plan, self._fresh = plan, fresh
        try:
            out = slot.engine.step([SeqInput(i.request_id, i.tokens) for i in plan.items])
        except Exception as exc:  # engine-wide: this step's requests fail, the worker goes on
            log.exception("engine %s failed a step", slot.engine.info.engine_id)
            self._fail_step(slot, plan, exc, fresh)
            return
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
        shares = self._sink.on_step(step, kv)
        self._fresh = set()  # the step is on the books: every participant has now run
        if shares is not None:
            self._charge(slot, plan, shares)
            self._charge_fair_share(plan, shares)
        sampled = self._sample(slot, plan, out.logits)
        for fin in slot.scheduler.update(plan, sampled):
            self._finish(slot, fin)
        self._emit_tokens(slot, plan, sampled)
        self._plan = None

    def _within_caps(self, slot: _EngineSlot, plan: StepPlan) -> StepPlan:
        """The plan without the items whose request's cost cap the step would pass."""
        keep: list[PlanItem] = []
        for item in plan.items:
            req = self._requests[item.request_id]
            if req.cap is not None:
                prefill, decode = (0, len(item.tokens)) if item.decode else (len(item.tokens), 0)
                try:
                    fits = req.cap.allows(prefill, decode)
                except Exception as exc:
                    self._fail_request(slot, req, exc)
                    continue
                if not fits:
                    self._stop_for_budget(slot, req)
                    continue
            keep.append(item)
        return plan if len(keep) == len(plan.items) else StepPlan(tuple(keep))

    def _stop_for_budget(self, slot: _EngineSlot, req: GenerationRequest) -> None:
        fin = slot.scheduler.abort(req.request_id, FinishReason.LENGTH)
        req.stopped_by = BUDGET
        if req.first_step_ns is not None:
            if fin is not None:
                self._finish(slot, fin)
            return
        self._requests.pop(req.request_id, None)
        slot.engine.release(req.request_id)
        self._refuse(
            req,
            BudgetExceeded(
                f"request {req.request_id} was stopped before its first step: the tenant's "
                "budget no longer covers it; it was not charged. Ask an admin to raise the "
                "budget or wait for in-flight requests to finish"
            ),
        )

    def _charge(self, slot: _EngineSlot, plan: StepPlan, shares: StepShares) -> None:
        for item in plan.items:
            req = self._requests.get(item.request_id)
            if req is None or req.cap is None:
                continue
            us = shares.shares.get(item.request_id, 0)
            try:
                req.cap.charge(0, us) if item.decode else req.cap.charge(us, 0)
            except Exception as exc:
                self._fail_request(slot, req, exc)

    def _charge_fair_share(self, plan: StepPlan, shares: StepShares) -> None:
        if self._vtc is None:
            return
        for item in plan.items:
            req = self._requests.get(item.request_id)
            self._fair_tokens += len(item.tokens)
            self._fair_us += shares.shares.get(item.request_id, 0)
            if req is not None:
                self._vtc[req.tier].charge(req.tenant_id, shares.shares.get(item.request_id, 0), req.weight)

    def fair_counters(self) -> dict[ServiceTier, dict[str, int]]:
        """A copy of the virtual counters (empty when fair share is off); for tests and views."""
        if self._vtc is None:
            return {}
        return {t: dict(c.values()) for t, c in self._vtc.items()}

    def _sample(self, slot: _EngineSlot, plan: StepPlan, logits: dict[str, np.ndarray]) -> dict[str, int]:
        sampled: dict[str, int] = {}
        for item in plan.items:
            if not item.samples:
                continue
            req = self._requests.get(item.request_id)
            if req is None:
                continue  # failed earlier in this step
            try:
                assert req.rng is not None
                counts = req.token_counts if req.sampling.penalized else None
                token = sample(logits[item.request_id], req.sampling, req.rng, counts)
            except Exception as exc:  # this request's fault (or its logits'): it alone fails
                self._fail_request(slot, req, exc)
                continue
            if counts is not None:
                counts[token] = counts.get(token, 0) + 1
            sampled[item.request_id] = token
        return sampled

    def _emit_tokens(self, slot: _EngineSlot, plan: StepPlan, sampled: dict[str, int]) -> None:
        for request_id, token in sampled.items():
            req = self._requests.get(request_id)
            seq = slot.scheduler.get(request_id)
            if req is None or seq is None:
                continue  # finished this step; _finish sent its text
            try:
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
            except Exception as exc:
                self._fail_request(slot, req, exc)

    def _advance_text(self, slot: _EngineSlot, req: GenerationRequest, output: list[int]) -> None:
        eos = slot.engine.info.eos_token_id
        ids = output[:-1] if output and output[-1] == eos else output
        text = slot.tokenizer.decode(list(ids))
        if text.endswith("\ufffd"):  # hold back an incomplete UTF-8 sequence
            text = text.rstrip("\ufffd")
        if len(text) >= len(req.output_text):
            req.output_text = text

    def _fail_request(self, slot: _EngineSlot, req: GenerationRequest, exc: BaseException) -> None:
        """One request's own error: it ends ``failed`` (priced at zero); the others go on."""
        log.warning("request %s failed in the worker: %r", req.request_id, exc)
        fin = slot.scheduler.abort(req.request_id, FinishReason.CANCELLED)
        if req.first_step_ns is None:  # it never ran: no record
            self._requests.pop(req.request_id, None)
            slot.engine.release(req.request_id)
            self._refuse(req, exc)
            return
        req.error = f"{type(exc).__name__}: {exc}"
        self._finish(slot, fin or Finished(req.request_id, FinishReason.CANCELLED, ()), Status.FAILED)

    def _finish(self, slot: _EngineSlot, fin: Finished, status: Status | None = None) -> None:
        req = self._requests.pop(fin.request_id, None)
        slot.engine.release(fin.request_id)
        if req is None:
            return
        if status != Status.FAILED:
            try:
                self._advance_text(slot, req, list(fin.output))
            except Exception as exc:  # its decode is broken: it fails, alone
                req.error = f"{type(exc).__name__}: {exc}"
                status = Status.FAILED
        text = req.output_text
        reason = fin.reason
        stop_at = _find_stop(text, req.stop)
        if stop_at is not None:
            text, reason = text[:stop_at], FinishReason.STOP
        if status is None and reason != FinishReason.CANCELLED and len(text) > req.emitted:
            if req.on_token is not None:
                try:
                    req.on_token(TokenEvent(text[req.emitted :], fin.output[-1] if fin.output else -1))
                except Exception:  # the listener is gone; the record is still written
                    log.exception("on_token of %s", req.request_id)
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
            stopped_by=req.stopped_by if status == Status.LENGTH else None,
        )
        self._sink.on_finish(finished)

    def _fail_step(self, slot: _EngineSlot, plan: StepPlan, exc: BaseException, fresh: set[str]) -> None:
        """The engine failed a step: only that step's requests end (see the module docstring)."""
        engine_id = slot.engine.info.engine_id
        for item in plan.items:
            req = self._requests.get(item.request_id)
            if req is None:
                continue
            fin = slot.scheduler.abort(item.request_id, FinishReason.CANCELLED)
            message = (
                f"engine {engine_id} failed while running request {item.request_id} "
                f"({type(exc).__name__}: {exc}); it was not charged; retry the request"
            )
            if item.request_id in fresh:  # it never ran: no record, its reservation is released
                self._requests.pop(item.request_id, None)
                slot.engine.release(item.request_id)
                self._refuse(req, Unavailable(message))
            else:
                req.error = message
                self._finish(
                    slot, fin or Finished(item.request_id, FinishReason.CANCELLED, ()), Status.FAILED
                )
        self._plan = None


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None
