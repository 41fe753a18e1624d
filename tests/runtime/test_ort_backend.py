"""OrtEngine: batched, left-padded, KV-cached steps agree with uncached single-sequence runs."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.core.errors import ContextTooLong, EngineError, InvalidRequest
from infermeter.runtime.builtin_model import DecoderConfig, build_decoder_onnx, random_weights
from infermeter.runtime.engine import SeqInput
from infermeter.runtime.ort_backend import OrtEngine

# Large init (std 0.3) so attention is far from uniform: a masking or padding bug moves the
# logits by much more than the 1e-4 tolerance (checked by test_tolerance_is_meaningful).
CONFIG = DecoderConfig(vocab_size=260, n_embd=32, n_layer=2, n_head=2, n_inner=64, n_positions=64)
TOL = 1e-4


class CountingTimer:
    """A StepTimer that counts its calls and reports a fixed reading."""

    def __init__(self) -> None:
        self.begins = 0
        self.ends = 0

    def begin(self) -> None:
        self.begins += 1

    def end(self) -> None:
        self.ends += 1

    def elapsed_us(self) -> int:
        return 1234


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    model = build_decoder_onnx(random_weights(CONFIG, seed=7, std=0.3), CONFIG)
    (path / "model.onnx").write_bytes(model.SerializeToString())
    (path / "config.json").write_text(json.dumps(CONFIG.hf_config(name="tiny-test")))
    return path


@pytest.fixture
def engine(model_dir: Path) -> Iterator[OrtEngine]:
    eng = OrtEngine.load(model_dir, timer=CountingTimer(), intra_op_threads=1)
    yield eng
    eng.close()


class Reference:
    """Last-position logits of a token prefix, run alone with no cache (memoised)."""

    def __init__(self, engine: OrtEngine) -> None:
        self.engine = engine
        self.memo: dict[tuple[int, ...], npt.NDArray[np.float32]] = {}

    def __call__(self, prefix: Sequence[int]) -> npt.NDArray[np.float32]:
        key = tuple(prefix)
        if key not in self.memo:
            self.memo[key] = self.engine.step([SeqInput("ref", key)]).logits["ref"]
            self.engine.release("ref")
        return self.memo[key]


def _tokens(seed: int, n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, 256, n)]


def test_cached_decode_matches_uncached(engine: OrtEngine, model_dir: Path) -> None:
    """Prefill then one-token decode steps give the same logits as rerunning the whole prefix."""
    ref = Reference(OrtEngine.load(model_dir, timer=CountingTimer()))
    tokens = _tokens(1, 20)
    out = engine.step([SeqInput("a", tokens[:6])]).logits["a"]
    np.testing.assert_allclose(out, ref(tokens[:6]), atol=TOL)
    for k in range(6, 20):
        out = engine.step([SeqInput("a", [tokens[k]])]).logits["a"]
        np.testing.assert_allclose(out, ref(tokens[: k + 1]), atol=TOL)
    assert engine.past_length("a") == 20


def test_batched_sequences_joining_at_different_steps(engine: OrtEngine, model_dir: Path) -> None:
    """Left-padded groups (mixed pasts, fresh prompts, a chunked prefill) match solo runs."""
    ref = Reference(OrtEngine.load(model_dir, timer=CountingTimer()))
    full = {s: _tokens(10 + i, 24) for i, s in enumerate("ABCDE")}
    fed = dict.fromkeys(full, 0)
    # Each step: (seq, number of new tokens). C's 12-token prompt arrives in chunks of 5 and 7;
    # D's one-token prompt lands in the decode group beside sequences with long pasts.
    plan = [
        [("A", 7)],
        [("A", 1), ("B", 3), ("C", 5)],
        [("A", 1), ("B", 1), ("C", 7), ("D", 1), ("E", 4)],
        [("A", 1), ("B", 1), ("C", 1), ("D", 1), ("E", 1)],
        [("B", 1), ("C", 1), ("D", 2), ("E", 1)],
        [("A", 1), ("C", 1), ("D", 1), ("E", 1)],
    ]
    for step in plan:
        inputs = [SeqInput(s, full[s][fed[s] : fed[s] + n]) for s, n in step]
        out = engine.step(inputs)
        assert set(out.logits) == {s for s, _ in step}
        for s, n in step:
            fed[s] += n
            np.testing.assert_allclose(out.logits[s], ref(full[s][: fed[s]]), atol=TOL, err_msg=s)
            assert engine.past_length(s) == fed[s]


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Reference:
    return Reference(OrtEngine.load(model_dir, timer=CountingTimer()))


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_any_schedule_matches_solo_runs(model_dir: Path, reference: Reference, data: st.DataObject) -> None:
    """For random join times, chunk sizes and batch mixes, every step's logits equal solo runs."""
    engine = OrtEngine.load(model_dir, timer=CountingTimer())  # fresh: no cache from other examples
    n_seqs = data.draw(st.integers(1, 4))
    full = [_tokens(data.draw(st.integers(0, 10**6)), 30) for _ in range(n_seqs)]
    fed = [0] * n_seqs
    for _ in range(8):
        inputs, chosen = [], []
        for i in range(n_seqs):
            if data.draw(st.booleans()):
                n = data.draw(st.integers(1, 6)) if fed[i] == 0 or data.draw(st.booleans()) else 1
                n = min(n, 30 - fed[i])
                if n:
                    inputs.append(SeqInput(f"s{i}", full[i][fed[i] : fed[i] + n]))
                    chosen.append((i, n))
        out = engine.step(inputs)
        for i, n in chosen:
            fed[i] += n
            np.testing.assert_allclose(out.logits[f"s{i}"], reference(full[i][: fed[i]]), atol=TOL)


