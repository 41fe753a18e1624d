"""The worker loop, driven with the fake engine and a recording sink (no metering, no HTTP)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from infermeter.core.records import StepRecord
from infermeter.core.types import ServiceTier, Status
from infermeter.runtime.engine import SeqInput, StepOutput
from infermeter.runtime.fake_engine import FakeEngine, fake_engine_info
from infermeter.runtime.scheduler import SchedulerConfig
from infermeter.runtime.tokenizer import ByteTokenizer
from infermeter.runtime.worker import FinishedRequest, GenerationRequest, Worker


class Sink:
    """Records steps and finishes; answers each request's on_finish with its FinishedRequest."""

    def __init__(self) -> None:
        self.steps: list[StepRecord] = []
        self.finished: list[FinishedRequest] = []

    def on_step(self, step: StepRecord, kv_bytes: dict[str, int]) -> None:
        self.steps.append(step)

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


def test_engine_failure_fails_its_requests_only() -> None:
    """An engine that raises fails its running requests (status failed); the worker keeps going."""
    sink = Sink()
    w = Worker(sink)
    engine = FakeEngine(fail_at_step=1)
    w.add_engine(engine, ByteTokenizer(), SchedulerConfig())
    w.start()
    try:
        first = submit(w, "x")
        assert first.wait(10)
        assert sink.finished[0].status == Status.FAILED
        engine.fail_at_step = None  # the fault clears; the same worker serves again
        second = submit(w, "y")
        assert second.wait(10)
        assert sink.finished[1].status == Status.LENGTH
    finally:
        w.stop()


def test_flex_engine_gets_steps_while_default_is_busy(worker: tuple[Worker, Sink]) -> None:
    """Flex work on its own engine is slowed by default work, never starved."""
    w, sink = worker
    long = submit(w, "d", max_tokens=40)
    flex = submit(w, "f", engine="fake-int8", max_tokens=2, tier=ServiceTier.FLEX)
    assert flex.wait(10) and long.wait(10)
    order = [f.request.request_id for f in sink.finished]
    assert order == ["f", "d"]  # flex finished while the long default request still ran
