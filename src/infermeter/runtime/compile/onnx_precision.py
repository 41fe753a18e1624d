"""Precision lives in the ONNX graph: FP16 conversion and two INT8 recipes.

The precision-specific graph is made here, once. ONNX Runtime (CPU) runs it; TensorRT 11 has
no precision flags and no calibrators, so its builder reads the precision from the graph too.

- FP16 (``convert_fp16``): ONNX Runtime's float16 converter, with the numerically sensitive
  ops kept in FP32 (``FP32_OPS``: LayerNorm, Softmax, reductions, Erf, exp/log/pow) and Cast
  nodes around them. The KV cache inputs and presents become FP16 (half the cache memory);
  ``logits`` stays FP32 for sampling.
- INT8 for ONNX Runtime (``quantize_weight_only_int8``): weight-only int8 through
  ``MatMulNBitsQuantizer`` (8 bits, symmetric, one scale per 32 weights of a column,
  ``accuracy_level`` 4 = int8 dot products inside the fused ``MatMulNBits`` kernel). Every
  MatMul with a constant weight becomes one ``MatMulNBits`` node; activations, the embedding
  Gather, norms and attention stay FP32. Measured on SmolLM2-135M (an Optimum export) against
  the alternatives (docs/benchmarks.md): static Q/DQ 29 % greedy agreement and 3.8x slower than
  FP32 (the weights are dequantized at every step); ``quantize_dynamic`` 2.3x faster but
  60 % agreement (per-tensor and per-channel alike); 4-bit ``MatMulNBits`` 69-73 %;
  8-bit ``MatMulNBits`` 97.5 % and 1.8x faster. No calibration set is needed.
- INT8 for TensorRT (``quantize_int8``): ``onnxruntime.quantization.quantize_static`` in QDQ
  format over a calibration set: symmetric INT8 activations (TensorRT takes zero-point 0 only) and
  per-output-channel symmetric INT8 weights, applied to the MatMul/Gemm nodes whose
  second input is a weight. Attention's activation-by-activation MatMuls, LayerNorm, Softmax
  and the embedding Gathers stay FP32.

Calibration data (``calibration_feeds``): sequences from a calibration text, each fed as a
prefill (empty past) and as a one-token decode after the FP32 graph's own past for the rest
of the sequence, so both regimes are calibrated.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx

from infermeter.runtime.compile import decoder_io
from infermeter.runtime.compile.decoder_io import Feeds
from infermeter.runtime.engine import EngineInfo, Tokenizer

FP32_OPS = (
    "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
    "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2",
    "Erf", "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Range", "CumSum",
)  # fmt: skip
QUANTIZED_OPS = ("MatMul", "Gemm")
_EXTERNAL_THRESHOLD = 1_800_000_000  # protobuf's 2 GB cap, with room for the graph itself


def convert_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """Write the FP16 graph of ``src`` to ``dst``; returns the recipe for the metadata."""
    from onnxruntime.transformers.float16 import (  # type: ignore[import-untyped]
        DEFAULT_OP_BLOCK_LIST,
        convert_float_to_float16,
    )

    model = onnx.load(str(src))
    blocked = sorted(set(FP32_OPS) | set(DEFAULT_OP_BLOCK_LIST))
    with _quiet():
        converted = convert_float_to_float16(model, keep_io_types=["logits"], op_block_list=blocked)
    save_model(converted, dst)
    return {"recipe": "onnxruntime.transformers.float16", "fp32_ops": list(FP32_OPS), "io_fp32": ["logits"]}


def quantize_int8(src: Path, dst: Path, calibration: Iterable[Feeds]) -> dict[str, Any]:
    """Write the INT8 Q/DQ graph of ``src`` to ``dst``; returns the recipe for the metadata.

    ``calibration`` yields feed dicts for ``src``; ValueError if it yields none.
    """
    from onnxruntime.quantization import (  # type: ignore[import-untyped]
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    samples = list(calibration)
    if not samples:
        raise ValueError("INT8 calibration needs at least one sample; give a longer text")

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # untyped base
        def __init__(self) -> None:
            self._it: Iterator[Feeds] = iter(samples)

        def get_next(self) -> Feeds | None:
            return next(self._it, None)

    named = dst.with_name(dst.name + ".named.onnx")
    nodes = _name_nodes(src, named)
    big = sum(p.stat().st_size for p in named.parent.glob(named.name + "*")) > _EXTERNAL_THRESHOLD
    try:
        with _quiet():
            quantize_static(
                str(named), str(dst), Reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_quantize=nodes,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                use_external_data_format=big,
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                },
            )  # fmt: skip
    finally:
        for temp in named.parent.glob(named.name + "*"):
            temp.unlink(missing_ok=True)
        for leftover in dst.parent.glob("*augmented_model*.onnx"):
            leftover.unlink(missing_ok=True)
    return {
        "recipe": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "activations": "int8 symmetric (MinMax)",
        "weights": "int8 symmetric per-channel",
        "quantized_nodes": len(nodes),
        "calibration_samples": len(samples),
    }


WEIGHT_ONLY_BITS = 8
WEIGHT_ONLY_BLOCK = 32
WEIGHT_ONLY_ACCURACY_LEVEL = 4  # int8 activations inside the kernel, int32 accumulation


def quantize_weight_only_int8(src: Path, dst: Path) -> dict[str, Any]:
    """Write the weight-only int8 ``MatMulNBits`` graph of ``src`` to ``dst``; returns the recipe.

    ValueError if ``src`` has no MatMul with a constant weight (nothing to quantize).
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import (  # type: ignore[import-untyped]
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    model = onnx.load(str(src))
    weights = {i.name for i in model.graph.initializer}
    eligible = sum(1 for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights)
    if eligible == 0:
        raise ValueError(f"{src.name} has no MatMul with a constant weight; there is nothing to quantize")
    config = DefaultWeightOnlyQuantConfig(
        block_size=WEIGHT_ONLY_BLOCK,
        is_symmetric=True,
        accuracy_level=WEIGHT_ONLY_ACCURACY_LEVEL,
        bits=WEIGHT_ONLY_BITS,
    )
    with _quiet():
        quantizer = MatMulNBitsQuantizer(model, algo_config=config)
        quantizer.process()
    quantized = quantizer.model.model
    nodes = sum(1 for n in quantized.graph.node if n.op_type == "MatMulNBits")
    save_model(quantized, dst)
    return {
        "recipe": "onnxruntime.quantization.matmul_nbits_quantizer",
        "format": "MatMulNBits",
        "weights": f"int{WEIGHT_ONLY_BITS} symmetric, one scale per {WEIGHT_ONLY_BLOCK} weights",
        "activations": f"fp32 (accuracy_level {WEIGHT_ONLY_ACCURACY_LEVEL}: int8 inside the kernel)",
        "quantized_nodes": nodes,
        "calibration": None,
    }


def calibration_feeds(
    graph: Path,
    info: EngineInfo,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    max_tokens: int = 64,
    samples: int = 32,
) -> list[Feeds]:
    """Prefill and decode feeds for ``graph`` from up to ``samples`` texts of the set."""
    session = decoder_io.open_session(graph)
    limit = min(max_tokens, info.max_seq_len)
    out: list[Feeds] = []
    for text in texts:
        ids = [t for t in tokenizer.encode(text) if 0 <= t < info.vocab_size][:limit]
        if len(ids) < 2:
            continue
        out.append(decoder_io.feeds(session, info, ids))
        _, presents = decoder_io.run(session, info, ids[:-1])
        out.append(decoder_io.feeds(session, info, ids[-1:], presents))
        if len(out) >= 2 * samples:
            break
    return out


def save_model(model: onnx.ModelProto, dst: Path) -> None:
    """Save, with weights in ``<dst>.data`` when the graph is too large for one protobuf."""
    external = model.ByteSize() > _EXTERNAL_THRESHOLD
    onnx.save(
        model,
        str(dst),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=dst.name + ".data",
    )


def external_data_files(path: Path) -> list[str]:
    """Names of the external-data files ``path`` refers to (empty for a self-contained graph)."""
    model = onnx.load(str(path), load_external_data=False)
    names: set[str] = set()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            names |= {e.value for e in init.external_data if e.key == "location"}
    return sorted(names)


def _name_nodes(src: Path, dst: Path) -> list[str]:
    """Copy ``src`` to ``dst`` with every node named; return the weight MatMul/Gemm names."""
    model = onnx.load(str(src))
    weights = {i.name for i in model.graph.initializer}
    used = {n.name for n in model.graph.node if n.name}
    chosen: list[str] = []
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = _unique(f"{node.op_type}_{index}", used)
            used.add(node.name)
        if node.op_type in QUANTIZED_OPS and len(node.input) > 1 and node.input[1] in weights:
            chosen.append(node.name)
    save_model(model, dst)
    return chosen


def _unique(name: str, used: set[str]) -> str:
    candidate, n = name, 0
    while candidate in used:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the quantizer's and converter's advice logged on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


__all__ = [
    "FP32_OPS",
    "QUANTIZED_OPS",
    "calibration_feeds",
    "convert_fp16",
    "external_data_files",
    "quantize_int8",
    "quantize_weight_only_int8",
    "save_model",
]
