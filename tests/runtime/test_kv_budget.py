"""A KV budget on a real engine: preempted sequences are recomputed and their text is unchanged.

The 2-layer test decoder on ONNX Runtime, driven by the worker with greedy sampling: a
budget of one context's worth of KV tokens forces the newest flex sequences out and back in,
and every request still ends with exactly the text it produces alone without a budget.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from infermeter.core.records import StepRecord
from infermeter.core.timing import NullTimer
from infermeter.core.types import ServiceTier
from infermeter.runtime.compile.testmodel import write_test_model
from infermeter.runtime.ort_backend import OrtEngine
from infermeter.runtime.sampling import SamplingParams
from infermeter.runtime.scheduler import SchedulerConfig
from infermeter.runtime.tokenizer import load_tokenizer
from infermeter.runtime.worker import FinishedRequest, GenerationRequest, Worker

PROMPTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Files and directories hold the data.",
    "Return the number of items in a container.",
    "Every request is billed by the device time it used.",
)


class Sink:
    def __init__(self) -> None:
        self.steps: list[StepRecord] = []

    def on_step(self, step: StepRecord, kv_bytes: dict[str, int]) -> None:
        self.steps.append(step)

    def on_finish(self, finished: FinishedRequest) -> None:
        if finished.request.on_finish is not None:
            finished.request.on_finish(finished)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_model(tmp_path_factory.mktemp("model"))


def run(model: Path, budget: int | None) -> tuple[dict[str, str], Sink]:
    """Each prompt's text (ids p0..p3, p2 and p3 flex) with the given KV budget."""
    engine = OrtEngine.load(model, timer=NullTimer(), intra_op_threads=1)
    tokenizer = load_tokenizer(model)
    sink = Sink()
    worker = Worker(sink)
    config = SchedulerConfig(max_batch=8, max_seq_len=128, kv_budget_tokens=budget)
    worker.add_engine(engine, tokenizer, config)
    texts: dict[str, str] = {}
    done = threading.Semaphore(0)

    def finish(outcome: object) -> None:
        assert isinstance(outcome, FinishedRequest), outcome
        texts[outcome.request.request_id] = outcome.text
        done.release()

    worker.start()
    try:
        for i, prompt in enumerate(PROMPTS):
            worker.submit(
                GenerationRequest(
                    request_id=f"p{i}", tenant_id="t", model=engine.info.model,
                    engine_id=engine.info.engine_id,
                    tier=ServiceTier.FLEX if i >= 2 else ServiceTier.DEFAULT,
                    prompt_ids=tokenizer.encode(prompt), max_tokens=60,
                    sampling=SamplingParams(temperature=0.0), on_finish=finish,
                )
            )  # fmt: skip
        for _ in PROMPTS:
            assert done.acquire(timeout=60)
    finally:
        worker.stop()
    return texts, sink


def prefills(sink: Sink, request_id: str) -> int:
    """How many steps prefilled tokens of ``request_id`` (1 unless it was recomputed)."""
    return sum(
        1 for s in sink.steps for p in s.participants if p.request_id == request_id and p.prefill_tokens
    )


def test_preempted_sequences_finish_with_the_text_they_give_without_a_budget(model: Path) -> None:
    """With 128 KV tokens for four prompts of ~10 tokens plus 60 new each, flex sequences are
    preempted and recomputed (prefilled more than once); every text equals the unbudgeted
    run's, where each request prefilled once."""
    unlimited, free = run(model, None)
    budgeted, tight = run(model, 128)
    assert budgeted == unlimited
    assert [prefills(free, f"p{i}") for i in range(4)] == [1, 1, 1, 1]
    assert prefills(tight, "p2") + prefills(tight, "p3") > 2
    assert prefills(tight, "p0") == 1  # the oldest default request is never preempted
