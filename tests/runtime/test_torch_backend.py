"""TorchEngine: the built-in decoder in torch agrees with ONNX Runtime, step for step."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infermeter.core.errors import ContextTooLong, EngineError, InvalidRequest
from infermeter.core.timing import NullTimer
from infermeter.core.types import Precision
from infermeter.runtime.builtin_model import DecoderConfig, build_decoder_onnx, random_weights
from infermeter.runtime.engine import SeqInput
from infermeter.runtime.ort_backend import OrtEngine

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed (pip install 'infermeter[torch]'); the torch engine needs it"
)

from infermeter.runtime.torch_backend import (  # noqa: E402  (needs torch, skipped above)
    WEIGHTS_FILE,
    TorchEngine,
    decoder_config,
    save_weights,
    weights_from_onnx,
)

CONFIG = DecoderConfig(vocab_size=260, n_embd=32, n_layer=2, n_head=2, n_inner=64, n_positions=64)
CUDA = torch.cuda.is_available()


class CountingTimer:
    """Counts begin/end calls and reports a fixed reading."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def begin(self) -> None:
        self.calls.append("begin")

    def end(self) -> None:
        self.calls.append("end")

    def elapsed_us(self) -> int:
        return 777


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small decoder (large weights, so masking bugs show) with its torch weights."""
    path = tmp_path_factory.mktemp("torch-model")
    (path / "model.onnx").write_bytes(
        build_decoder_onnx(random_weights(CONFIG, seed=7, std=0.3), CONFIG).SerializeToString()
    )
    (path / "config.json").write_text(json.dumps(CONFIG.hf_config(name="tiny-test")))
    return path


def load(
    model_dir: Path, precision: Precision, device: str = "cpu", timer_factory: Any = None
) -> TorchEngine:
    save_weights(weights_from_onnx(model_dir / "model.onnx", CONFIG), model_dir / WEIGHTS_FILE, precision)
    return TorchEngine.load(
        model_dir,
        precision=precision,
        device=device,
        timer_factory=timer_factory or (lambda stream: NullTimer()),
    )


@pytest.fixture
def ort_engine(model_dir: Path) -> Iterator[OrtEngine]:
    engine = OrtEngine.load(model_dir, timer=NullTimer())
    yield engine
    engine.close()


STEPS = [
    [SeqInput("a", [1, 2, 3, 4, 5, 6]), SeqInput("b", [7, 8])],
    [SeqInput("a", [9]), SeqInput("b", [10]), SeqInput("c", [11, 12, 13])],
    [SeqInput("a", [14]), SeqInput("b", [15, 16, 17, 18]), SeqInput("c", [19])],
    [SeqInput("c", [20])],
]


def run_both(torch_engine: TorchEngine, ort_engine: OrtEngine) -> float:
    """Largest |Δlogit| over the scripted mixed prefill/decode steps."""
    worst = 0.0
    for inputs in STEPS:
        got, want = torch_engine.step(inputs).logits, ort_engine.step(inputs).logits
        assert set(got) == set(want)
        worst = max(worst, max(float(np.max(np.abs(got[k] - want[k]))) for k in want))
    return worst


def test_fp32_matches_onnx_runtime_through_padded_cached_steps(
    model_dir: Path, ort_engine: OrtEngine
) -> None:
    """Mixed prefill/decode batches with left padding give ONNX Runtime's logits."""
    engine = load(model_dir, Precision.FP32)
    assert run_both(engine, ort_engine) < 1e-4
    assert engine.past_length("a") == 8 and engine.past_length("c") == 5


def test_bf16_stays_close_to_fp32(model_dir: Path, ort_engine: OrtEngine) -> None:
    """BF16 weights and cache stay within bf16 rounding of the FP32 graph."""
    engine = load(model_dir, Precision.BF16)
    assert engine.info.kv_bytes_per_element == 2
    assert run_both(engine, ort_engine) < 0.5


def test_weights_files_are_deterministic_per_precision(model_dir: Path, tmp_path: Path) -> None:
    """Same weights, same bytes; each precision its own bytes."""
    weights = weights_from_onnx(model_dir / "model.onnx", CONFIG)
    for name, precision in [("a", Precision.FP16), ("b", Precision.FP16), ("c", Precision.BF16)]:
        save_weights(weights, tmp_path / f"{name}.npz", precision)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert (tmp_path / "a.npz").read_bytes() != (tmp_path / "c.npz").read_bytes()


def test_timer_brackets_each_step_and_gets_no_stream_on_cpu(model_dir: Path) -> None:
    """One begin/end per step; the factory sees stream None on the CPU; device_us is its reading."""
    streams: list[object] = []
    timer = CountingTimer()

    def factory(stream: object) -> CountingTimer:
        streams.append(stream)
        return timer

    engine = load(model_dir, Precision.FP32, timer_factory=factory)
    out = engine.step(STEPS[0])
    assert streams == [None] and timer.calls == ["begin", "end"] and out.device_us == 777


def test_errors_match_the_engine_contract(model_dir: Path) -> None:
    """Over-long context, bad token ids, duplicates and a closed engine are refused."""
    engine = load(model_dir, Precision.FP32)
    with pytest.raises(ContextTooLong, match="accepts at most 64"):
        engine.step([SeqInput("x", list(range(65)))])
    with pytest.raises(InvalidRequest, match=r"outside the vocabulary 0\.\.259"):
        engine.step([SeqInput("x", [260])])
    with pytest.raises(ValueError, match="twice"):
        engine.step([SeqInput("x", [1]), SeqInput("x", [2])])
    engine.release("never-seen")
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.step([SeqInput("x", [1])])


def test_only_gpt2_layout_models_run_on_torch(tmp_path: Path) -> None:
    """A config without the decoder's keys is refused with the backend to use instead."""
    from infermeter.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--backend onnxruntime"):
        decoder_config({"model_type": "llama"})


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_fp16_on_cuda_is_timed_by_cuda_events_on_the_engine_stream(
    model_dir: Path, ort_engine: OrtEngine
) -> None:
    """On a GPU: FP16 close to FP32, and each step's device time comes from CUDA events."""
    from infermeter.metering.cuda_timer import CudaEventTimer

    streams: list[object] = []

    def factory(stream: object) -> CudaEventTimer:
        streams.append(stream)
        return CudaEventTimer(stream)

    engine = load(model_dir, Precision.FP16, device="cuda", timer_factory=factory)
    assert streams[0] is engine.stream is not None
    assert run_both(engine, ort_engine) < 0.5
    out = engine.step([SeqInput("z", list(range(32)))])
    assert out.device_us > 0
