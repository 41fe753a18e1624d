"""The economy tier is real: a live server with FP32 and INT8 engines of two models.

flex runs on the INT8 engine and costs less than the same request on default; the response
and the ledger show device time and price; an over-long prompt is refused with the limit
named and counted in /metrics; warm-up is platform overhead on no tenant's bill.

Every INT8 engine passes the economy gate (drift and speed against FP32) before it serves.
The built-in tiny-gpt's is built by serve itself, gated as any: its weight-only INT8 measured
1.05-1.2x faster than FP32 on the shared 2-core test machine with 100 % greedy agreement, so
it passes. Should the gate refuse it on some machine, flex runs on FP32 there; the tests
that need flex on INT8 then skip, naming the gate's reasons, and
``test_a_refused_builtin_int8_leaves_flex_on_fp32`` checks that fallback instead. The 2-layer
user model's INT8 is no faster than its FP32 (0.08 ms/token both), which the gate refuses, so
the fixture builds it with ``force`` as an operator serving it anyway would.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from statistics import median
from typing import Any

import httpx
import pytest

from infermeter.app.engines import gate_refusal
from infermeter.app.service import Service
from infermeter.config import load_settings
from infermeter.core.types import Precision
from infermeter.runtime.compile.builder import build_engine, source_spec
from infermeter.runtime.compile.metadata import BuildArgs
from infermeter.runtime.compile.testmodel import write_test_model
from infermeter.runtime.engine_store import EngineStore
from tests.conftest import LiveServer, run_server

PROMPT = [{"role": "user", "content": "Write about files and directories."}]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """serve --model-dir: the built-in model and a user model, FP32 + INT8 each."""
    model = write_test_model(tmp_path_factory.mktemp("user-model"))
    home = tmp_path_factory.mktemp("flex-home")
    settings = load_settings({"home": home, "warmup_steps": 2, "model_dir": str(model)}, env={})
    store = EngineStore(home)
    try:  # the user model's INT8, forced (see the module docstring); serve finds it current
        args = BuildArgs(source_spec(str(model)), "onnxruntime", Precision.INT8, settings.max_batch, 128)
        build_engine(args, store, models_dir=settings.models_dir, force=True)
    finally:
        store.close()
    yield from run_server(Service.from_settings(settings))


def builtin_refusal(live: LiveServer) -> str | None:
    """Why the gate refused tiny-gpt's INT8 build here, or None when it passed."""
    store = EngineStore(Path(live.service.home))
    try:
        (int8,) = [r for r in store.list("tiny-gpt") if r.precision == Precision.INT8]
    finally:
        store.close()
    return gate_refusal(int8)


@pytest.fixture
def builtin_int8(live: LiveServer) -> None:
    """Skip, naming the gate's reasons, when tiny-gpt's INT8 was refused on this machine."""
    if (refusal := builtin_refusal(live)) is not None:
        pytest.skip(f"the economy gate refused tiny-gpt's INT8 here ({refusal}); flex runs on FP32")


def get(live: LiveServer, path: str, key: str | None = None, **params: Any) -> httpx.Response:
    return httpx.get(
        live.url + path,
        params=params,
        timeout=30,
        headers={"authorization": f"Bearer {key or live.keys['alpha']}"},
    )


def chat(live: LiveServer, tier: str, model: str = "tiny-gpt", **kw: Any) -> dict[str, Any]:
    resp = live.client().chat.completions.create(
        model=model, messages=PROMPT, max_tokens=12, temperature=0, service_tier=tier, **kw
    )
    assert resp.service_tier == tier
    assert resp.usage is not None and resp.usage.model_extra is not None
    metering: dict[str, Any] = resp.usage.model_extra["metering"]
    return metering


def refusals(live: LiveServer, reason: str) -> float:
    return live.service.metrics.value("infermeter_refusals_total", {"reason": reason})


def test_a_refused_builtin_int8_leaves_flex_on_fp32(live: LiveServer) -> None:
    """Where the gate refused tiny-gpt's INT8, flex runs on the FP32 engine (skips where it
    passed, as it does on the test machine)."""
    if builtin_refusal(live) is None:
        pytest.skip("the economy gate passed tiny-gpt's INT8 here; flex runs on INT8")
    assert chat(live, "flex")["precision"] == "fp32"


@pytest.mark.usefixtures("builtin_int8")
def test_both_engines_of_both_models_are_served(live: LiveServer) -> None:
    """/v1/models lists both models; each has an FP32 and an INT8 engine."""
    models = {m.id for m in live.client().models.list().data}
    assert models >= {"tiny-gpt", "tiny-user"}
    kinds = sorted((e.model, e.precision.value) for e in live.service.engine_infos())
    assert kinds == [("tiny-gpt", "fp32"), ("tiny-gpt", "int8"), ("tiny-user", "fp32"), ("tiny-user", "int8")]


