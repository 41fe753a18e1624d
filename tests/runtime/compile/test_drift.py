"""INT8 drift: zero against itself, small for the quantized graph, large for another model."""

from __future__ import annotations

from pathlib import Path

import pytest

from infermeter.runtime.compile import decoder_io
from infermeter.runtime.compile.drift import DRIFT_PROMPTS, measure_drift
from infermeter.runtime.compile.onnx_precision import calibration_feeds, quantize_int8
from infermeter.runtime.compile.quantization_data import default_texts
from infermeter.runtime.compile.testmodel import write_test_model
from infermeter.runtime.tokenizer import load_tokenizer


def test_a_graph_has_no_drift_against_itself(user_model: Path) -> None:
    """The same graph twice: zero logit difference, every greedy token agrees."""
    info = decoder_io.model_info(user_model)
    tok = load_tokenizer(user_model)
    report = measure_drift(user_model / "model.onnx", user_model / "model.onnx", info, tok, new_tokens=4)
    assert report.max_logit_diff == 0.0 and report.token_agreement == 1.0
    assert report.prompts == len(DRIFT_PROMPTS) and report.positions == 4 * len(DRIFT_PROMPTS)


def test_int8_drift_is_small_and_nonzero(user_model: Path, tmp_path: Path) -> None:
    """Quantization moves logits a little and keeps most greedy tokens."""
    info = decoder_io.model_info(user_model)
    tok = load_tokenizer(user_model)
    int8 = tmp_path / "model.onnx"
    quantize_int8(
        user_model / "model.onnx",
        int8,
        calibration_feeds(user_model / "model.onnx", info, tok, default_texts(), samples=8),
    )
    report = measure_drift(user_model / "model.onnx", int8, info, tok, new_tokens=8)
    assert 0 < report.max_logit_diff < 1.0
    assert report.token_agreement >= 0.8


def test_another_model_shows_large_drift(user_model: Path, tmp_path: Path) -> None:
    """A graph with other weights disagrees far more: drift measures a real difference."""
    other = write_test_model(tmp_path / "other", seed=99)
    info = decoder_io.model_info(user_model)
    report = measure_drift(
        user_model / "model.onnx", other / "model.onnx", info, load_tokenizer(user_model), new_tokens=8
    )
    assert report.token_agreement < 0.5 and report.max_logit_diff > 0.1


def test_prompts_that_tokenize_to_nothing_are_an_error(user_model: Path) -> None:
    """Drift needs at least one prompt the tokenizer encodes."""
    info = decoder_io.model_info(user_model)
    with pytest.raises(ValueError, match="no drift prompt"):
        measure_drift(
            user_model / "model.onnx",
            user_model / "model.onnx",
            info,
            load_tokenizer(user_model),
            prompts=[""],
        )
