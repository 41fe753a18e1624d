"""The metering pipeline: steps → attribution → per-request meters → RU → price → ledger.

It is the worker's sink. ``on_step`` runs on the worker thread and does only the cheap
integer work the worker needs at once: it attributes the step exactly (the shares the worker
charges to each request's cost cap, and the same shares that go into the request's meters,
computed once) and updates the per-token cost ceilings that size budget reservations
(``app.cost_caps``). Everything else — meters, the window sampler, metrics, pricing, the
ledger hand-off — runs on the pipeline's own thread. On a GPU the worker spends most of a
step waiting on the device with the GIL released, which is when this thread runs; steps do
not even wake it (it drains them in bulk), so on a CPU device it does not preempt the
engine's threads once per step. A request's steps are always counted before it is priced:
the worker appends them before it queues the finish, and the thread drains every pending
step before it handles any queued item. A request's ``on_finish`` callback runs only after
its record is durable (invariant 3).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from infermeter.app.cost_caps import RESERVE_FIRST_TOKENS, CostCeilings, Pricer, RequestCap
from infermeter.billing.budgets import BudgetBook, Grant
from infermeter.billing.plans import ONE, Quote
from infermeter.billing.pricing import PricePlan
from infermeter.billing.store import AppendResult, Store
from infermeter.core.ids import record_id as new_record_id
from infermeter.core.money import micros_to_decimal
from infermeter.core.records import PLATFORM_TENANT, StepRecord, StepShares, UsageRecord, utc_now
from infermeter.core.types import ServiceTier, Status
from infermeter.metering.attribution import TOKEN_PROPORTIONAL, CostModel, attribute
from infermeter.metering.meter import MeterBook
from infermeter.metering.ru import RuTable
from infermeter.observability.metrics import Metrics
from infermeter.runtime.engine import EngineInfo
from infermeter.runtime.worker import FinishedRequest

log = logging.getLogger(__name__)

_FINISH, _MARK = "finish", "mark"
_IDLE = ("idle",)
# Steps are appended without waking the pipeline thread (a wake-up per step steals the
# engine's cores on a CPU device); it drains them at least this often.
STEP_DRAIN_S = 0.02  # well inside the window sampler's one-tick (100 ms) grace for late steps


@dataclass(frozen=True, slots=True)
class _StepMetrics:
    seconds: Any
    batch: Any
    billed_ms: Any
    warmup_ms: Any
    unattributed_ms: Any


class MeteringPipeline:
    def __init__(
        self,
        store: Store,
        budgets: BudgetBook,
        plan: PricePlan,
        ru_table: RuTable,
        metrics: Metrics,
        *,
        enabled: bool = True,
    ) -> None:
        self.store = store
        self.budgets = budgets
        self.plan = plan
        self.ru_table = ru_table
        self.metrics = metrics
        self.enabled = enabled
        self.book = MeterBook()
        self._cost_models: dict[str, CostModel] = {}
        self._ceilings: dict[str, CostCeilings] = {}
        self._step_metrics: dict[str, _StepMetrics] = {}
        # request id -> the quote it was admitted with (set by the API, taken when priced)
        self._quotes: dict[str, Quote] = {}
        self._steps: deque[tuple[StepRecord, StepShares, dict[str, int], int]] = deque()
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Window metering: receives (start_ns, end_ns, shares) of every step, e.g.
        # WindowSampler.record_step. None: no sampler configured.
        self.step_sink: Callable[[int, int, StepShares], None] | None = None

    # configuration --------------------------------------------------------------
    def set_cost_model(self, engine_id: str, model: CostModel) -> None:
        self._cost_models[engine_id] = model

    def cost_model(self, engine_id: str) -> CostModel:
        return self._cost_models.get(engine_id, TOKEN_PROPORTIONAL)

    def hold_quote(self, request_id: str, quote: Quote) -> None:
        """Price ``request_id`` with ``quote`` (its admission's) when it finishes."""
        self._quotes[request_id] = quote

    def drop_quote(self, request_id: str) -> None:
        """Forget a quote whose request will never be priced (it failed before running)."""
        self._quotes.pop(request_id, None)

    def quote_for(self, request_id: str, tier: ServiceTier) -> Quote:
        """The held quote, or the service plan's list price (multiplier 1) for one without."""
        held = self._quotes.pop(request_id, None)
        if held is not None:
            return held
        return Quote(self.plan.version, self.plan.currency, tier, self.plan.price(tier), ONE)

    # lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="infermeter-metering", daemon=True)
            self._thread.start()

    def drain(self) -> None:
        """Block until everything enqueued so far has been processed (records submitted)."""
        if self._thread is None:
            return
        done = threading.Event()
        self._queue.put((_MARK, done))
        done.wait()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=STEP_DRAIN_S)
            except queue.Empty:
                item = _IDLE
            self._drain_steps()  # every step enqueued before this item, in order
            if item is None:
                return
            try:
                if item[0] == _FINISH:
                    self._finish(item[1])
                elif item[0] == _MARK:
                    item[1].set()
            except Exception:  # a bug here must not stop metering for everyone else
                log.exception("metering pipeline failed on %s", item[0])

    def _drain_steps(self) -> None:
        steps = self._steps
        while steps:
            step, shares, kv_bytes, end_ns = steps.popleft()
            try:
                self._account_step(step, shares, kv_bytes, end_ns)
            except Exception:
                log.exception("metering pipeline failed on step %s", step.step_id)

    # the worker sink (worker thread: enqueue only) ---------------------------------------
    def on_step(self, step: StepRecord, kv_bytes: dict[str, int]) -> StepShares | None:
        """Attribute the step now (worker thread) and queue it for the meters; returns the shares."""
        if not self.enabled:
            return None
        # The worker calls on_step right after the step's sync: the device work ended about
        # now and took device_us, which is the span sampler windows overlap.
        end_ns = time.monotonic_ns()
        try:
            shares = attribute(step, self.cost_model(step.engine_id))
            self.ceilings(step.engine_id).observe(step, shares)
        except Exception:  # a metering bug must not fail the step's requests
            log.exception("attribution failed on step %s", step.step_id)
            return None
        if self._thread is None:  # not started (tests, warm-up before start): do it inline
            self._account_step(step, shares, kv_bytes, end_ns)
        else:
            # no wake-up per step: the pipeline thread drains steps in bulk, at the latest
            # every STEP_DRAIN_S, and always before it handles a finish queued after them
            self._steps.append((step, shares, kv_bytes, end_ns))
        return shares

    def on_finish(self, finished: FinishedRequest) -> None:
        req = finished.request
        if not self.enabled:
            if req.on_finish is not None:
                req.on_finish(finished)
            return
        if self._thread is None:
            self._finish(finished)
        else:
            self._queue.put((_FINISH, finished))

    # the pipeline's thread ----------------------------------------------------------------
    def _account_step(
        self, step: StepRecord, shares: StepShares, kv_bytes: dict[str, int], end_ns: int
    ) -> None:
        self.book.add(step, shares, kv_bytes)
        if self.step_sink is not None:
            self.step_sink(end_ns - step.device_us * 1000, end_ns, shares)
        m = self._step_metrics.get(step.engine_id) or self._bind_step_metrics(step.engine_id)
        m.seconds.observe(step.device_us / 1e6)
        m.batch.observe(len(step.participants))
        if step.warmup:
            m.warmup_ms.inc(step.device_us / 1000)
        else:
            m.billed_ms.inc((step.device_us - shares.unattributed_us) / 1000)
            m.unattributed_ms.inc(shares.unattributed_us / 1000)

    def _bind_step_metrics(self, engine: str) -> _StepMetrics:
        """Label lookups cost microseconds each; a step's instruments are bound once per engine."""
        ms = self.metrics.engine_device_ms
        bound = _StepMetrics(
            self.metrics.step_seconds.labels(engine),
            self.metrics.step_batch.labels(engine),
            ms.labels(engine, "billed"),
            ms.labels(engine, "warmup"),
            ms.labels(engine, "unattributed"),
        )
        self._step_metrics[engine] = bound
        return bound

    def _finish(self, finished: FinishedRequest) -> None:
        req = finished.request
        record = self.build_record(finished)

        def committed(result: AppendResult | BaseException) -> None:
            if isinstance(result, BaseException):
                log.error("ledger append failed for %s: %s", req.request_id, result)
                self.budgets.release(req.request_id)
                if req.on_finish is not None:
                    req.on_finish(result)
                return
            stored = result.record
            self.budgets.settle(req.request_id, stored.cost)
            if result.created:
                self._count(stored)
            if req.on_finish is not None:
                req.on_finish(stored)

        self.store.submit(record, committed)

    # pricing ------------------------------------------------------------------------
    def build_record(self, finished: FinishedRequest) -> UsageRecord:
        req, info = finished.request, finished.engine
        meters = self.book.pop(req.request_id)
        ru_micros = self.ru_table.ru_micros(
            info.device_class, info.precision, meters.prefill_us, meters.decode_us
        )
        quote = self.quote_for(req.request_id, req.tier)
        priced = quote.price_plan()
        cost = Decimal(0) if finished.status == Status.FAILED else priced.cost(ru_micros, req.tier)
        return UsageRecord(
            record_id=new_record_id(),
            request_id=req.request_id,
            tenant_id=req.tenant_id,
            model=info.model,
            engine_id=info.engine_id,
            device=info.device,
            precision=info.precision,
            service_tier=req.tier,
            status=finished.status,
            prompt_tokens=finished.prompt_tokens,
            completion_tokens=finished.completion_tokens,
            cached_tokens=0,
            device_us=meters.device_us,
            prefill_us=meters.prefill_us,
            decode_us=meters.decode_us,
            kv_mb_s=meters.kv_mb_s,
            ru_micros=ru_micros,
            cost=cost,
            currency=quote.currency,
            queue_ms=finished.queue_ms,
            latency_ms=finished.latency_ms,
            started_at=finished.started_at,
            ended_at=finished.ended_at,
            cost_model_version=self.cost_model(info.engine_id).version,
            ru_table_version=self.ru_table.version,
            price_plan_version=quote.plan_version,
            stopped_by=finished.stopped_by,
            price_point=quote.price_point,
            multiplier=quote.multiplier,
        )

    def warmup_record(self, info: EngineInfo, steps: list[StepRecord]) -> UsageRecord:
        """Engine load and warm-up: platform overhead, ``warmup=True``, priced at zero."""
        device_us = sum(s.device_us for s in steps)
        now = utc_now()
        return UsageRecord(
            record_id=new_record_id(),
            request_id=f"warmup:{info.engine_id}:{now.isoformat()}",
            tenant_id=PLATFORM_TENANT,
            model=info.model,
            engine_id=info.engine_id,
            device=info.device,
            precision=info.precision,
            service_tier=ServiceTier.DEFAULT,
            status=Status.COMPLETED,
            prompt_tokens=0,
            completion_tokens=0,
            cached_tokens=0,
            device_us=device_us,
            prefill_us=0,
            decode_us=0,
            kv_mb_s=Decimal(0),
            ru_micros=0,
            cost=Decimal(0),
            currency=self.plan.currency,
            queue_ms=0,
            latency_ms=device_us // 1000,
            started_at=now,
            ended_at=now,
            cost_model_version=self.cost_model(info.engine_id).version,
            ru_table_version=self.ru_table.version,
            price_plan_version=self.plan.version,
            warmup=True,
        )

    # budget reservations and caps (app.cost_caps states the bound) ------------------------
    def ceilings(self, engine_id: str) -> CostCeilings:
        found = self._ceilings.get(engine_id)
        if found is None:
            found = self._ceilings[engine_id] = CostCeilings()
        return found

    def reservation(
        self,
        info: EngineInfo,
        tier: ServiceTier,
        prompt_tokens: int,
        max_tokens: int,
        plan: PricePlan | None = None,
    ) -> tuple[Decimal, Decimal]:
        """(first, minimum): the cost at the per-token ceilings of the prompt and the first
        ``RESERVE_FIRST_TOKENS`` tokens (at most ``max_tokens``), and the same for the prompt
        and one token. Upper bounds for reservations, never a price: a capped request holds
        ``first`` and grows its cap from the tenant's remaining budget as it needs more
        (``RequestCap.allows``), so concurrent requests do not each hold their whole
        ``max_tokens`` up front. ``plan``: the request's quote (``Quote.price_plan``); the
        service plan when None."""
        plan = self.plan if plan is None else plan
        ceilings, pricer = self.ceilings(info.engine_id), Pricer(self.ru_table, plan, info, tier)
        prefill = ceilings.prefill_us(prompt_tokens)
        first = pricer.cost(prefill, ceilings.decode_us(min(max_tokens, RESERVE_FIRST_TOKENS)))
        return first, pricer.cost(prefill, ceilings.decode_us(1))

    def estimate_cost(
        self, info: EngineInfo, tier: ServiceTier, prompt_tokens: int, max_tokens: int
    ) -> Decimal:
        """The reservation bound alone (see ``reservation``)."""
        return self.reservation(info, tier, prompt_tokens, max_tokens)[0]

    def cost_cap(
        self,
        request_id: str,
        info: EngineInfo,
        tier: ServiceTier,
        grant: Grant,
        plan: PricePlan | None = None,
    ) -> RequestCap | None:
        """The cap the worker enforces for a reservation; None when the tenant has no limit."""
        if not grant.capped or not self.enabled:
            return None
        pricer = Pricer(self.ru_table, self.plan if plan is None else plan, info, tier)
        return RequestCap(request_id, grant.amount, pricer, self.ceilings(info.engine_id), self.budgets)

    def _count(self, record: UsageRecord) -> None:
        labels = (record.tenant_id, record.service_tier.value, record.model)
        m = self.metrics
        m.requests.labels(*labels, record.status.value).inc()
        m.tokens.labels(*labels, "prompt").inc(record.prompt_tokens)
        m.tokens.labels(*labels, "completion").inc(record.completion_tokens)
        m.device_ms.labels(*labels).inc(record.device_us / 1000)
        m.ru.labels(*labels).inc(float(micros_to_decimal(record.ru_micros)))
        m.cost.labels(*labels, record.currency).inc(float(record.cost))
