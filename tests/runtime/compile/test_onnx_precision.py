"""Precision graphs: FP16 keeps sensitive ops in FP32; INT8 is weight-only MatMulNBits (ONNX
Runtime) or symmetric Q/DQ on weights (TensorRT)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from infermeter.runtime.compile import decoder_io
from infermeter.runtime.compile.onnx_precision import (
    calibration_feeds,
    convert_fp16,
    quantize_int8,
    quantize_weight_only_int8,
)
from infermeter.runtime.compile.quantization_data import default_texts, read_texts, texts_sha256
from infermeter.runtime.engine import EngineInfo
from infermeter.runtime.tokenizer import load_tokenizer

PROMPT = "Engines are built for one model and the ledger records every request."


@pytest.fixture(scope="module")
def info(user_model: Path) -> EngineInfo:
    return decoder_io.model_info(user_model)


@pytest.fixture(scope="module")
def fp16(user_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fp16") / "model.onnx"
    convert_fp16(user_model / "model.onnx", out)
    return out


@pytest.fixture(scope="module")
def int8(user_model: Path, info: EngineInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "model.onnx"
    feeds = calibration_feeds(
        user_model / "model.onnx", info, load_tokenizer(user_model), default_texts(), samples=8
    )
    quantize_int8(user_model / "model.onnx", out, feeds)
    return out


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    types |= {i.name: i.data_type for i in inferred.graph.initializer}
    return types


def _logits(path: Path, info: EngineInfo, ids: list[int]) -> np.ndarray:
    return decoder_io.run(decoder_io.open_session(path), info, ids)[0]


def test_fp16_keeps_layernorm_and_softmax_in_fp32(fp16: Path) -> None:
    """Every LayerNorm and Softmax reads FP32; the weight MatMuls read FP16 weights."""
    model = onnx.load(str(fp16))
    types = _value_types(model)
    sensitive = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert sensitive
    assert all(types[n.input[0]] == TensorProto.FLOAT for n in sensitive)
    weights = {i.name: i for i in model.graph.initializer}
    matmul_weights = [
        weights[n.input[1]] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights
    ]
    assert matmul_weights and all(w.data_type == TensorProto.FLOAT16 for w in matmul_weights)


def test_fp16_io_halves_the_kv_cache_and_keeps_fp32_logits(fp16: Path) -> None:
    """past/present are FP16 (half the cache memory); logits stay FP32 for sampling."""
    graph = onnx.load(str(fp16)).graph
    dtype = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]}
    assert dtype["past_key_values.0.key"] == TensorProto.FLOAT16
    assert dtype["present.1.value"] == TensorProto.FLOAT16
    assert dtype["logits"] == TensorProto.FLOAT and dtype["input_ids"] == TensorProto.INT64


def test_fp16_graph_tracks_fp32(user_model: Path, fp16: Path, info: EngineInfo) -> None:
    """ONNX Runtime runs the FP16 graph and its logits stay close to FP32's."""
    ids = load_tokenizer(user_model).encode(PROMPT)
    a, b = _logits(user_model / "model.onnx", info, ids), _logits(fp16, info, ids)
    assert np.max(np.abs(a - b)) < 0.05
    assert np.mean(a.argmax(-1) == b.argmax(-1)) > 0.9


def test_int8_quantizes_exactly_the_weight_matmuls(user_model: Path, int8: Path) -> None:
    """Each weight MatMul reads dequantized INT8 input and weight; attention's stay FP32."""
    source = onnx.load(str(user_model / "model.onnx"))
    weights = {i.name for i in source.graph.initializer}
    source_ops = Counter(n.op_type for n in source.graph.node)
    n_weight_matmuls = sum(1 for n in source.graph.node if n.op_type == "MatMul" and n.input[1] in weights)
    model = onnx.load(str(int8))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    dequantized = [all(producer.get(i) == "DequantizeLinear" for i in n.input) for n in matmuls]
    assert len(matmuls) == source_ops["MatMul"]
    assert sum(dequantized) == n_weight_matmuls > 0
    for node, both in zip(matmuls, dequantized, strict=True):
        if not both:  # attention: activation by activation, left in FP32
            assert all(producer.get(i) != "DequantizeLinear" for i in node.input)
    ops = Counter(n.op_type for n in model.graph.node)
    for op in ("LayerNormalization", "Softmax", "Gather"):
        assert ops[op] == source_ops[op]


