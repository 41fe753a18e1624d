"""Tokenizers: the built-in byte-level one and a wrapper over Hugging Face ``tokenizer.json``.

Both render chat messages with the same plain-text template (see ``render_chat``)::

    System: You are terse.
    User: Hi there
    Assistant:

One ``Role: content`` line per message (role capitalised; a message's own newlines are
kept), then ``Assistant:`` with no trailing space, so the model writes the reply after it.
The built-in model is trained on plain text, so this template is what it knows best.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from infermeter.core.errors import ConfigError
from infermeter.runtime.engine import Tokenizer

BYTE_TOKENIZER_CLASS = "infermeter-bytes"

# Tokens a Hugging Face tokenizer commonly uses for end of text, tried in this order when
# neither config.json nor tokenizer_config.json names one.
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<|im_end|>", "<eos>")


def render_chat(messages: Sequence[Mapping[str, str]]) -> str:
    """Render ``[{"role", "content"}, ...]`` to the plain template, ending with ``Assistant:``."""
    lines = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if not role:
            raise ValueError(f"chat message {i} has no role; give each message a 'role' key")
        lines.append(f"{role.capitalize()}: {message.get('content', '')}")
    lines.append("Assistant:")
    return "\n".join(lines)


class ByteTokenizer:
    """Byte-level tokenizer: ids 0..255 are the UTF-8 bytes; 256 is eos, 257 is pad.

    ``vocab_size`` is 260: ids 258 and 259 are reserved and decode to nothing.
    """

    eos_token_id: int = 256
    pad_token_id: int = 257
    vocab_size: int = 260
    eos_token: str = "<|endoftext|>"
    pad_token: str = "<|pad|>"

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text``; special-token spellings in the text are plain bytes."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Bytes back to text; special ids are skipped and broken UTF-8 becomes U+FFFD.

        Decoding a prefix that ends inside a multi-byte character yields U+FFFD for the
        partial bytes rather than raising, so streaming callers should decode the whole
        generated sequence and emit only the new stable suffix.
        """
        data = bytes(i for i in ids if 0 <= i < 256)
        return data.decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        """The plain template of this module's docstring."""
        return render_chat(messages)


class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer loaded from a model directory's tokenizer.json."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        eos_token_id: int,
        vocab_size: int,
        add_special_tokens: bool = True,
    ) -> None:
        self._tok = tokenizer
        self.eos_token_id = eos_token_id
        self.vocab_size = vocab_size
        self._add_special = add_special_tokens

    @classmethod
    def from_dir(cls, model_dir: Path) -> HFTokenizer:
        """Load ``model_dir/tokenizer.json``; eos from config.json, else tokenizer_config.json."""
        from tokenizers import Tokenizer as _HFTok  # imported here: only user model dirs need it

        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise ConfigError(
                f"model directory {model_dir} has no tokenizer.json; add the model's "
                f'tokenizer.json or set "tokenizer_class": "{BYTE_TOKENIZER_CLASS}" in config.json'
            )
        tok = _HFTok.from_file(str(path))
        config = _read_json(model_dir / "config.json")
        tok_config = _read_json(model_dir / "tokenizer_config.json")
        eos = _find_eos(tok, config, tok_config)
        if eos is None:
            raise ConfigError(
                f"cannot find the end-of-text token of the tokenizer in {model_dir}; "
                "set eos_token_id in config.json"
            )
        vocab = config.get("vocab_size")
        vocab_size = int(vocab) if isinstance(vocab, int) else int(tok.get_vocab_size())
        return cls(tok, eos_token_id=eos, vocab_size=vocab_size)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=self._add_special).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with special tokens skipped."""
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def apply_chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        """The plain template of this module's docstring (the model's own template is not used)."""
        return render_chat(messages)


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The tokenizer of a model directory: bytes if config.json says so, else tokenizer.json."""
    config = _read_json(model_dir / "config.json")
    if config.get("tokenizer_class") == BYTE_TOKENIZER_CLASS:
        return ByteTokenizer()
    return HFTokenizer.from_dir(model_dir)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; fix or remove the file") from exc
    return data if isinstance(data, dict) else {}


def _find_eos(tok: Any, config: Mapping[str, Any], tok_config: Mapping[str, Any]) -> int | None:
    eos = config.get("eos_token_id")
    if isinstance(eos, list) and eos:  # some configs list several; the first is canonical
        eos = eos[0]
    if isinstance(eos, int):
        return eos
    name = tok_config.get("eos_token")
    if isinstance(name, dict):  # the AddedToken form {"content": "</s>", ...}
        name = name.get("content")
    candidates = ([name] if isinstance(name, str) else []) + list(_EOS_CANDIDATES)
    for candidate in candidates:
        token_id = tok.token_to_id(candidate)
        if token_id is not None:
            return int(token_id)
    return None
