"""The worker loop, driven with the fake engine and a recording sink (no metering, no HTTP)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from infermeter.core.errors import BudgetExceeded, EngineError, Unavailable
from infermeter.core.records import StepRecord, StepShares
from infermeter.core.types import ServiceTier, Status
from infermeter.metering.attribution import TOKEN_PROPORTIONAL, attribute
from infermeter.runtime.engine import SeqInput, StepOutput
from infermeter.runtime.fake_engine import FakeEngine, fake_engine_info
from infermeter.runtime.sampling import SamplingParams
from infermeter.runtime.scheduler import SchedulerConfig
from infermeter.runtime.tokenizer import ByteTokenizer
from infermeter.runtime.worker import FinishedRequest, GenerationRequest, TokenEvent, Worker


class Sink:
    """Records steps and finishes; answers each request's on_finish with its FinishedRequest."""

    def __init__(self) -> None:
        self.steps: list[StepRecord] = []
        self.finished: list[FinishedRequest] = []

    def on_step(self, step: StepRecord, kv_bytes: dict[str, int]) -> StepShares | None:
        self.steps.append(step)
        return None

    def on_finish(self, finished: FinishedRequest) -> None:
        self.finished.append(finished)
        if finished.request.on_finish is not None:
            finished.request.on_finish(finished)


@pytest.fixture
def worker() -> Iterator[tuple[Worker, Sink]]:
    sink = Sink()
    w = Worker(sink)
    w.add_engine(FakeEngine(), ByteTokenizer(), SchedulerConfig(max_seq_len=64))
    w.add_engine(
        FakeEngine(info=fake_engine_info(engine_id="fake-int8")),
        ByteTokenizer(),
        SchedulerConfig(max_seq_len=64),
    )
    w.start()
    yield w, sink
    w.stop()


def submit(
    w: Worker,
    rid: str,
    *,
    engine: str = "fake-engine",
    prompt: list[int] | None = None,
    max_tokens: int = 3,
    tier: ServiceTier = ServiceTier.DEFAULT,
) -> threading.Event:
    done = threading.Event()
    outcome: list[object] = []

    def finish(o: object) -> None:
        outcome.append(o)
        done.set()

    done.outcome = outcome  # type: ignore[attr-defined]
    w.submit(
        GenerationRequest(
            request_id=rid,
            tenant_id="t",
            model="tiny-gpt",
            engine_id=engine,
            tier=tier,
            prompt_ids=prompt or [97],
            max_tokens=max_tokens,
            on_finish=finish,
        )
    )
    return done


def test_requests_finish_with_their_text(worker: tuple[Worker, Sink]) -> None:
    """A request runs prefill then decode and finishes with the fake engine's counting text."""
    w, sink = worker
    assert submit(w, "a").wait(10)
    [fin] = sink.finished
    assert fin.text == "bcd" and fin.status == Status.LENGTH and fin.completion_tokens == 3
    assert all(p.request_id == "a" for s in sink.steps for p in s.participants)


def test_refused_request_does_not_stop_the_loop(worker: tuple[Worker, Sink]) -> None:
    """A prompt the scheduler refuses ends with an error; the next request still runs."""
    w, _ = worker
    bad = submit(w, "bad", prompt=[1] * 100)
    assert bad.wait(10)
    assert isinstance(bad.outcome[0], ValueError)  # type: ignore[attr-defined]
    assert submit(w, "good").wait(10)


class SlowFake(FakeEngine):
    def step(self, inputs: Sequence[SeqInput]) -> StepOutput:
        time.sleep(0.005)
        return super().step(inputs)


def test_cancel_finishes_as_cancelled() -> None:
    """Cancelling a running request ends it with status cancelled and the tokens made so far."""
    sink = Sink()
    w = Worker(sink)
    w.add_engine(SlowFake(), ByteTokenizer(), SchedulerConfig())
    w.start()
    try:
        done = submit(w, "long", max_tokens=500)
        while len(sink.steps) < 3:
            time.sleep(0.005)
        w.cancel("long")
        assert done.wait(10)
    finally:
        w.stop()
    [fin] = sink.finished
    assert fin.status == Status.CANCELLED and 0 < fin.completion_tokens < 500


