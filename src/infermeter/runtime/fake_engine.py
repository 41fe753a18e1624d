"""A model-free engine with deterministic tokens and scripted device time, for tests and demos.

Tokens: the logits of every sequence peak at ``(last fed token + 1) % token_range``, so
greedy decoding counts upwards. With ``eos_after=k`` a sequence's output is eos once it has
been fed ``k`` decode tokens, i.e. greedy decoding yields ``k`` ordinary tokens, then eos.

Time: with ``scripted_time=True`` (the default) ``device_us`` comes from ``FakeCost`` over the
step's participants, so metering tests know the exact answer; the timer is still called
around the (empty) work so timer wiring is exercised. With ``scripted_time=False`` the
timer's reading is reported.

An input counts as *decode* when it feeds one token after a non-empty past, else as
*prefill* (so a one-token final chunk of a chunked prompt counts as decode here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from infermeter.core.errors import ContextTooLong, EngineError
from infermeter.core.timing import NullTimer, StepTimer
from infermeter.core.types import Precision
from infermeter.runtime.engine import EngineInfo, SeqInput, ShapeProfile, StepOutput

_PEAK = 30.0  # softmax mass off the peak is ~e^-30: sampling at temperature 1 is deterministic too


@dataclass(frozen=True, slots=True)
class FakeCost:
    """Scripted step time in µs: fixed + Σ (a·p + b·p·c + g·d + e·d·c), rounded to an integer.

    p: prefill tokens, d: decode tokens, c: tokens cached before the step, per participant.
    """

    fixed_us: float = 100.0
    per_prefill_token_us: float = 10.0
    per_prefill_token_context_us: float = 0.0
    per_decode_token_us: float = 50.0
    per_decode_token_context_us: float = 0.0

    def step_us(self, participants: Sequence[tuple[int, int, int]]) -> int:
        """Device µs of a step whose participants are ``(prefill, context, decode)`` triples."""
        total = self.fixed_us
        for p, c, d in participants:
            total += self.per_prefill_token_us * p + self.per_prefill_token_context_us * p * c
            total += self.per_decode_token_us * d + self.per_decode_token_context_us * d * c
        return round(total)


@dataclass(frozen=True, slots=True)
class StepLog:
    """What one step ran: ``(seq_id, past, new tokens)`` per input, and its device µs."""

    inputs: tuple[tuple[str, int, int], ...]
    device_us: int


def fake_engine_info(
    *,
    engine_id: str = "fake-engine",
    model: str = "tiny-gpt",
    precision: Precision = Precision.FP32,
    device: str = "cpu",
    device_class: str = "cpu",
    max_batch: int = 16,
    max_seq_len: int = 1024,
    vocab_size: int = 260,
    eos_token_id: int | None = 256,
) -> EngineInfo:
    """An EngineInfo shaped like the built-in model's (4 layers, 4 heads of 32)."""
    return EngineInfo(
        engine_id=engine_id,
        model=model,
        backend="fake",
        precision=precision,
        device=device,
        device_class=device_class,
        max_batch=max_batch,
        max_seq_len=max_seq_len,
        vocab_size=vocab_size,
        eos_token_id=eos_token_id,
        num_layers=4,
        num_kv_heads=4,
        head_dim=32,
        profiles=(
            ShapeProfile("prefill", 1, 1, max_batch, 1, min(128, max_seq_len), max_seq_len, max_seq_len - 1),
            ShapeProfile("decode", 1, max_batch, max_batch, 1, 1, 1, max_seq_len - 1),
        ),
    )


@dataclass
class FakeEngine:
    """The Engine protocol with no model. ``fail_at_step=n``: EngineError on step n (1-based)."""

    info: EngineInfo = field(default_factory=fake_engine_info)
    timer: StepTimer = field(default_factory=NullTimer)
    cost: FakeCost = field(default_factory=FakeCost)
    scripted_time: bool = True
    eos_after: int | None = None
    token_range: int = 256
    fail_at_step: int | None = None
    history: list[StepLog] = field(default_factory=list)
    _past: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _decoded: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)

    def step(self, inputs: Sequence[SeqInput]) -> StepOutput:
        """Deterministic logits per input; device time from ``cost`` (or the timer)."""
        if self._closed:
            raise EngineError(f"engine {self.info.engine_id} is closed; create a new one")
        if not inputs:
            return StepOutput({}, 0)
        self._validate(inputs)
        if self.fail_at_step is not None and len(self.history) + 1 == self.fail_at_step:
            raise EngineError(f"engine {self.info.engine_id} failed at scripted step {self.fail_at_step}")
        participants = []
        for x in inputs:
            past, n = self._past.get(x.seq_id, 0), len(x.tokens)
            decode = n == 1 and past > 0
            participants.append((0 if decode else n, past, 1 if decode else 0))
        self.timer.begin()
        logits = {x.seq_id: self._logits(x, d) for x, (_, _, d) in zip(inputs, participants, strict=True)}
        self.timer.end()
        device_us = self.cost.step_us(participants) if self.scripted_time else self.timer.elapsed_us()
        self.history.append(
            StepLog(
                tuple((x.seq_id, c, p + d) for x, (p, c, d) in zip(inputs, participants, strict=True)),
                device_us,
            )
        )
        return StepOutput(logits, device_us)

    def past_length(self, seq_id: str) -> int:
        return self._past.get(seq_id, 0)

    def kv_bytes(self, seq_id: str) -> int:
        return self.past_length(seq_id) * self.info.kv_bytes_per_token

    def release(self, seq_id: str) -> None:
        self._past.pop(seq_id, None)
        self._decoded.pop(seq_id, None)

    def close(self) -> None:
        self._past.clear()
        self._decoded.clear()
        self._closed = True

    def _validate(self, inputs: Sequence[SeqInput]) -> None:
        if len({x.seq_id for x in inputs}) != len(inputs):
            raise ValueError("a seq_id appears twice in one step; give each sequence once")
        for x in inputs:
            if not x.tokens:
                raise ValueError(f"seq_id {x.seq_id!r} has no new tokens; a step feeds at least one")
            past = self.past_length(x.seq_id)
            total = past + len(x.tokens)
            if total > self.info.max_seq_len:
                raise ContextTooLong(
                    f"sequence {x.seq_id} would hold {total:,} tokens ({past:,} cached + "
                    f"{len(x.tokens):,} new); engine {self.info.engine_id} accepts at most "
                    f"{self.info.max_seq_len:,}; shorten the prompt or lower max_tokens"
                )

    def _logits(self, x: SeqInput, decode_tokens: int) -> npt.NDArray[np.float32]:
        self._past[x.seq_id] = self._past.get(x.seq_id, 0) + len(x.tokens)
        decoded = self._decoded.get(x.seq_id, 0) + decode_tokens
        self._decoded[x.seq_id] = decoded
        eos = self.info.eos_token_id
        if eos is not None and self.eos_after is not None and decoded >= self.eos_after:
            token = eos
        else:
            token = (int(x.tokens[-1]) + 1) % self.token_range
        logits = np.zeros(self.info.vocab_size, np.float32)
        logits[token] = _PEAK
        return logits
