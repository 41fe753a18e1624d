"""Router: model, tier and shape pick the engine; anything outside every limit is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.core.errors import ContextTooLong, ShapeOutsideProfiles, UnknownModel
from infermeter.core.types import Precision, ServiceTier
from infermeter.runtime.compile.profiles import plan_profiles, request_fit
from infermeter.runtime.engine import EngineInfo, ShapeProfile
from infermeter.runtime.fake_engine import fake_engine_info
from infermeter.runtime.router import Router, refusal_for, tier_pool

DEFAULT, FLEX = ServiceTier.DEFAULT, ServiceTier.FLEX


def engine(
    precision: Precision, device: str = "cpu", model: str = "tiny-gpt", **changes: object
) -> EngineInfo:
    info = fake_engine_info(
        engine_id=f"{model}-{precision.value}-{device}", model=model, precision=precision, device=device
    )
    fields: dict[str, object] = {"profiles": plan_profiles(16, 1024), **changes}
    return replace(info, **fields)  # type: ignore[arg-type]


FP32, INT8 = engine(Precision.FP32), engine(Precision.INT8)


def test_unknown_model_lists_the_models_served() -> None:
    """An unknown model is a 404 naming what is served."""
    with pytest.raises(
        UnknownModel,
        match=r"'gpt-9' does not exist; models served here: "
        r"other, tiny-gpt \(GET /v1/models\)",
    ):
        Router([FP32, engine(Precision.FP32, model="other")]).route("gpt-9", DEFAULT, 5, 5)


def test_default_runs_fp32_on_cpu_and_flex_runs_int8() -> None:
    """On the CPU, default takes FP32 and flex takes the INT8 economy engine."""
    router = Router([INT8, FP32])
    assert router.route("tiny-gpt", DEFAULT, 10, 10).engine is FP32
    route = router.route("tiny-gpt", FLEX, 10, 10)
    assert route.engine is INT8 and route.tier == FLEX


def test_priority_runs_the_performance_engine_never_int8() -> None:
    """priority takes the same engine as default, never the INT8 economy one."""
    route = Router([INT8, FP32]).route("tiny-gpt", ServiceTier.PRIORITY, 10, 10)
    assert route.engine is FP32 and route.tier == ServiceTier.PRIORITY


def test_without_int8_flex_runs_the_performance_engine() -> None:
    """No INT8 engine loaded: flex runs FP32 (at flex priority and price)."""
    assert Router([FP32]).route("tiny-gpt", FLEX, 10, 10).engine is FP32


def test_default_never_runs_int8_while_another_precision_is_loaded() -> None:
    """Only when INT8 is all there is does default run on it."""
    assert Router([INT8]).route("tiny-gpt", DEFAULT, 10, 10).engine is INT8
    assert Router([INT8, FP32]).route("tiny-gpt", DEFAULT, 10, 10).engine is FP32


def test_gpu_fp16_is_the_performance_engine() -> None:
    """default prefers a GPU engine, FP16 first; on the CPU FP32 comes before FP16."""
    gpu16, gpu32 = engine(Precision.FP16, "cuda:0"), engine(Precision.FP32, "cuda:0")
    cpu16 = engine(Precision.FP16)
    assert Router([FP32, gpu32, gpu16]).route("tiny-gpt", DEFAULT, 5, 5).engine is gpu16
    assert Router([FP32, gpu32]).route("tiny-gpt", DEFAULT, 5, 5).engine is gpu32
    assert Router([cpu16, FP32]).route("tiny-gpt", DEFAULT, 5, 5).engine is FP32


def test_an_over_long_prompt_names_the_limit() -> None:
    """A prompt at or beyond the context is refused with the engine's limit in the message."""
    with pytest.raises(ContextTooLong) as err:
        Router([FP32, INT8]).route("tiny-gpt", FLEX, 2000, 10)
    assert err.value.param == "messages"
    assert err.value.message == (
        "prompt has 2,000 tokens; engine tiny-gpt-int8-cpu (tiny-gpt/int8) accepts at most "
        "1,023 prompt tokens (context 1,024); shorten the prompt"
    )


def test_prompt_plus_max_tokens_beyond_the_context_names_the_largest_max_tokens() -> None:
    """max_tokens that would overrun the context says how far to lower it."""
    with pytest.raises(ContextTooLong, match="lower max_tokens to at most 24") as err:
        Router([FP32]).route("tiny-gpt", DEFAULT, 1000, 100)
    assert err.value.param == "max_tokens"


def test_a_shape_outside_every_profile_is_refused() -> None:
    """Decode profiles that stop short of the request: a 400 naming the past limit."""
    narrow = replace(
        FP32,
        profiles=(
            ShapeProfile("prefill", 1, 1, 16, 2, 64, 512, 0),
            ShapeProfile("decode-past-256", 1, 16, 16, 1, 1, 1, 256),
        ),
    )
    with pytest.raises(
        ShapeOutsideProfiles,
        match=r"admit at most 256; lower max_tokens to at "
        r"most 58",
    ) as err:
        Router([narrow]).route("tiny-gpt", DEFAULT, 200, 100)
    assert err.value.param == "max_tokens"
    assert Router([narrow]).route("tiny-gpt", DEFAULT, 200, 58).engine is narrow
    with pytest.raises(ShapeOutsideProfiles, match="prefill at most 512"):
        Router([narrow]).route("tiny-gpt", DEFAULT, 600, 2)


def test_the_next_engine_of_the_tier_runs_what_the_first_cannot() -> None:
    """A request the preferred engine's profiles refuse runs on another engine of its pool."""
    gpu16 = engine(Precision.FP16, "cuda:0", max_seq_len=256, profiles=plan_profiles(16, 256))
    router = Router([gpu16, FP32])
    assert router.route("tiny-gpt", DEFAULT, 100, 50).engine is gpu16
    assert router.route("tiny-gpt", DEFAULT, 500, 50).engine is FP32


def test_engines_lists_by_model() -> None:
    """engines() returns every engine, or one model's."""
    other = engine(Precision.FP32, model="other")
    router = Router([FP32, INT8, other])
    assert router.models() == ["other", "tiny-gpt"]
    assert router.engines("tiny-gpt") == [FP32, INT8] and len(router.engines()) == 3


ENGINES = [
    FP32,
    INT8,
    engine(Precision.FP16, "cuda:0", max_seq_len=256, profiles=plan_profiles(8, 256, buckets=[64, 128])),
]


@given(
    prompt=st.integers(1, 1500),
    max_tokens=st.integers(1, 1500),
    tier=st.sampled_from([DEFAULT, FLEX]),
    n=st.integers(1, 3),
)
def test_never_routes_to_an_engine_that_cannot_run_the_request(
    prompt: int, max_tokens: int, tier: ServiceTier, n: int
) -> None:
    """Whatever the request, the chosen engine's context and profiles admit it."""
    router = Router(ENGINES[:n])
    try:
        chosen = router.route("tiny-gpt", tier, prompt, max_tokens).engine
    except (ContextTooLong, ShapeOutsideProfiles):
        assert all(refusal_for(e, prompt, max_tokens) for e in tier_pool(ENGINES[:n], tier))
        return
    assert prompt + max_tokens <= chosen.max_seq_len
    assert request_fit(chosen.profiles, prompt, max_tokens).fits
