"""Tokenizers: the byte-level one round-trips text; model directories pick the right tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.core.errors import ConfigError
from infermeter.runtime.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer, render_chat


@given(st.text())
def test_byte_round_trip(text: str) -> None:
    """Any text encodes to byte ids that decode back to the same text."""
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text


def test_byte_special_ids() -> None:
    """eos is 256, pad 257, the vocabulary 260; special ids decode to nothing."""
    tok = ByteTokenizer()
    assert (tok.eos_token_id, tok.pad_token_id, tok.vocab_size) == (256, 257, 260)
    assert tok.decode([104, 105, 256, 257, 258, 259]) == "hi"


def test_partial_utf8_decodes_without_error() -> None:
    """A prefix cut inside a multi-byte character decodes to a replacement char, never raising."""
    tok = ByteTokenizer()
    ids = tok.encode("é€")
    assert tok.decode(ids[:1]) == "\ufffd"
    assert tok.decode(ids[:3]).startswith("é")


def test_chat_template() -> None:
    """Messages render as 'Role: content' lines ending with 'Assistant:'."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert ByteTokenizer().apply_chat_template(messages) == "System: Be brief.\nUser: Hi\nAssistant:"
    with pytest.raises(ValueError, match="message 0 has no role"):
        render_chat([{"content": "x"}])


def test_load_tokenizer_picks_bytes(tmp_path: Path) -> None:
    """config.json with tokenizer_class infermeter-bytes gives the ByteTokenizer."""
    (tmp_path / "config.json").write_text(json.dumps({"tokenizer_class": "infermeter-bytes"}))
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)


def _write_word_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "</s>": 1, "hello": 2, "world": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["</s>"])
    tok.save(str(path / "tokenizer.json"))


def test_load_tokenizer_wraps_tokenizer_json(tmp_path: Path) -> None:
    """Without the bytes class, tokenizer.json is loaded and eos comes from config.json."""
    _write_word_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 1, "vocab_size": 8}))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer)
    assert (tok.eos_token_id, tok.vocab_size) == (1, 8)
    assert tok.encode("hello world") == [2, 3]
    assert tok.decode([2, 1, 3]) == "hello world"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "User: hi\nAssistant:"


def test_hf_eos_from_tokenizer_config(tmp_path: Path) -> None:
    """When config.json has no eos id, tokenizer_config.json's eos_token names it."""
    _write_word_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "</s>"}}))
    tok = load_tokenizer(tmp_path)
    assert tok.eos_token_id == 1
    assert tok.vocab_size == 4


def test_missing_tokenizer_json(tmp_path: Path) -> None:
    """A directory with neither the bytes class nor tokenizer.json is a ConfigError."""
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"no tokenizer\.json"):
        load_tokenizer(tmp_path)
