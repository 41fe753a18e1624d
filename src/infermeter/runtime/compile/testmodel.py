"""A tiny user model in the Hugging Face Optimum layout, made offline, for tests and docs.

``write_test_model(dest)`` writes what ``optimum-cli export onnx --task
text-generation-with-past`` would leave for a small GPT-2: ``model.onnx`` (inputs
``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values.{i}.key|value``),
``config.json`` (GPT-2 keys), ``tokenizer.json`` and ``tokenizer_config.json``. The
tokenizer is a byte-level BPE trained with the ``tokenizers`` library on a few sentences,
so it encodes any text; the graph is ``builtin_model.build_decoder_onnx`` over seeded
random weights sized to that tokenizer. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from infermeter.runtime.builtin_model import DecoderConfig, build_decoder_onnx, random_weights

EOS = "<|endoftext|>"
TEST_MODEL_NAME = "tiny-user"
_SENTENCES = (
    "The ledger records every request and the device time it used.",
    "A tenant reads its own usage, invoices and receipts.",
    "Engines are built for one model, backend, precision and device.",
    "The quick brown fox jumps over the lazy dog.",
    "Prefill reads the prompt; decode writes one token at a time.",
    "Flex requests run on the economy engine for less money.",
)


def train_tokenizer(vocab_size: int = 320) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` with ``<|endoftext|>`` as id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_SENTENCES), trainer=trainer)
    return tok


def write_test_model(
    dest: Path,
    *,
    name: str = TEST_MODEL_NAME,
    n_positions: int = 128,
    seed: int = 11,
) -> Path:
    """Write the tiny Optimum-layout model into ``dest`` (created if needed); returns ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    vocab = int(tok.get_vocab_size())
    eos = int(tok.token_to_id(EOS))
    config = DecoderConfig(
        vocab_size=vocab,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_inner=64,
        n_positions=n_positions,
        eos_token_id=eos,
    )
    model = build_decoder_onnx(random_weights(config, seed=seed, std=0.1), config)
    (dest / "model.onnx").write_bytes(model.SerializeToString())
    tok.save(str(dest / "tokenizer.json"))
    hf = config.hf_config(name=name, weights="random")
    hf["tokenizer_class"] = "PreTrainedTokenizerFast"
    (dest / "config.json").write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "model_max_length": n_positions,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
    return dest


__all__ = ["EOS", "TEST_MODEL_NAME", "train_tokenizer", "write_test_model"]
