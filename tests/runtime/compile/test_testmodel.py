"""The generated user model has the Optimum layout and its own tokenizers tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

from infermeter.core.timing import NullTimer
from infermeter.runtime.compile.testmodel import EOS, TEST_MODEL_NAME
from infermeter.runtime.ort_backend import OrtEngine
from infermeter.runtime.tokenizer import HFTokenizer, load_tokenizer


def test_layout_is_an_optimum_export(user_model: Path) -> None:
    """model.onnx, config.json, tokenizer.json and tokenizer_config.json are written."""
    names = {p.name for p in user_model.iterdir()}
    assert {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((user_model / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["name"] == TEST_MODEL_NAME


def test_its_tokenizer_is_the_tokenizers_one(user_model: Path) -> None:
    """load_tokenizer picks tokenizer.json, finds eos, and round-trips any text."""
    tok = load_tokenizer(user_model)
    assert isinstance(tok, HFTokenizer)
    text = "Flex requests cost less. ünïcödé too!"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())  # trained merges, not bytes
    assert tok.decode([*ids, tok.eos_token_id]) == text  # eos is a special token
    assert json.loads((user_model / "tokenizer_config.json").read_text())["eos_token"] == EOS


def test_onnx_runtime_serves_it_with_the_tokenizer_vocabulary(user_model: Path) -> None:
    """The graph's vocabulary is the tokenizer's, so any encoded text runs."""
    engine = OrtEngine.load(user_model, timer=NullTimer())
    tok = load_tokenizer(user_model)
    assert engine.info.vocab_size == tok.vocab_size
    assert engine.info.model == TEST_MODEL_NAME and engine.info.eos_token_id == tok.eos_token_id
    from infermeter.runtime.engine import SeqInput

    out = engine.step([SeqInput("s", tok.encode("The ledger records"))])
    assert out.logits["s"].shape == (tok.vocab_size,)
