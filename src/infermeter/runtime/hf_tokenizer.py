"""A model's own tokenizer and chat template, through ``transformers``' ``AutoTokenizer``.

The built-in tokenizers (``runtime.tokenizer``) render chat with infermeter's plain template;
a model added with ``infermeter models add`` was trained on its own, so this wrapper renders
messages with the template the model ships (``chat_template.jinja`` or
``tokenizer_config.json``'s ``chat_template``), with the generation prompt appended, and
falls back to the plain template only when the model has none.

Encoding does not add a second BOS: when the text already starts with the BOS token (as a
rendered chat template often does), special tokens are not added again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infermeter.core.errors import ConfigError
from infermeter.runtime.tokenizer import render_chat


class TransformersTokenizer:
    """The Tokenizer protocol over a ``transformers`` fast tokenizer."""

    def __init__(self, tokenizer: Any, *, eos_token_id: int, vocab_size: int) -> None:
        self._tok = tokenizer
        self.eos_token_id = eos_token_id
        self.vocab_size = vocab_size
        bos = getattr(tokenizer, "bos_token", None)
        self._bos = bos if isinstance(bos, str) and bos else None

    @classmethod
    def from_dir(cls, model_dir: Path, *, vocab_size: int | None = None) -> TransformersTokenizer:
        """Load the tokenizer saved in ``model_dir`` (tokenizer.json + tokenizer_config.json)."""
        from transformers import AutoTokenizer

        if not (Path(model_dir) / "tokenizer.json").is_file():
            raise ConfigError(
                f"model directory {model_dir} has no tokenizer.json; add the model's tokenizer "
                "files (tokenizer.json, tokenizer_config.json) or import it from a .gguf"
            )
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        eos = tok.eos_token_id
        if not isinstance(eos, int):
            raise ConfigError(
                f"the tokenizer in {model_dir} names no end-of-text token; set eos_token in "
                "tokenizer_config.json"
            )
        return cls(tok, eos_token_id=eos, vocab_size=int(vocab_size or len(tok)))

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self._tok, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        add_special = not (self._bos is not None and text.startswith(self._bos))
        return list(self._tok(text, add_special_tokens=add_special)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with special tokens skipped."""
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def apply_chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        """The model's own template with the generation prompt; the plain one if it has none."""
        if not self.has_chat_template:
            return render_chat(messages)
        text = self._tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return str(text)


__all__ = ["TransformersTokenizer"]
