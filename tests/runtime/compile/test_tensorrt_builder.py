"""TensorRT builds: a clear install message without TensorRT; a real plan where it runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from infermeter.core.errors import ConfigError
from infermeter.core.types import Precision
from infermeter.runtime.compile import tensorrt_builder
from infermeter.runtime.compile.builder import build_engine
from infermeter.runtime.compile.metadata import BuildArgs
from infermeter.runtime.engine_store import EngineStore

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
REASON = tensorrt_builder.tensorrt_available()


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_missing_tensorrt_names_the_extra_to_install() -> None:
    """Without tensorrt the error says which pip install fixes it."""
    with pytest.raises(ConfigError, match=r"pip install 'infermeter\[tensorrt"):
        tensorrt_builder.import_tensorrt()
    assert REASON is not None and "TensorRT is not installed" in REASON


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_a_tensorrt_build_without_tensorrt_fails_before_staging(tmp_path: Path, user_model: Path) -> None:
    """`engines build --backend tensorrt` fails fast and leaves the store untouched."""
    store = EngineStore(tmp_path)
    try:
        with pytest.raises(ConfigError, match="TensorRT is not installed"):
            build_engine(
                BuildArgs(str(user_model), "tensorrt", Precision.INT8, 4, 128),
                store,
                models_dir=tmp_path / "models",
            )
        assert store.list() == []
        assert not (store.root / ".staging").exists() or not any((store.root / ".staging").iterdir())
    finally:
        store.close()


@pytest.mark.tensorrt
@pytest.mark.skipif(REASON is not None, reason=f"TensorRT build needs TensorRT and a GPU: {REASON}")
@pytest.mark.parametrize("precision", [Precision.FP16, Precision.INT8])
def test_tensorrt_builds_a_plan_with_one_profile_per_regime(
    tmp_path: Path, user_model: Path, precision: Precision
) -> None:
    """A strongly typed plan from the precision graph, with the planned profiles and cache."""
    store = EngineStore(tmp_path)
    try:
        record = build_engine(
            BuildArgs(str(user_model), "tensorrt", precision, 4, 128), store, models_dir=tmp_path / "models"
        )
        assert record.artifact == "model.plan" and record.compute_capability
        assert record.options["optimization_profiles"] == len(record.profiles) == 2
        assert (store.root / tensorrt_builder.TIMING_CACHE_FILE).stat().st_size > 0
    finally:
        store.close()
