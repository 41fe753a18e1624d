"""A model added from a GGUF, served for real: HTTP API, worker, scheduler, metering, ledger.

The server runs SmolLM2-135M-Instruct on its transformers FP32 (default) and weight-only
INT8 (flex) engines, next to the built-in model, with a small prefill chunk and token
budget so prompts are prefilled in chunks mixed with other sequences' decode steps. Each
engine is wrapped in a recorder of the device time of every step it ran, to check
conservation against the ledger.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from decimal import Decimal
from statistics import median
from typing import Any, cast

import pytest

from infermeter.app.engines import gate_refusal, load_default_engines
from infermeter.app.service import Service
from infermeter.config import load_settings
from infermeter.core.types import Precision
from infermeter.metering.timers import CpuStepTimer
from infermeter.runtime.engine import Engine, LoadedEngine, SeqInput, StepOutput
from infermeter.runtime.engine_store import EngineStore
from tests.conftest import LiveServer, run_server
from tests.smollm2 import MODEL, imported_home

PARIS = [{"role": "user", "content": "What is the capital of France?"}]
PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "1, 2, 3, 4,",
    "The three primary colors are",
)


class StepLog:
    """An engine that runs every step on the real engine and keeps each step's device time."""

    def __init__(self, engine: Engine) -> None:
        self.inner = engine
        self.info = engine.info
        self.timer = engine.timer
        self.device_us: list[int] = []

    def step(self, inputs: Sequence[SeqInput]) -> StepOutput:
        out = self.inner.step(inputs)
        self.device_us.append(out.device_us)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    home = imported_home()
    settings = load_settings(
        {"home": home, "warmup_steps": 2, "prefill_chunk": 8, "token_budget": 24, "max_batch": 8}, env={}
    )
    loaded = [
        LoadedEngine(StepLog(x.engine), x.tokenizer) for x in load_default_engines(settings, CpuStepTimer)
    ]
    yield from run_server(Service(settings, loaded))


def chat(live: LiveServer, tier: str) -> tuple[str, dict[str, Any]]:
    resp = live.client().chat.completions.create(
        model=MODEL, messages=PARIS, max_tokens=16, temperature=0, service_tier=tier
    )
    assert resp.usage is not None and resp.usage.model_extra is not None
    return resp.choices[0].message.content or "", resp.usage.model_extra["metering"]


def test_the_models_endpoint_lists_the_added_model(live: LiveServer) -> None:
    """GET /v1/models names smollm2 next to the built-in model."""
    assert MODEL in {m.id for m in live.client().models.list().data}


@pytest.mark.parametrize(("tier", "precision"), [("default", "fp32"), ("flex", "int8")])
def test_the_chat_answer_names_paris_on_both_tiers(live: LiveServer, tier: str, precision: str) -> None:
    """Through the model's own chat template, both engines answer that the capital is Paris."""
    text, metering = chat(live, tier)
    assert "Paris" in text
    assert metering["precision"] == precision and "-transformers-" in metering["engine_id"]
    assert metering["device_ms"] > 0 and Decimal(metering["cost"]) > 0


def test_flex_is_cheaper_per_token_than_default(live: LiveServer) -> None:
    """Same request interleaved, medians: the INT8 engine's cost per completion token is lower."""
    per_token: dict[str, list[Decimal]] = {"flex": [], "default": []}
    for _ in range(3):
        for tier in per_token:
            resp = live.client().chat.completions.create(
                model=MODEL, messages=PARIS, max_tokens=16, temperature=0, service_tier=tier
            )
            assert resp.usage is not None and resp.usage.model_extra is not None
            cost = Decimal(resp.usage.model_extra["metering"]["cost"])
            per_token[tier].append(cost / resp.usage.completion_tokens)
    assert median(per_token["flex"]) < median(per_token["default"])


def test_a_mixed_batched_workload_equals_generate_for_each_prompt_alone(live: LiveServer) -> None:
    """Prompts of different lengths arriving at different steps, greedy, continuously batched:
    each completion is exactly what transformers' own generate gives for that prompt alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    [fp32] = [e for e in live.service.engine_infos() if e.model == MODEL and e.precision == Precision.FP32]
    model_dir = fp32.extra["model_dir"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    expected = []
    for prompt in PROMPTS:
        ids = torch.tensor([tok(prompt).input_ids])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
        expected.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    got: dict[int, str] = {}

    def send(i: int) -> None:
        resp = live.client().completions.create(model=MODEL, prompt=PROMPTS[i], max_tokens=20, temperature=0)
        got[i] = resp.choices[0].text

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(PROMPTS))]
    for thread in threads:  # staggered arrivals: later prompts join a batch already decoding
        thread.start()
        time.sleep(0.3)
    for thread in threads:
        thread.join(120)
    assert [got.get(i) for i in range(len(PROMPTS))] == expected


def test_metering_conserves_every_steps_device_time(live: LiveServer) -> None:
    """Σ billed + warm-up + unattributed device time == Σ every engine's measured steps."""
    chat(live, "default")
    chat(live, "flex")
    svc = live.service
    measured = sum(sum(cast(StepLog, w.engine).device_us) for w in svc._engines)  # live wraps each engine
    records = [r for _, r in svc.store.list_records(None, limit=100_000, include_warmup=True)]
    billed = sum(r.device_us for r in records if not r.warmup)
    warm = sum(r.device_us for r in records if r.warmup)
    book = svc.pipeline.book
    assert warm == book.warmup_us
    assert billed + warm + book.unattributed_us == measured


def test_an_engine_that_failed_its_gate_is_kept_out_of_serving() -> None:
    """The INT8 record with a failing gate (and not forced) is refused, with the reason."""
    store = EngineStore(imported_home())
    try:
        [int8] = [r for r in store.list(MODEL) if r.precision == Precision.INT8]
    finally:
        store.close()
    assert gate_refusal(int8) is None
    failed = {**int8.options["gate"], "passed": False, "reasons": ["greedy agreement 50.0% is below 90%"]}
    assert gate_refusal(replace(int8, options={**int8.options, "gate": failed})) == failed["reasons"][0]
    forced = {**failed, "forced": True}
    assert gate_refusal(replace(int8, options={**int8.options, "gate": forced})) is None
