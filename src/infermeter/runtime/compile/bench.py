"""Per-engine throughput: prefill and decode tokens/s and device ms per token.

Measured through the engine's own ``step`` and read from its own step timer (the same
device time metering bills), so a figure is what a request on that engine is charged
for, not a wall clock around Python. Each figure is the median over ``rounds`` rounds
after one warm-up round:

- prefill: one ``prompt_tokens``-token prompt, batch 1;
- decode: ``decode_steps`` one-token steps after that prompt, batch 1 and batch ``batch``.

Prompt ids are seeded random ids below 256 (bytes for the built-in tokenizer, ordinary ids
for any other vocabulary of at least 256).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from infermeter.runtime.engine import Engine, SeqInput


@dataclass(frozen=True, slots=True)
class EngineBench:
    """One engine's figures (floats: measurements, not money)."""

    engine_id: str
    backend: str
    precision: str
    device: str
    prompt_tokens: int
    prefill_tokens_per_s: float
    prefill_ms_per_token: float
    decode_tokens_per_s: float  # batch 1
    decode_ms_per_token: float
    batch: int
    batch_decode_tokens_per_s: float
    batch_decode_ms_per_token: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def bench_engine(
    engine: Engine,
    *,
    prompt_tokens: int = 128,
    decode_steps: int = 32,
    batch: int = 8,
    rounds: int = 3,
    seed: int = 0,
) -> EngineBench:
    """Measure ``engine`` as this module's docstring says."""
    info = engine.info
    prompt_tokens = min(prompt_tokens, info.max_seq_len - decode_steps - 1)
    batch = min(batch, info.max_batch)
    if prompt_tokens < 2:
        raise ValueError(
            f"engine {info.engine_id}'s context ({info.max_seq_len}) is too short "
            f"for {decode_steps} decode steps after a prompt; use fewer"
        )
    rng = np.random.default_rng(seed)
    vocab = min(info.vocab_size, 256)
    prompts = [[int(t) for t in rng.integers(0, vocab, prompt_tokens)] for _ in range(batch)]
    prefill_us, decode_us, batch_us = [], [], []
    for r in range(rounds + 1):
        ids = [f"bench-{r}-{i}" for i in range(batch)]
        pre = engine.step([SeqInput(ids[0], prompts[0])]).device_us
        one = _decode(engine, ids[:1], decode_steps)
        _release(engine, ids[:1])
        for seq_id, prompt in zip(ids, prompts, strict=True):
            engine.step([SeqInput(seq_id, prompt)])
        many = _decode(engine, ids, decode_steps)
        _release(engine, ids)
        if r:  # round 0 warms the engine up
            prefill_us.append(pre)
            decode_us.append(one)
            batch_us.append(many)
    pre_s = statistics.median(prefill_us) / 1e6
    one_s = statistics.median(decode_us) / 1e6
    many_s = statistics.median(batch_us) / 1e6
    return EngineBench(
        engine_id=info.engine_id, backend=info.backend, precision=info.precision.value,
        device=info.device, prompt_tokens=prompt_tokens,
        prefill_tokens_per_s=_rate(prompt_tokens, pre_s),
        prefill_ms_per_token=_per(pre_s, prompt_tokens),
        decode_tokens_per_s=_rate(decode_steps, one_s),
        decode_ms_per_token=_per(one_s, decode_steps), batch=batch,
        batch_decode_tokens_per_s=_rate(batch * decode_steps, many_s),
        batch_decode_ms_per_token=_per(many_s, batch * decode_steps),
    )  # fmt: skip


def _decode(engine: Engine, seq_ids: list[str], steps: int) -> int:
    """Device µs of ``steps`` greedy one-token steps for every sequence in ``seq_ids``."""
    total = 0
    tokens = dict.fromkeys(seq_ids, 0)
    for _ in range(steps):
        out = engine.step([SeqInput(s, [tokens[s]]) for s in seq_ids])
        total += out.device_us
        tokens = {s: int(np.argmax(out.logits[s])) % engine.info.vocab_size for s in seq_ids}
    return total


def _release(engine: Engine, seq_ids: list[str]) -> None:
    for seq_id in seq_ids:
        engine.release(seq_id)


def _rate(tokens: int, seconds: float) -> float:
    return round(tokens / seconds, 1) if seconds > 0 else 0.0


def _per(seconds: float, tokens: int) -> float:
    return round(seconds * 1000 / tokens, 4)


__all__ = ["EngineBench", "bench_engine"]
