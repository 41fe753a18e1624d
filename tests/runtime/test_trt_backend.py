"""TrtEngine: runs a plan like ONNX Runtime runs its graph (needs TensorRT and a GPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from infermeter.core.errors import ConfigError
from infermeter.core.timing import NullTimer
from infermeter.core.types import Precision
from infermeter.runtime.compile.builder import build_engine
from infermeter.runtime.compile.metadata import BuildArgs
from infermeter.runtime.compile.tensorrt_builder import tensorrt_available
from infermeter.runtime.compile.testmodel import write_test_model
from infermeter.runtime.engine import SeqInput
from infermeter.runtime.engine_store import EngineStore
from infermeter.runtime.ort_backend import OrtEngine
from infermeter.runtime.trt_backend import TrtEngine

REASON = tensorrt_available()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_loading_without_tensorrt_names_the_extra(tmp_path: Path) -> None:
    """Without tensorrt, loading a plan says which pip install fixes it."""
    with pytest.raises(ConfigError, match=r"pip install 'infermeter\[tensorrt"):
        TrtEngine.load(
            tmp_path,
            precision=Precision.FP16,
            timer_factory=lambda s: NullTimer(),
            dims={},
            profiles=(),
            model="m",
            engine_id="e",
            max_batch=1,
            max_seq_len=8,
        )


@pytest.mark.tensorrt
@pytest.mark.skipif(REASON is not None, reason=f"needs TensorRT and a GPU: {REASON}")
def test_trt_engine_matches_onnx_runtime(tmp_path: Path) -> None:
    """Batched, padded, cached steps on the plan give ONNX Runtime's logits (FP32 plan)."""
    model = write_test_model(tmp_path / "model")
    store = EngineStore(tmp_path / "home")
    record = build_engine(
        BuildArgs(str(model), "tensorrt", Precision.FP32, 4, 128), store, models_dir=tmp_path / "models"
    )
    trt = TrtEngine.load(
        store.path(record),
        precision=record.precision,
        timer_factory=lambda s: NullTimer(),
        dims=record.options["dims"],
        profiles=record.profiles,
        model=record.model,
        engine_id=record.engine_id,
        max_batch=4,
        max_seq_len=128,
    )
    ort = OrtEngine.load(model, timer=NullTimer())
    steps = [
        [SeqInput("a", [5, 6, 7, 8]), SeqInput("b", [9, 10])],
        [SeqInput("a", [11]), SeqInput("b", [12]), SeqInput("c", [1, 2, 3])],
    ]
    for inputs in steps:
        got, want = trt.step(inputs).logits, ort.step(inputs).logits
        for seq in want:
            np.testing.assert_allclose(got[seq], want[seq], atol=2e-3)
    assert trt.info.extra["context_device_bytes"] >= 0
    trt.close()
    store.close()
