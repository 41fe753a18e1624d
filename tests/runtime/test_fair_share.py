"""Fair share within a tier: virtual counters charged with measured, attributed device time.

Bound checked here: while two tenants are both backlogged, their weighted service
S_u / w_u differs by at most 2·U, U = the largest measured cost of one request over its
tenant's weight (see runtime/fair_share.py)."""

from __future__ import annotations

import threading
from collections import defaultdict
from fractions import Fraction

from infermeter.core.records import StepRecord, StepShares
from infermeter.core.types import ServiceTier
from infermeter.metering.attribution import TOKEN_PROPORTIONAL, attribute
from infermeter.runtime.fair_share import SCALE, VirtualCounters
from infermeter.runtime.fake_engine import FakeEngine
from infermeter.runtime.scheduler import Scheduler, SchedulerConfig
from infermeter.runtime.tokenizer import ByteTokenizer
from infermeter.runtime.worker import FinishedRequest, GenerationRequest, Worker

D = ServiceTier.DEFAULT


class MeteringSink:
    """Attributes every step (as the metering pipeline does) and totals each tenant's service."""

    def __init__(self, tenant_of: dict[str, str]) -> None:
        self.tenant_of = tenant_of
        self.per_request: dict[str, int] = defaultdict(int)
        self.service: dict[str, int] = defaultdict(int)
        self.at_finish: list[tuple[str, dict[str, int]]] = []

    def on_step(self, step: StepRecord, kv_bytes: dict[str, int]) -> StepShares:
        shares = attribute(step, TOKEN_PROPORTIONAL)
        for rid, us in shares.shares.items():
            self.per_request[rid] += us
            self.service[self.tenant_of[rid]] += us
        return shares

    def on_finish(self, finished: FinishedRequest) -> None:
        self.at_finish.append((finished.request.request_id, dict(self.service)))
        if finished.request.on_finish is not None:
            finished.request.on_finish(finished)


def run_backlog(fair: bool, weights: dict[str, Fraction] | None = None) -> MeteringSink:
    """Tenant a sends 10x as many requests as b, all queued before the worker starts."""
    ids = [f"a{i}" for i in range(60)] + [f"b{i}" for i in range(6)]
    sink = MeteringSink({rid: rid[0] for rid in ids})
    w = Worker(sink, fair=fair)
    w.add_engine(FakeEngine(), ByteTokenizer(), SchedulerConfig(max_batch=2, max_seq_len=64))
    done = threading.Event()
    left = [len(ids)]

    def finish(_o: object) -> None:
        left[0] -= 1  # on the worker thread only
        if left[0] == 0:
            done.set()

    for rid in ids:
        w.submit(
            GenerationRequest(
                request_id=rid, tenant_id=rid[0], model="tiny-gpt", engine_id="fake-engine", tier=D,
                prompt_ids=[97] * 8, max_tokens=6, on_finish=finish,
                weight=(weights or {}).get(rid[0], Fraction(1)),
            )
        )  # fmt: skip
    w.start()
    try:
        assert done.wait(timeout=60)
    finally:
        w.stop()
    return sink


def gap_when_b_is_done(sink: MeteringSink, weights: dict[str, Fraction]) -> tuple[Fraction, Fraction]:
    """(|S_a/w_a - S_b/w_b| when b's last request finishes, 2U)."""
    last_b = max(i for i, (rid, _) in enumerate(sink.at_finish) if rid.startswith("b"))
    service = sink.at_finish[last_b][1]
    gap = abs(Fraction(service.get("a", 0)) / weights["a"] - Fraction(service.get("b", 0)) / weights["b"])
    bound = 2 * max(Fraction(us) / weights[rid[0]] for rid, us in sink.per_request.items())
    return gap, bound


def test_two_backlogged_tenants_get_service_within_the_vtc_bound() -> None:
    """a sends 10x b: with fair share their service stays within 2U; FIFO leaves b far behind."""
    ones = {"a": Fraction(1), "b": Fraction(1)}
    gap, bound = gap_when_b_is_done(run_backlog(fair=True), ones)
    assert gap <= bound
    fifo_gap, fifo_bound = gap_when_b_is_done(run_backlog(fair=False), ones)
    assert fifo_gap > 5 * fifo_bound  # the same workload first come, first served


def test_a_heavier_weight_gets_proportionally_more_service() -> None:
    """b at weight 2 (a reservation): S_a/1 and S_b/2 stay within the bound, so b gets ~2x."""
    weights = {"a": Fraction(1), "b": Fraction(2)}
    gap, bound = gap_when_b_is_done(run_backlog(fair=True, weights=weights), weights)
    assert gap <= bound


def test_a_lone_tenant_is_scheduled_exactly_as_fifo() -> None:
    """One tenant: the plans with counters equal the FIFO plans step for step (no lost throughput)."""
    plans: list[list[tuple[str, ...]]] = []
    for counters in (None, {D: {"t": 123}}):
        s = Scheduler(SchedulerConfig(max_batch=3, token_budget=20, prefill_chunk=8))
        for n in range(7):
            s.add(f"r{n}", [1] * (5 + n), max_tokens=3, tenant="t")
        steps = []
        while s.has_work():
            plan = s.schedule(counters)
            steps.append(tuple(f"{i.request_id}:{len(i.tokens)}" for i in plan.items))
            s.update(plan, {i.request_id: 7 for i in plan.items if i.samples})
        plans.append(steps)
    assert plans[0] == plans[1]


def test_the_tenant_behind_is_admitted_first_and_charged_an_estimate() -> None:
    """Smallest counter first, each pick charged (prompt + max_tokens) x µs/token; priority first."""
    s = Scheduler(SchedulerConfig(max_batch=3, token_budget=100))
    for n in range(3):
        s.add(f"a{n}", [1], max_tokens=1, tenant="a")
    s.add("b0", [1], max_tokens=1, tenant="b")
    s.add("b1", [1], max_tokens=1, tenant="b")
    counters = {D: {"a": 50 * SCALE, "b": 10 * SCALE}}
    plan = s.schedule(counters, us_per_token=Fraction(20))  # b0 lifts b to 50: a0 is older than b1
    assert [i.request_id for i in plan.items] == ["b0", "a0", "b1"]
    s2 = Scheduler(SchedulerConfig(max_batch=1, token_budget=100))
    s2.add("d", [1], max_tokens=1, tenant="b")
    s2.add("p", [1], max_tokens=1, tier=ServiceTier.PRIORITY, tenant="a")
    assert [i.request_id for i in s2.schedule({D: {"b": 0}}).items] == ["p"]


def test_a_returning_tenant_is_lifted_to_the_backlogged_minimum() -> None:
    """An idle tenant banks no credit: its counter rises to the smallest backlogged one."""
    c = VirtualCounters()
    c.charge("a", 1000)
    c.charge("b", 4000)
    c.lift("idle", ["a", "b"])
    c.charge("w", 1000, weight=Fraction(2))
    assert c.values() == {"a": 1000 * SCALE, "b": 4000 * SCALE, "idle": 1000 * SCALE, "w": 500 * SCALE}
