"""Optimization-profile planning: which shapes an engine is built for. Pure.

An engine gets one profile per shape regime:

- ``prefill``: new-token chunks of 1..``prefill_tokens`` after a cached past of
  0..``max_seq_len - 1`` (the scheduler chunks long prompts, so a chunk can follow a past),
  batch 1..``max_batch`` tuned at batch 1;
- ``decode-past-N``: one new token per sequence after a past of 0..N, batch
  1..``max_batch`` tuned at ``max_batch``. Bucketing by past length lets each bucket's
  kernels be tuned for its own cache length instead of one huge range tuned at one point.

A step picks the smallest profile that admits it (``select_profile``); the router refuses a
request that no profile admits (``request_fit``). ``tensor_ranges`` turns a profile into the
min/opt/max dims of every input of a decoder in the Optimum layout, with the one constraint
TensorRT checks across inputs: ``attention_mask`` is exactly past + new tokens at every
corner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from infermeter.runtime.engine import ShapeProfile

PREFILL = "prefill"
DECODE_PREFIX = "decode-past-"
FIRST_DECODE_BUCKET = 128  # smaller pasts are cheap whatever kernel runs them

Dims = tuple[int, ...]


def decode_buckets(max_seq_len: int, first: int = FIRST_DECODE_BUCKET) -> tuple[int, ...]:
    """Past-length bounds: powers of two from ``first`` below ``max_seq_len``, then its max.

    >>> decode_buckets(1024)
    (128, 256, 512, 1023)
    """
    if max_seq_len < 2:
        raise ValueError(f"max_seq_len={max_seq_len} must be at least 2 (a prompt and a token)")
    top = max_seq_len - 1
    bounds: list[int] = []
    b = first
    while b < top:
        bounds.append(b)
        b *= 2
    return (*bounds, top)


def plan_profiles(
    max_batch: int,
    max_seq_len: int,
    *,
    prefill_tokens: int | None = None,
    buckets: Sequence[int] | None = None,
) -> tuple[ShapeProfile, ...]:
    """The prefill profile, then one decode profile per past-length bucket (ascending).

    ``prefill_tokens`` caps a prefill chunk (default ``max_seq_len``); ``buckets`` are the
    decode past bounds (default ``decode_buckets(max_seq_len)``); bounds at or beyond
    ``max_seq_len`` are clipped to ``max_seq_len - 1``.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch={max_batch} must be at least 1")
    if max_seq_len < 2:
        raise ValueError(f"max_seq_len={max_seq_len} must be at least 2 (a prompt and a token)")
    chunk = max_seq_len if prefill_tokens is None else prefill_tokens
    if not 1 <= chunk <= max_seq_len:
        raise ValueError(f"prefill_tokens={chunk} must be in 1..max_seq_len ({max_seq_len})")
    bounds = sorted({min(b, max_seq_len - 1) for b in (buckets or decode_buckets(max_seq_len))})
    if not bounds or bounds[0] < 1:
        raise ValueError(f"decode buckets {list(buckets or [])} must be positive past lengths")
    prefill = ShapeProfile(PREFILL, 1, 1, max_batch, 1, min(128, chunk), chunk, max_seq_len - 1)
    decode = tuple(ShapeProfile(f"{DECODE_PREFIX}{b}", 1, max_batch, max_batch, 1, 1, 1, b) for b in bounds)
    return (prefill, *decode)


def is_decode(profile: ShapeProfile) -> bool:
    """A decode profile feeds exactly one new token per sequence."""
    return profile.max_tokens == 1


def select_profile(profiles: Sequence[ShapeProfile], batch: int, tokens: int, past: int) -> int | None:
    """Index of the smallest profile admitting the step shape, or None if none does.

    Smallest = fewest new tokens, then shortest past, then smallest batch: a one-token step
    goes to the tightest decode bucket, a chunk to the prefill profile.
    """
    best: int | None = None
    for i, p in enumerate(profiles):
        if p.admits(batch, tokens, past) and (best is None or _size(p) < _size(profiles[best])):
            best = i
    return best


