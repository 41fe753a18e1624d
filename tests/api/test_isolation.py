"""One tenant cannot hurt another: any parameter value fails (at most) its own request."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infermeter.app.service import Service
from infermeter.config import load_settings
from infermeter.core.errors import EngineError
from infermeter.runtime.engine import LoadedEngine, SeqInput, StepOutput
from infermeter.runtime.fake_engine import FakeEngine
from infermeter.runtime.tokenizer import ByteTokenizer
from tests.conftest import LiveServer, fake_service, run_server


class SlowFake(FakeEngine):
    """Steps take real time, so the two tenants' requests share steps."""

    def step(self, inputs: Sequence[SeqInput]) -> StepOutput:
        time.sleep(0.002)
        return super().step(inputs)


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from run_server(fake_service(tmp_path_factory.mktemp("iso") / "h", SlowFake()))


ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)  # surrogates too
ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    ANY_TEXT,
)
IN_RANGE_FLOAT = st.floats(-2.5, 2.5)
FUZZ = st.fixed_dictionaries(
    {},
    optional={
        "seed": st.one_of(st.integers(-(2**64), 2**64), ANY),
        "temperature": st.one_of(st.floats(0, 2), st.just(5e-324), ANY),
        "top_p": st.one_of(st.floats(0, 1), st.just(5e-324), ANY),
        "presence_penalty": st.one_of(IN_RANGE_FLOAT, ANY),
        "frequency_penalty": st.one_of(IN_RANGE_FLOAT, ANY),
        "logit_bias": st.one_of(
            st.dictionaries(
                st.one_of(st.integers(-5, 300).map(str), ANY_TEXT),
                st.one_of(st.floats(-100, 100), st.integers(-200, 200), ANY),
                max_size=4,
            ),
            ANY,
        ),
        "n": st.one_of(st.integers(-2, 3), ANY),
        "max_tokens": st.one_of(st.integers(-2, 40), st.integers(), ANY),
        "stop": st.one_of(ANY_TEXT, st.lists(ANY_TEXT, max_size=5), ANY),
        "prompt": st.one_of(ANY_TEXT, st.lists(ANY_TEXT, max_size=2), ANY),
        "stream": st.one_of(st.booleans(), ANY),
        "logprobs": st.one_of(st.integers(-1, 6), ANY),
        "service_tier": st.one_of(st.sampled_from(["default", "flex", "auto"]), ANY),
    },
)


def _post(live: LiveServer, tenant: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        live.url + "/v1/completions",
        content=json.dumps(body).encode(),  # NaN and lone surrogates go out as a lax client sends them
        headers={"authorization": f"Bearer {live.keys[tenant]}", "content-type": "application/json"},
        timeout=60,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(FUZZ)
def test_no_parameter_value_fails_another_tenants_request(
    slow_server: LiveServer, fuzz: dict[str, Any]
) -> None:
    """Whatever alpha sends, alpha gets a 2xx or 4xx and beta's concurrent request completes."""
    victim = {"model": "tiny-gpt", "prompt": "a", "max_tokens": 20, "temperature": 0}
    attack = {"model": "tiny-gpt", "prompt": "b", "max_tokens": 8, **fuzz}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        beta = pool.submit(_post, slow_server, "beta", victim)
        alpha = pool.submit(_post, slow_server, "alpha", attack)
        attacked, served = alpha.result(), beta.result()
    assert attacked.status_code < 500, attacked.text
    assert served.status_code == 200, served.text
    body = served.json()
    assert body["choices"][0]["text"] == "bcdefghijklmnopqrstu"
    assert body["usage"]["metering"]["status"] == "length"


class BlockingTokenizer(ByteTokenizer):
    """encode() of a prompt containing BLOCK waits until the test releases it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def encode(self, text: str) -> list[int]:
        if "BLOCK" in text:
            self.entered.set()
            self.release.wait(30)
        return super().encode(text)


def test_tokenizing_a_prompt_does_not_block_the_event_loop(
    tmp_path: Path, server_factory: Callable[..., LiveServer]
) -> None:
    """While one prompt is being tokenized, /healthz and other requests are answered."""
    tokenizer = BlockingTokenizer()
    cfg = load_settings({"home": tmp_path / "h", "warmup_steps": 0}, env={})
    live = server_factory(Service(cfg, [LoadedEngine(FakeEngine(), tokenizer)]))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(_post, live, "alpha", {"model": "tiny-gpt", "prompt": "BLOCK", "max_tokens": 2})
        assert tokenizer.entered.wait(30)
        try:
            assert httpx.get(live.url + "/healthz", timeout=10).status_code == 200
            other = _post(live, "beta", {"model": "tiny-gpt", "prompt": "a", "max_tokens": 2})
            assert other.status_code == 200
        finally:
            tokenizer.release.set()
        assert slow.result().status_code == 200


class FailsOnce(FakeEngine):
    """The second call to step raises (an engine-wide fault), then the engine works again."""

    calls = 0

    def step(self, inputs: Sequence[SeqInput]) -> StepOutput:
        self.calls += 1
        if self.calls == 2:
            raise EngineError("scripted device fault")
        return super().step(inputs)


def test_an_engine_fault_on_a_first_step_is_a_503_with_no_record(
    tmp_path: Path, server_factory: Callable[..., LiveServer]
) -> None:
    """The request whose first step failed gets a 503 naming the engine; no record, no hold."""
    cfg = load_settings({"home": tmp_path / "h", "warmup_steps": 0}, env={})
    live = server_factory(Service(cfg, [LoadedEngine(FailsOnce(), ByteTokenizer())]))
    ok = _post(live, "alpha", {"model": "tiny-gpt", "prompt": "a", "max_tokens": 1})  # call 1
    assert ok.status_code == 200
    failed = _post(live, "beta", {"model": "tiny-gpt", "prompt": "a", "max_tokens": 3})  # call 2
    assert failed.status_code == 503
    assert "engine fake-engine failed" in failed.json()["error"]["message"]
    store = live.service.store
    store.flush()
    assert store.list_records(live.tenant_ids["beta"]) == []
    assert live.service.budgets.snapshot(live.tenant_ids["beta"])[2] == 0
    again = _post(live, "beta", {"model": "tiny-gpt", "prompt": "a", "max_tokens": 3})
    assert again.status_code == 200