def test_tolerance_is_meaningful(engine: OrtEngine) -> None:
    """Changing the first of 20 tokens moves the last logits far beyond the test tolerance."""
    tokens = _tokens(3, 20)
    a = engine.step([SeqInput("a", tokens)]).logits["a"]
    b = engine.step([SeqInput("b", [(tokens[0] + 1) % 256, *tokens[1:]])]).logits["b"]
    assert np.max(np.abs(a - b)) > 100 * TOL


def test_timer_brackets_all_runs_once(engine: OrtEngine) -> None:
    """A step with both a decode and a prefill group begins and ends the timer once each."""
    timer = engine.timer
    assert isinstance(timer, CountingTimer)
    engine.step([SeqInput("a", [1, 2, 3])])
    out = engine.step([SeqInput("a", [4]), SeqInput("b", [5, 6])])
    assert (timer.begins, timer.ends) == (2, 2)
    assert out.device_us == 1234


def test_context_too_long(engine: OrtEngine) -> None:
    """Passing max_seq_len raises ContextTooLong naming seq and limit, and runs nothing."""
    engine.step([SeqInput("a", [1] * 60)])
    with pytest.raises(ContextTooLong, match=r"sequence a would hold 65 tokens.*at most 64"):
        engine.step([SeqInput("b", [2]), SeqInput("a", [1] * 5)])
    assert engine.past_length("a") == 60
    assert engine.past_length("b") == 0
    with pytest.raises(ContextTooLong):
        engine.step([SeqInput("c", [1] * 65)])
    engine.step([SeqInput("a", [1] * 4)])
    assert engine.past_length("a") == 64


def test_rejects_bad_inputs(engine: OrtEngine) -> None:
    """Out-of-vocabulary ids, empty inputs and repeated seq ids are refused before running."""
    with pytest.raises(InvalidRequest, match="outside the vocabulary"):
        engine.step([SeqInput("a", [1, 260])])
    with pytest.raises(ValueError, match="no new tokens"):
        engine.step([SeqInput("a", [])])
    with pytest.raises(ValueError, match="twice"):
        engine.step([SeqInput("a", [1]), SeqInput("a", [2])])
    assert engine.step([]).logits == {}


def test_release_and_kv_bytes(engine: OrtEngine) -> None:
    """kv_bytes counts cached tokens; release forgets the sequence; unknown ids are ignored."""
    engine.step([SeqInput("a", [1, 2, 3, 4, 5])])
    assert engine.kv_bytes("a") == 5 * engine.info.kv_bytes_per_token == 5 * 2 * 2 * 2 * 16 * 4
    engine.release("a")
    engine.release("never-seen")
    assert engine.past_length("a") == 0
    assert engine.kv_bytes("a") == 0


def test_info_describes_the_engine(engine: OrtEngine) -> None:
    """EngineInfo comes from config.json and names the CPU backend and its two profiles."""
    info = engine.info
    assert (info.backend, info.device, info.device_class) == ("onnxruntime", "cpu", "cpu")
    assert (info.model, info.max_seq_len, info.vocab_size, info.eos_token_id) == (
        "tiny-test",
        64,
        260,
        256,
    )
    assert (info.num_layers, info.num_kv_heads, info.head_dim) == (2, 2, 16)
    assert [p.name for p in info.profiles] == ["prefill", "decode"]
    assert info.profiles[1].admits(batch=16, tokens=1, past=63)
    assert not info.profiles[1].admits(batch=1, tokens=2, past=0)


def test_closed_engine_refuses_steps(engine: OrtEngine) -> None:
    """After close, a step raises EngineError telling the caller to load the engine again."""
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.step([SeqInput("a", [1])])
