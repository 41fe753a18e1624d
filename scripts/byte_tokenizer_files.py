"""Write the built-in model's tokenizer as Hugging Face files (tokenizer.json and
tokenizer_config.json), for clients that count tokens with ``transformers``, e.g. guidellm:

    PYTHONPATH=src python scripts/byte_tokenizer_files.py src/infermeter/data/tiny-gpt-tokenizer

The ids are ``runtime.tokenizer.ByteTokenizer``'s: byte b is id b, 256 is ``<|endoftext|>``,
257 is ``<|pad|>``, 258 and 259 are reserved. tests/runtime/test_byte_tokenizer_files.py
checks that the shipped files encode and decode exactly as ByteTokenizer does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from infermeter.runtime.builtin_model import BUILTIN_CONFIG
from infermeter.runtime.tokenizer import ByteTokenizer

SPECIAL = (ByteTokenizer.eos_token, ByteTokenizer.pad_token, "<|reserved_258|>", "<|reserved_259|>")


def gpt2_byte_chars() -> dict[int, str]:
    """GPT-2's byte-level scheme: the printable character that stands for each byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = dict(zip(printable, printable, strict=True))
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {b: chr(c) for b, c in chars.items()}


def byte_tokenizer() -> Tokenizer:
    vocab = {ch: b for b, ch in gpt2_byte_chars().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    return tok


def write(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    byte_tokenizer().save(str(dest / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": ByteTokenizer.eos_token,
        "pad_token": ByteTokenizer.pad_token,
        "model_max_length": BUILTIN_CONFIG.n_positions,
        "clean_up_tokenization_spaces": False,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    write(Path(sys.argv[1]))