def test_int8_is_symmetric_and_per_channel(int8: Path) -> None:
    """Zero points are all 0 (TensorRT's rule); weight scales are one per output channel."""
    model = onnx.load(str(int8))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    zero_points = [inits[n.input[2]] for n in dq if len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and all(not np.any(z) and z.dtype == np.int8 for z in zero_points)
    weight_dq = [n for n in dq if n.input[0] in inits and inits[n.input[0]].ndim == 2]
    assert weight_dq
    for n in weight_dq:
        assert inits[n.input[1]].shape == (inits[n.input[0]].shape[1],)


def test_int8_graph_runs_and_tracks_fp32(user_model: Path, int8: Path, info: EngineInfo) -> None:
    """ONNX Runtime runs the Q/DQ graph; its greedy tokens mostly match FP32's."""
    ids = load_tokenizer(user_model).encode(PROMPT)
    a, b = _logits(user_model / "model.onnx", info, ids), _logits(int8, info, ids)
    assert 0 < np.max(np.abs(a - b)) < 1.0
    assert np.mean(a.argmax(-1) == b.argmax(-1)) > 0.8


def test_calibration_feeds_cover_prefill_and_decode(user_model: Path, info: EngineInfo) -> None:
    """Each text gives a prefill feed (empty past) and a one-token decode feed after a past."""
    tok = load_tokenizer(user_model)
    feeds = calibration_feeds(user_model / "model.onnx", info, tok, [PROMPT, "x", PROMPT * 9], max_tokens=16)
    assert len(feeds) == 4  # "x" is one token: too short to calibrate anything
    prefill, decode = feeds[0], feeds[1]
    n = prefill["input_ids"].shape[1]
    assert prefill["past_key_values.0.key"].shape[2] == 0 and n == 16
    assert decode["input_ids"].shape == (1, 1)
    assert decode["past_key_values.1.value"].shape[2] == n - 1
    assert decode["attention_mask"].shape == (1, n) and decode["position_ids"][0, 0] == n - 1


def test_quantizing_without_calibration_samples_is_refused(user_model: Path, tmp_path: Path) -> None:
    """An empty calibration set is an error naming the fix."""
    with pytest.raises(ValueError, match="at least one sample"):
        quantize_int8(user_model / "model.onnx", tmp_path / "q.onnx", [])


def test_default_calibration_text_is_the_projects_own_and_stable() -> None:
    """The built-in set is infermeter's docstring paragraphs, the same on every call."""
    texts = default_texts()
    assert len(texts) > 20 and all(len(t) >= 40 for t in texts)
    assert any("infermeter" in t for t in texts)
    assert texts_sha256(texts) == texts_sha256(default_texts())


def test_user_calibration_files_text_and_jsonl(tmp_path: Path) -> None:
    """Plain text splits on blank lines; JSON Lines take each line's text; bad input is named."""
    txt = tmp_path / "cal.txt"
    txt.write_text("first paragraph\nstill first\n\nsecond\n\n\n")
    assert read_texts(txt) == ["first paragraph still first", "second"]
    jsonl = tmp_path / "cal.jsonl"
    jsonl.write_text(json.dumps({"text": "a"}) + "\n\n" + json.dumps({"text": "b"}) + "\n")
    assert read_texts(jsonl) == ["a", "b"]
    jsonl.write_text('{"text": "a"}\n{"nope": 1}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_texts(jsonl)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no text"):
        read_texts(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="cannot read calibration file"):
        read_texts(tmp_path / "missing.txt")


@pytest.fixture(scope="module")
def weight_only(user_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    out = tmp_path_factory.mktemp("weight-only") / "model.onnx"
    return out, quantize_weight_only_int8(user_model / "model.onnx", out)


def test_weight_only_int8_fuses_every_weight_matmul_into_matmulnbits(
    user_model: Path, weight_only: tuple[Path, dict[str, object]]
) -> None:
    """Each MatMul with a constant weight becomes one 8-bit MatMulNBits; nothing dequantizes
    per step (no DequantizeLinear), and the recipe names the bits and block size."""
    source = onnx.load(str(user_model / "model.onnx"))
    weights = {i.name for i in source.graph.initializer}
    expected = sum(1 for n in source.graph.node if n.op_type == "MatMul" and n.input[1] in weights)
    out, recipe = weight_only
    ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    nbits = [n for n in onnx.load(str(out)).graph.node if n.op_type == "MatMulNBits"]
    assert ops["MatMulNBits"] == expected == recipe["quantized_nodes"]
    assert ops["DequantizeLinear"] == 0 and ops["QuantizeLinear"] == 0
    attrs = {a.name: a.i for a in nbits[0].attribute}
    assert (attrs["bits"], attrs["block_size"], attrs["accuracy_level"]) == (8, 32, 4)
    assert recipe["format"] == "MatMulNBits" and recipe["calibration"] is None


def test_weight_only_int8_stays_close_to_fp32(
    user_model: Path, info: EngineInfo, weight_only: tuple[Path, dict[str, object]]
) -> None:
    """The weight-only graph's logits differ from FP32's, but by little, with the same argmax."""
    ids = load_tokenizer(user_model).encode(PROMPT)
    a, b = _logits(user_model / "model.onnx", info, ids), _logits(weight_only[0], info, ids)
    diff = float(np.max(np.abs(a - b)))
    assert 0 < diff < 0.5
    assert float(np.mean(np.argmax(a, -1) == np.argmax(b, -1))) > 0.9


def test_a_graph_without_weight_matmuls_has_nothing_to_quantize(tmp_path: Path) -> None:
    """A graph with no constant-weight MatMul is refused by name, not written unchanged."""
    x = onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    src = tmp_path / "relu.onnx"
    onnx.save(onnx.helper.make_model(graph), str(src))
    with pytest.raises(ValueError, match=r"relu\.onnx has no MatMul with a constant weight"):
        quantize_weight_only_int8(src, tmp_path / "out.onnx")
