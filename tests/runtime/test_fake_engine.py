"""FakeEngine: deterministic tokens and exactly scripted device time."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.core.errors import ContextTooLong, EngineError
from infermeter.runtime.engine import SeqInput
from infermeter.runtime.fake_engine import FakeCost, FakeEngine, fake_engine_info


class FixedTimer:
    """Reports 777 µs and counts begin/end calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def begin(self) -> None:
        self.calls.append("begin")

    def end(self) -> None:
        self.calls.append("end")

    def elapsed_us(self) -> int:
        return 777


def _greedy(engine: FakeEngine, seq_id: str, prompt: list[int], n: int) -> list[int]:
    out, tokens = [], prompt
    for _ in range(n):
        token = int(np.argmax(engine.step([SeqInput(seq_id, tokens)]).logits[seq_id]))
        out.append(token)
        tokens = [token]
    return out


def test_greedy_counts_upwards() -> None:
    """The next token is the last fed token plus one, wrapping at token_range."""
    engine = FakeEngine(token_range=10)
    assert _greedy(engine, "a", [3, 7], 5) == [8, 9, 0, 1, 2]


def test_eos_after_k_tokens() -> None:
    """With eos_after=3, greedy decoding gives three ordinary tokens, then eos."""
    engine = FakeEngine(eos_after=3)
    assert _greedy(engine, "a", [1, 2], 5) == [3, 4, 5, 256, 256]
    assert _greedy(FakeEngine(eos_after=0), "b", [1], 1) == [256]


def test_scripted_device_time() -> None:
    """device_us follows the cost formula over prefill, context and decode; the timer is called."""
    timer = FixedTimer()
    cost = FakeCost(
        fixed_us=100, per_prefill_token_us=10, per_decode_token_us=50, per_decode_token_context_us=1
    )
    engine = FakeEngine(timer=timer, cost=cost)
    assert engine.step([SeqInput("a", [1, 2, 3])]).device_us == 100 + 30
    assert engine.step([SeqInput("a", [4]), SeqInput("b", [1, 2])]).device_us == 100 + (50 + 3) + 20
    assert timer.calls == ["begin", "end"] * 2
    assert [log.inputs for log in engine.history] == [(("a", 0, 3),), (("a", 3, 1), ("b", 0, 2))]


def test_unscripted_time_reads_the_timer() -> None:
    """With scripted_time=False the timer's reading is the step's device time."""
    engine = FakeEngine(timer=FixedTimer(), scripted_time=False)
    assert engine.step([SeqInput("a", [1])]).device_us == 777


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 20)), min_size=1, max_size=8))
def test_device_time_matches_formula(batch: list[tuple[int, int]]) -> None:
    """For any batch of (past, new tokens), device_us equals the documented formula."""
    cost = FakeCost(
        fixed_us=7,
        per_prefill_token_us=3,
        per_prefill_token_context_us=0.5,
        per_decode_token_us=11,
        per_decode_token_context_us=0.25,
    )
    engine = FakeEngine(cost=cost)
    inputs = []
    for i, (past, _) in enumerate(batch):
        if past:
            engine.step([SeqInput(f"s{i}", [1] * past)])
    for i, (_, new) in enumerate(batch):
        inputs.append(SeqInput(f"s{i}", [1] * new))
    expected = 7.0
    for past, new in batch:
        if new == 1 and past > 0:
            expected += 11 + 0.25 * past
        else:
            expected += 3 * new + 0.5 * new * past
    assert engine.step(inputs).device_us == round(expected)


def test_context_too_long_and_release() -> None:
    """Overflowing max_seq_len raises ContextTooLong; release forgets the cache."""
    engine = FakeEngine(info=fake_engine_info(max_seq_len=8))
    engine.step([SeqInput("a", [1] * 8)])
    with pytest.raises(ContextTooLong, match="at most 8"):
        engine.step([SeqInput("a", [1])])
    assert engine.kv_bytes("a") == 8 * engine.info.kv_bytes_per_token
    engine.release("a")
    assert engine.past_length("a") == 0


def test_scripted_failure_and_close() -> None:
    """fail_at_step raises EngineError on that step; a closed engine refuses steps."""
    engine = FakeEngine(fail_at_step=2)
    engine.step([SeqInput("a", [1])])
    with pytest.raises(EngineError, match="scripted step 2"):
        engine.step([SeqInput("a", [2])])
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.step([SeqInput("a", [1])])
