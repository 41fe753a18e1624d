"""The official openai client against a real server on loopback (FakeEngine and built-in model)."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from tests.conftest import LiveServer


def _metering(usage: object) -> dict[str, object]:
    extra = getattr(usage, "model_extra", None) or {}
    metering = extra.get("metering") if isinstance(extra, dict) else None
    assert isinstance(metering, dict), f"usage has no metering: {usage}"
    return metering


def test_chat_completion_carries_metering(fake_server: LiveServer) -> None:
    """A chat completion's usage has token counts and a metering block with a decimal cost."""
    client = fake_server.client()
    resp = client.chat.completions.create(
        model="tiny-gpt", messages=[{"role": "user", "content": "hello"}], max_tokens=5
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    m = _metering(resp.usage)
    assert set(m) >= {
        "record_id",
        "device",
        "engine_id",
        "precision",
        "service_tier",
        "device_ms",
        "ru",
        "cost",
        "currency",
    }
    assert m["service_tier"] == "default" and resp.service_tier == "default"
    assert isinstance(m["cost"], str) and Decimal(m["cost"]) > 0
    assert isinstance(m["device_ms"], int | float) and m["device_ms"] > 0


def test_completion_endpoint(fake_server: LiveServer) -> None:
    """/v1/completions returns text and metering for a plain prompt."""
    resp = fake_server.client().completions.create(model="tiny-gpt", prompt="abc", max_tokens=3)
    assert resp.choices[0].text == "def"  # the fake engine counts upwards from the last byte
    assert resp.usage is not None and resp.usage.prompt_tokens == 3
    _metering(resp.usage)


def test_streaming_with_include_usage(fake_server: LiveServer) -> None:
    """A stream yields content deltas, then a final usage chunk with metering, then ends."""
    stream = fake_server.client().chat.completions.create(
        model="tiny-gpt",
        messages=[{"role": "user", "content": "abc"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text) == 4
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    m = _metering(chunks[-1].usage)
    record = fake_server.service.store.get_record(str(m["record_id"]))
    assert record is not None and record.completion_tokens == 4


def test_streaming_without_usage_has_no_usage_chunk(fake_server: LiveServer) -> None:
    """Without include_usage no chunk carries usage, as in OpenAI's API."""
    stream = fake_server.client().completions.create(model="tiny-gpt", prompt="a", max_tokens=2, stream=True)
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == "bc"


def test_flex_tier_is_echoed_and_cheaper_per_ru(fake_server: LiveServer) -> None:
    """service_tier=flex runs and is echoed; its price per RU is below default's."""
    client = fake_server.client()
    args = {"model": "tiny-gpt", "messages": [{"role": "user", "content": "same prompt"}], "max_tokens": 6}
    flex = client.chat.completions.create(service_tier="flex", **args)
    default = client.chat.completions.create(**args)
    assert flex.service_tier == "flex"
    mf, md = _metering(flex.usage), _metering(default.usage)
    assert mf["service_tier"] == "flex"
    per_ru_flex = Decimal(str(mf["cost"])) / Decimal(str(mf["ru"]))
    per_ru_default = Decimal(str(md["cost"])) / Decimal(str(md["ru"]))
    assert per_ru_flex < per_ru_default


def test_models_lists_the_builtin_model(fake_server: LiveServer) -> None:
    """GET /v1/models lists the served model."""
    ids = [m.id for m in fake_server.client().models.list()]
    assert ids == ["tiny-gpt"]


def test_invalid_key_is_401(fake_server: LiveServer) -> None:
    """A wrong key is refused by the client with AuthenticationError."""
    client = openai.OpenAI(base_url=fake_server.base_url, api_key="im-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_builtin_model_end_to_end(ort_server: LiveServer) -> None:
    """The real built-in model on ONNX Runtime: chat, streaming and metering with real device time."""
    client = ort_server.client()
    resp = client.chat.completions.create(
        model="tiny-gpt",
        messages=[{"role": "user", "content": "Tell me about files."}],
        max_tokens=8,
        temperature=0,
    )
    m = _metering(resp.usage)
    assert m["engine_id"] and m["precision"] in ("fp32", "int8") and m["device"] == "cpu"
    assert resp.usage is not None and resp.usage.completion_tokens <= 8
    assert float(str(m["device_ms"])) > 0
    stream = client.completions.create(
        model="tiny-gpt",
        prompt="The",
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
    )
    chunks = list(stream)
    assert _metering(chunks[-1].usage)["record_id"]