class FailAt(FakeEngine):
    """A FakeEngine whose n-th call to step (1-based) raises, once."""

    def __init__(self, at: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.at, self.calls = at, 0

    def step(self, inputs: Sequence[SeqInput]) -> StepOutput:
        self.calls += 1
        if self.calls == self.at:
            raise EngineError(f"scripted failure at call {self.at}")
        return super().step(inputs)


def run_worker(engine: FakeEngine, tokenizer: object = None, **config: int) -> tuple[Worker, Sink]:
    sink = Sink()
    w = Worker(sink)
    w.add_engine(engine, tokenizer or ByteTokenizer(), SchedulerConfig(**config))  # type: ignore[arg-type]
    w.start()
    return w, sink


def test_engine_failure_on_a_first_step_leaves_no_record() -> None:
    """A request whose first step the engine fails ends with a 503-type error and no record."""
    w, sink = run_worker(FailAt(1))
    try:
        first = submit(w, "x")
        assert first.wait(10)
        assert isinstance(first.outcome[0], Unavailable)  # type: ignore[attr-defined]
        assert "engine fake-engine failed" in str(first.outcome[0])  # type: ignore[attr-defined]
        assert sink.finished == []
        second = submit(w, "y")  # the fault cleared: the same worker serves again
        assert second.wait(10)
        assert [f.status for f in sink.finished] == [Status.LENGTH]
    finally:
        w.stop()


def test_engine_failure_fails_only_the_steps_requests() -> None:
    """A failed step fails the requests in it (one failed record each); waiting ones run on."""
    w, sink = run_worker(FailAt(3), max_batch=1)
    try:
        running = submit(w, "running", max_tokens=10)
        waiting = submit(w, "waiting", max_tokens=3)
        assert running.wait(10) and waiting.wait(10)
    finally:
        w.stop()
    by_id = {f.request.request_id: f for f in sink.finished}
    assert len(sink.finished) == 2
    assert by_id["running"].status == Status.FAILED
    assert "scripted failure" in (by_id["running"].request.error or "")
    assert by_id["waiting"].status == Status.LENGTH and by_id["waiting"].text == "bcd"


def submit_with(w: Worker, rid: str, **fields: object) -> threading.Event:
    done = threading.Event()
    outcome: list[object] = []

    def finish(o: object) -> None:
        outcome.append(o)
        done.set()

    done.outcome = outcome  # type: ignore[attr-defined]
    base: dict[str, object] = dict(
        request_id=rid, tenant_id="t", model="tiny-gpt", engine_id="fake-engine",
        tier=ServiceTier.DEFAULT, prompt_ids=[97], max_tokens=6, on_finish=finish,
    )  # fmt: skip
    base.update(fields)
    w.submit(GenerationRequest(**base))  # type: ignore[arg-type]
    return done


class SlowerFake(FakeEngine):
    def step(self, inputs: Sequence[SeqInput]) -> StepOutput:
        time.sleep(0.002)
        return super().step(inputs)


def test_a_requests_sampling_error_fails_that_request_only() -> None:
    """A request whose sampling raises fails alone; the request batched with it completes."""
    w, sink = run_worker(SlowerFake())
    try:
        good = submit_with(w, "good", max_tokens=8)
        bad = submit_with(w, "bad", sampling=SamplingParams(logit_bias=((10**6, 1.0),)))
        assert good.wait(10) and bad.wait(10)
    finally:
        w.stop()
    by_id = {f.request.request_id: f for f in sink.finished}
    assert by_id["bad"].status == Status.FAILED and "logit_bias" in (by_id["bad"].request.error or "")
    assert by_id["good"].status == Status.LENGTH and by_id["good"].text == "bcdefghi"
    # they really shared steps
    assert any({p.request_id for p in s.participants} == {"good", "bad"} for s in sink.steps)


class PickyTokenizer(ByteTokenizer):
    """Decoding token 200 raises: a broken tokenizer for one request's output only."""

    def decode(self, ids: Sequence[int]) -> str:
        if 200 in ids:
            raise UnicodeDecodeError("utf-8", b"\xc8", 0, 1, "scripted")
        return super().decode(ids)


def test_a_requests_decode_error_fails_that_request_only() -> None:
    """A request whose tokens cannot be decoded fails alone; the other streams on."""
    w, sink = run_worker(SlowerFake(), PickyTokenizer())
    try:
        good = submit_with(w, "good", max_tokens=5)
        bad = submit_with(w, "bad", prompt_ids=[198], max_tokens=5)  # outputs 199, 200, ...
        assert good.wait(10) and bad.wait(10)
    finally:
        w.stop()
    by_id = {f.request.request_id: f for f in sink.finished}
    assert by_id["bad"].status == Status.FAILED
    assert by_id["good"].status == Status.LENGTH and by_id["good"].text == "bcdef"


def test_a_failing_token_listener_fails_that_request_only() -> None:
    """A request whose on_token callback raises fails alone; the other completes."""

    def broken(event: TokenEvent) -> None:
        raise RuntimeError("listener gone")

    w, sink = run_worker(SlowerFake())
    try:
        good = submit_with(w, "good", max_tokens=5, on_token=lambda e: None)
        bad = submit_with(w, "bad", max_tokens=5, on_token=broken)
        assert good.wait(10) and bad.wait(10)
    finally:
        w.stop()
    by_id = {f.request.request_id: f for f in sink.finished}
    assert by_id["bad"].status == Status.FAILED
    assert by_id["good"].status == Status.LENGTH and by_id["good"].text == "bcdef"


def test_a_negative_seed_samples_reproducibly() -> None:
    """seed -1 (any int64) is a valid seed: two requests with it draw the same tokens."""
    w, sink = run_worker(FakeEngine())
    try:
        params = SamplingParams(temperature=2.0, seed=-1)
        a = submit_with(w, "a", sampling=params)
        b = submit_with(w, "b", sampling=params)
        assert a.wait(10) and b.wait(10)
    finally:
        w.stop()
    assert [f.status for f in sink.finished] == [Status.LENGTH, Status.LENGTH]
    assert sink.finished[0].text == sink.finished[1].text


class StepsCap:
    """A CostCap that allows ``steps`` steps and records what it was charged."""

    def __init__(self, steps: int) -> None:
        self.left = steps
        self.charged: list[tuple[int, int]] = []

    def charge(self, prefill_us: int, decode_us: int) -> None:
        self.charged.append((prefill_us, decode_us))

    def allows(self, prefill_tokens: int, decode_tokens: int) -> bool:
        self.left -= 1
        return self.left >= 0


class SharingSink(Sink):
    """A sink that attributes each step token-proportionally, as the metering pipeline does."""

    def on_step(self, step: StepRecord, kv_bytes: dict[str, int]) -> StepShares:
        super().on_step(step, kv_bytes)
        return attribute(step, TOKEN_PROPORTIONAL)


def test_a_cost_cap_stops_the_request_as_length_by_budget() -> None:
    """A request whose cap refuses its next step ends 'length', stopped_by budget, charged per step."""
    sink = SharingSink()
    w = Worker(sink)
    w.add_engine(FakeEngine(), ByteTokenizer(), SchedulerConfig())
    w.start()
    cap = StepsCap(3)
    try:
        done = submit_with(w, "capped", max_tokens=50, cap=cap)
        assert done.wait(10)
    finally:
        w.stop()
    [fin] = sink.finished
    assert fin.status == Status.LENGTH and fin.stopped_by == "budget"
    assert fin.completion_tokens == 3  # the prefill's token and two decode steps
    assert len(cap.charged) == 3 and cap.charged[0][1] == 0 and cap.charged[1][0] == 0
    assert sum(p + d for p, d in cap.charged) == sum(s.device_us for s in sink.steps)


def test_a_cap_that_refuses_the_first_step_leaves_no_record() -> None:
    """A request its cap stops before it ever ran ends with BudgetExceeded and no record."""
    w, sink = run_worker(FakeEngine())
    try:
        done = submit_with(w, "broke", cap=StepsCap(0))
        assert done.wait(10)
        after = submit_with(w, "fine")
        assert after.wait(10)
    finally:
        w.stop()
    assert isinstance(done.outcome[0], BudgetExceeded)  # type: ignore[attr-defined]
    assert [f.request.request_id for f in sink.finished] == ["fine"]


def test_flex_engine_gets_steps_while_default_is_busy(worker: tuple[Worker, Sink]) -> None:
    """Flex work on its own engine is slowed by default work, never starved."""
    w, sink = worker
    long = submit(w, "d", max_tokens=40)
    flex = submit(w, "f", engine="fake-int8", max_tokens=2, tier=ServiceTier.FLEX)
    assert flex.wait(10) and long.wait(10)
    order = [f.request.request_id for f in sink.finished]
    assert order == ["f", "d"]  # flex finished while the long default request still ran


def test_a_priority_engine_runs_ahead_of_a_default_one(worker: tuple[Worker, Sink]) -> None:
    """While an engine holds priority work, only it gets steps: a short default request waits."""
    w, sink = worker
    first = submit(w, "p", engine="fake-int8", max_tokens=20, tier=ServiceTier.PRIORITY)
    second = submit(w, "d", max_tokens=1)
    assert first.wait(10) and second.wait(10)
    assert [f.request.request_id for f in sink.finished] == ["p", "d"]
