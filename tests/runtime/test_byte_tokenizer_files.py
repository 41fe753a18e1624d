"""The built-in model's tokenizer as Hugging Face files (package data, for external clients)."""

from __future__ import annotations

from pathlib import Path

import infermeter
from infermeter.runtime.tokenizer import ByteTokenizer
from scripts.byte_tokenizer_files import byte_tokenizer

SHIPPED = Path(infermeter.__file__).parent / "data" / "tiny-gpt-tokenizer"
TEXT = "Hello, wörld! 🙂 naïve\ttabs and\nnew lines, ½ ∑ 中文"


def test_shipped_tokenizer_json_gives_the_byte_tokenizers_ids() -> None:
    """tokenizer.json encodes and decodes text exactly as ByteTokenizer does, specials included."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(SHIPPED / "tokenizer.json"))
    ids = tok.encode(TEXT, add_special_tokens=False).ids
    assert ids == ByteTokenizer().encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert tok.token_to_id(ByteTokenizer.eos_token) == ByteTokenizer.eos_token_id
    assert tok.token_to_id(ByteTokenizer.pad_token) == ByteTokenizer.pad_token_id
    assert tok.get_vocab_size() == ByteTokenizer.vocab_size


def test_shipped_files_are_what_the_script_writes() -> None:
    """The package's tokenizer.json is the script's output (regenerate it if this fails)."""
    from tokenizers import Tokenizer

    shipped = Tokenizer.from_file(str(SHIPPED / "tokenizer.json"))
    assert shipped.to_str() == byte_tokenizer().to_str()
    assert (SHIPPED / "tokenizer_config.json").is_file()
