"""Names the command line needs before any backend is loaded.

The built-in model's name and the precisions each backend builds, in a module that imports
only ``core``, so ``infermeter --help`` and the read-only commands never load numpy, onnx or
ONNX Runtime (``runtime.builtin_model`` and ``runtime.compile.builder`` re-use these).
"""

from __future__ import annotations

from infermeter.core.types import Precision

BUILTIN_MODEL_NAME = "tiny-gpt"

BACKEND_PRECISIONS: dict[str, tuple[Precision, ...]] = {
    "onnxruntime": (Precision.FP32, Precision.FP16, Precision.INT8),
    "tensorrt": (Precision.FP32, Precision.FP16, Precision.INT8),
    "torch": (Precision.FP32, Precision.FP16, Precision.BF16),
}