@pytest.mark.usefixtures("builtin_int8")
def test_flex_runs_on_int8_and_costs_less_than_default(live: LiveServer) -> None:
    """Same request, interleaved: flex on INT8 costs less than default on FP32 (medians, so
    one neighbour's load spike on a shared machine cannot decide it)."""
    flex, default = [], []
    for _ in range(5):
        flex.append(chat(live, "flex"))
        default.append(chat(live, "default"))
    assert {m["precision"] for m in flex} == {"int8"}
    assert {m["precision"] for m in default} == {"fp32"}
    assert all("-int8-" in m["engine_id"] for m in flex)
    assert all(m["device_ms"] > 0 and Decimal(m["cost"]) > 0 for m in flex + default)
    assert median(Decimal(m["cost"]) for m in flex) < median(Decimal(m["cost"]) for m in default)


@pytest.mark.usefixtures("builtin_int8")
def test_the_ledger_shows_the_same_device_time_and_price(live: LiveServer) -> None:
    """The stored record of a flex request carries the response's engine, time and cost."""
    m = chat(live, "flex")
    record = get(live, f"/v1/usage/records/{m['record_id']}").json()
    assert record["engine_id"] == m["engine_id"] and record["precision"] == "int8"
    assert record["service_tier"] == "flex" and record["warmup"] is False
    assert Decimal(record["cost"]) == Decimal(m["cost"])
    assert Decimal(record["device_ms"]) == Decimal(str(m["device_ms"])).quantize(Decimal("0.001"))


def test_a_user_model_serves_flex_on_its_int8_engine(live: LiveServer) -> None:
    """The user model's own tokenizer encodes the prompt; flex runs on its INT8 engine."""
    m = chat(live, "flex", model="tiny-user")
    assert m["engine_id"].startswith("tiny-user-onnxruntime-int8-")
    assert chat(live, "default", model="tiny-user")["precision"] == "fp32"


@pytest.mark.usefixtures("builtin_int8")
@pytest.mark.parametrize(("model", "limit"), [("tiny-gpt", "1,023"), ("tiny-user", "127")])
def test_an_over_long_prompt_is_refused_with_the_limit_named(
    live: LiveServer, model: str, limit: str
) -> None:
    """A prompt beyond the engine's context is a 400 naming the limit, counted, never billed."""
    before = refusals(live, "context_length_exceeded")
    records = len(get(live, "/v1/usage/records", limit=500).json()["data"])
    resp = httpx.post(
        live.url + "/v1/chat/completions",
        timeout=30,
        headers={"authorization": f"Bearer {live.keys['alpha']}"},
        json={
            "model": model,
            "service_tier": "flex",
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "word " * 600}],
        },
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert f"accepts at most {limit} prompt tokens" in error["message"]
    assert "-int8-" in error["message"]  # the flex engine's own limit
    assert refusals(live, "context_length_exceeded") == before + 1
    assert len(get(live, "/v1/usage/records", limit=500).json()["data"]) == records
    admin = {"authorization": f"Bearer {live.admin_key}"}
    text = httpx.get(live.url + "/metrics", headers=admin, timeout=30).text
    assert 'infermeter_refusals_total{reason="context_length_exceeded"}' in text


@pytest.mark.usefixtures("builtin_int8")
def test_warm_up_is_overhead_on_no_invoice(live: LiveServer) -> None:
    """Each engine's warm-up is in /metrics and the operator view, priced 0, on no bill."""
    chat(live, "flex")
    infos = {i.engine_id: i for i in live.service.engine_infos()}
    int8 = next(e for e, i in infos.items() if i.model == "tiny-gpt" and i.precision == "int8")
    metrics = live.service.metrics
    assert metrics.value("infermeter_engine_device_ms_total", {"engine": int8, "use": "warmup"}) > 0
    overview = get(live, "/v1/admin/overview", key=live.admin_key).json()
    engines = {e["engine_id"]: e for e in overview["engines"]}
    assert set(engines) == set(infos)
    assert all(e["ledger_warmup_ms"] > 0 and e["device_ms"]["warmup"] > 0 for e in engines.values())
    records = get(live, "/v1/usage/records", limit=500).json()["data"]
    assert records and not any(r["warmup"] for r in records)
    period = datetime.now(UTC).strftime("%Y-%m")
    invoice = get(live, f"/v1/invoices/{period}").json()
    assert Decimal(invoice["exact_total"]) == sum(Decimal(r["cost"]) for r in records)
    assert sum(line["requests"] for line in invoice["lines"]) == len(records)
    admin = get(live, "/v1/admin/usage", key=live.admin_key).json()
    assert "platform" not in {row["key"] for row in admin["data"]}


def test_first_start_built_the_engines_into_the_index(live: LiveServer) -> None:
    """The engines served are the indexed ones, under the service's home."""
    from infermeter.runtime.engine_store import EngineStore

    store = EngineStore(Path(live.service.home))
    try:
        indexed = {r.engine_id for r in store.list()}
    finally:
        store.close()
    assert indexed == {i.engine_id for i in live.service.engine_infos()}
