"""Load the engines a default service runs: the built-in model on ONNX Runtime (CPU)."""

from __future__ import annotations

from collections.abc import Callable

from infermeter.app.service import LoadedEngine
from infermeter.config import Settings
from infermeter.core.timing import StepTimer
from infermeter.core.types import Precision
from infermeter.runtime.builtin_model import ensure_builtin_model
from infermeter.runtime.ort_backend import OrtEngine
from infermeter.runtime.tokenizer import load_tokenizer


def load_default_engines(settings: Settings, timer_factory: Callable[[], StepTimer]) -> list[LoadedEngine]:
    model_dir = ensure_builtin_model(settings.models_dir / "tiny-gpt")
    tokenizer = load_tokenizer(model_dir)
    threads = settings.intra_op_threads or None
    fp32 = OrtEngine.load(model_dir, precision=Precision.FP32, timer=timer_factory(),
                          intra_op_threads=threads, max_batch=settings.max_batch,
                          model_name=settings.model)
    return [LoadedEngine(fp32, tokenizer)]