def _size(p: ShapeProfile) -> tuple[int, int, int]:
    return (p.max_tokens, p.max_past, p.max_batch)


@dataclass(frozen=True, slots=True)
class RequestFit:
    """Why a request does not fit an engine's profiles (None fields mean that part fits)."""

    prefill_limit: int | None = None  # the most prompt tokens any profile can prefill
    decode_limit: int | None = None  # the longest past any decode profile admits

    @property
    def fits(self) -> bool:
        return self.prefill_limit is None and self.decode_limit is None


def request_fit(profiles: Sequence[ShapeProfile], prompt_tokens: int, max_tokens: int) -> RequestFit:
    """Whether a single sequence can run start to end on ``profiles``.

    Prefill: the prompt is fed in chunks of at most a profile's ``max_tokens``, the last one
    after at most its ``max_past`` cached tokens. Decode: the last
    decode step feeds generated token ``max_tokens - 1`` after ``prompt + max_tokens - 2``
    cached tokens (the first generated token comes from the prefill's logits).
    An empty ``profiles`` admits everything.
    """
    if not profiles:
        return RequestFit()
    prefill_ok = any(_prefill_admits(p, prompt_tokens) for p in profiles)
    prefill_limit = None
    if not prefill_ok:
        prefill_limit = max((p.max_past + p.max_tokens for p in profiles if p.max_tokens > 1), default=1)
    decode_limit = None
    if max_tokens >= 2:
        past = prompt_tokens + max_tokens - 2
        if not any(p.admits(1, 1, past) for p in profiles):
            decode_limit = max((p.max_past for p in profiles if p.min_tokens <= 1), default=0)
    return RequestFit(prefill_limit, decode_limit)


def _prefill_admits(p: ShapeProfile, prompt_tokens: int) -> bool:
    """Some chunking of the prompt runs on ``p``: chunks of at most ``max_tokens``, the last
    one after at most ``max_past`` cached tokens (the scheduler's chunk size may differ)."""
    if prompt_tokens == 1:
        return p.admits(1, 1, 0)
    return (
        p.max_tokens >= 2
        and p.admits(1, min(prompt_tokens, p.max_tokens), 0)
        and prompt_tokens <= p.max_past + p.max_tokens
    )


def opt_past(profile: ShapeProfile) -> int:
    """The past length kernels are tuned for: none for prefill, the bucket's top for decode."""
    return profile.max_past if is_decode(profile) else 0


def tensor_ranges(
    profile: ShapeProfile,
    *,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    position_ids: bool = True,
) -> dict[str, tuple[Dims, Dims, Dims]]:
    """(min, opt, max) dims of every decoder input for one profile (Optimum names).

    The past ranges from 0 (a fresh sequence) to ``max_past``; ``attention_mask`` is
    past + new at each corner, as TensorRT requires of tensors sharing a dimension.
    """
    b = (profile.min_batch, profile.opt_batch, profile.max_batch)
    s = (profile.min_tokens, profile.opt_tokens, profile.max_tokens)
    p = (0, opt_past(profile), profile.max_past)
    ranges: dict[str, tuple[Dims, Dims, Dims]] = {
        "input_ids": _corners(lambda i: (b[i], s[i])),
        "attention_mask": _corners(lambda i: (b[i], p[i] + s[i])),
    }
    if position_ids:
        ranges["position_ids"] = ranges["input_ids"]
    kv = _corners(lambda i: (b[i], num_kv_heads, p[i], head_dim))
    for layer in range(num_layers):
        ranges[f"past_key_values.{layer}.key"] = kv
        ranges[f"past_key_values.{layer}.value"] = kv
    return ranges


def _corners(shape_at: Callable[[int], Dims]) -> tuple[Dims, Dims, Dims]:
    return shape_at(0), shape_at(1), shape_at(2)


__all__ = [
    "DECODE_PREFIX",
    "PREFILL",
    "RequestFit",
    "decode_buckets",
    "is_decode",
    "opt_past",
    "plan_profiles",
    "request_fit",
    "select_profile",
    "tensor_ranges",
]
