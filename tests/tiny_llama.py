"""A tiny Llama-architecture Hugging Face folder with random weights, written offline.

transformers' own ``LlamaForCausalLM`` from a 2-layer ``LlamaConfig`` (grouped-query
attention: 4 query heads, 2 KV heads), saved with ``save_pretrained`` as safetensors, with the
byte-level BPE tokenizer of ``compile.testmodel`` beside it. It stands in for a real Hugging
Face download where only the import and serving paths are under test. Tests that use it skip,
saying why, when torch or transformers is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from infermeter.runtime.compile.testmodel import write_test_model


def write_tiny_llama(dest: Path, *, seed: int = 0) -> Path:
    """Write the folder into ``dest`` (created) and return it."""
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: pip install -e '.[hf]'")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dest.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = write_test_model(dest / ".tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tokenizer_dir / name, dest / name)
    vocab = int(json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"])
    shutil.rmtree(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=0, bos_token_id=0, tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(config).eval().save_pretrained(str(dest), safe_serialization=True)
    return dest
