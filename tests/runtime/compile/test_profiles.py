"""Profile planning: a prefill profile plus decode buckets; step and request fits; TRT ranges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.runtime.compile.profiles import (
    decode_buckets,
    is_decode,
    plan_profiles,
    request_fit,
    select_profile,
    tensor_ranges,
)
from infermeter.runtime.engine import ShapeProfile


def test_decode_buckets_double_up_to_the_context() -> None:
    """Buckets are powers of two from 128, then the longest past the context allows."""
    assert decode_buckets(1024) == (128, 256, 512, 1023)
    assert decode_buckets(128) == (127,)
    assert decode_buckets(64, first=16) == (16, 32, 63)


def test_plan_has_prefill_then_ascending_decode_buckets() -> None:
    """The plan is one prefill profile, then one decode profile per bucket, ascending."""
    profiles = plan_profiles(8, 1024)
    assert [p.name for p in profiles] == [
        "prefill",
        "decode-past-128",
        "decode-past-256",
        "decode-past-512",
        "decode-past-1023",
    ]
    prefill, *decode = profiles
    assert (prefill.max_batch, prefill.opt_batch, prefill.max_tokens, prefill.max_past) == (8, 1, 1024, 1023)
    assert all(is_decode(p) and p.opt_batch == 8 for p in decode)
    assert not is_decode(prefill)


def test_plan_clips_buckets_and_caps_prefill_chunks() -> None:
    """Buckets past the context are clipped to it; --prefill-tokens caps the prefill chunk."""
    profiles = plan_profiles(4, 256, prefill_tokens=64, buckets=[100, 4000])
    assert [p.name for p in profiles] == ["prefill", "decode-past-100", "decode-past-255"]
    assert profiles[0].max_tokens == 64 and profiles[0].opt_tokens == 64


@pytest.mark.parametrize(
    ("args", "match"),
    [((0, 128), "max_batch=0"), ((4, 1), "max_seq_len=1"), ((4, 128, 200), "prefill_tokens=200")],
)
def test_plan_rejects_impossible_limits(args: tuple[int, ...], match: str) -> None:
    """Zero batch, a one-token context or a chunk beyond the context are refused by name."""
    with pytest.raises(ValueError, match=match):
        plan_profiles(args[0], args[1], prefill_tokens=args[2] if len(args) > 2 else None)


def test_select_profile_picks_the_tightest_admitting_profile() -> None:
    """A decode step goes to the smallest bucket holding its past; a chunk to prefill."""
    profiles = plan_profiles(8, 1024)
    names = [p.name for p in profiles]
    assert names[select_profile(profiles, 4, 1, 100) or 0] == "decode-past-128"
    assert names[select_profile(profiles, 4, 1, 129) or 0] == "decode-past-256"
    assert names[select_profile(profiles, 1, 17, 300) or 0] == "prefill"
    assert select_profile(profiles, 9, 1, 10) is None  # batch beyond every profile


@given(batch=st.integers(1, 8), tokens=st.integers(1, 300), past=st.integers(0, 700))
def test_selected_profile_admits_the_step(batch: int, tokens: int, past: int) -> None:
    """Whatever the step, the chosen profile admits it, and None means no profile does."""
    profiles = plan_profiles(8, 1024)
    index = select_profile(profiles, batch, tokens, past)
    if index is None:
        assert not any(p.admits(batch, tokens, past) for p in profiles)
    else:
        assert profiles[index].admits(batch, tokens, past)


def test_request_fit_on_default_profiles_is_the_context_rule() -> None:
    """With the default plan every request inside the context fits."""
    profiles = plan_profiles(16, 1024)
    assert request_fit(profiles, 1000, 24).fits
    assert request_fit(profiles, 1, 1).fits
    assert request_fit((), 10**6, 10**6).fits  # no profiles: nothing to check


def test_request_fit_names_the_decode_limit() -> None:
    """Decode buckets that stop short of prompt + max_tokens give the longest admitted past."""
    short = (
        ShapeProfile("prefill", 1, 1, 4, 2, 64, 256, 0),  # prompts from an empty past
        ShapeProfile("decode-past-256", 1, 4, 4, 1, 1, 1, 256),
    )
    fit = request_fit(short, 200, 100)
    assert not fit.fits and fit.decode_limit == 256 and fit.prefill_limit is None
    assert request_fit(short, 200, 58).fits  # last decode past: 200 + 58 - 2 = 256
    assert not request_fit(short, 200, 59).fits


def test_prefill_profile_also_admits_single_token_steps() -> None:
    """The default prefill profile takes one-token steps too, so decode never outgrows it."""
    assert request_fit(plan_profiles(4, 1024, buckets=[256]), 200, 800).fits


def test_request_fit_names_the_prefill_limit() -> None:
    """A prompt longer than any prefill profile's chunks after its past is refused."""
    tight = (
        ShapeProfile("prefill", 1, 1, 4, 1, 16, 32, 31),
        ShapeProfile("decode-past-127", 1, 4, 4, 1, 1, 1, 127),
    )
    assert request_fit(tight, 63, 2).fits  # chunks of 32: last one after 31 cached
    fit = request_fit(tight, 64, 2)
    assert fit.prefill_limit == 63


def test_decode_only_profiles_do_not_prefill_prompts() -> None:
    """An engine with only one-token profiles refuses a multi-token prompt."""
    decode_only = (ShapeProfile("decode-past-127", 1, 4, 4, 1, 1, 1, 127),)
    assert request_fit(decode_only, 1, 5).fits
    assert request_fit(decode_only, 5, 1).prefill_limit == 1


@given(index=st.integers(0, 4), corner=st.integers(0, 2))
def test_attention_mask_is_past_plus_new_at_every_corner(index: int, corner: int) -> None:
    """TensorRT's shared-dimension rule: mask length = past + new tokens, batch everywhere."""
    profile = plan_profiles(8, 1024)[index]
    ranges = tensor_ranges(profile, num_layers=2, num_kv_heads=4, head_dim=32)
    ids, mask, past = (ranges[n][corner] for n in ("input_ids", "attention_mask", "past_key_values.1.value"))
    assert mask == (ids[0], past[2] + ids[1])
    assert past[0] == ids[0] and (past[1], past[3]) == (4, 32)
    assert ranges["position_ids"][corner] == ids


def test_tensor_ranges_span_each_profile() -> None:
    """Min/opt/max follow the profile: decode tuned at its bucket top, prefill at no past."""
    prefill, decode = plan_profiles(8, 1024)[:2]
    low, opt, high = tensor_ranges(decode, num_layers=1, num_kv_heads=2, head_dim=8, position_ids=False)[
        "past_key_values.0.key"
    ]
    assert (low, opt, high) == ((1, 2, 0, 8), (8, 2, 128, 8), (8, 2, 128, 8))
    ranges = tensor_ranges(prefill, num_layers=1, num_kv_heads=2, head_dim=8, position_ids=False)
    assert "position_ids" not in ranges
    assert ranges["input_ids"] == ((1, 1), (1, 128), (8, 1024))
    assert set(ranges) == {"input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.0.value"}
