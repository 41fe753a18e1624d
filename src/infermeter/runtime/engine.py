"""The engine protocol: every backend (ONNX Runtime, TensorRT, PyTorch, fake) looks like this.

An engine owns the KV cache of the sequences it is running, keyed by ``seq_id``. One call
to ``step`` is one batched step: each input feeds its new tokens (a prefill chunk, or one
decode token) after the sequence's cached past, and the engine returns the logits of each
input's last position together with the step's device time from its timer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from infermeter.core.errors import ContextTooLong, InvalidRequest
from infermeter.core.timing import StepTimer
from infermeter.core.types import Precision


@dataclass(frozen=True, slots=True)
class ShapeProfile:
    """An optimization profile: the shapes an engine is built for (min/opt/max)."""

    name: str  # "prefill" | "decode" | e.g. "decode-past-512"
    min_batch: int
    opt_batch: int
    max_batch: int
    min_tokens: int  # new tokens per sequence in one step
    opt_tokens: int
    max_tokens: int
    max_past: int  # cached tokens before the new ones

    def admits(self, batch: int, tokens: int, past: int) -> bool:
        return (
            self.min_batch <= batch <= self.max_batch
            and self.min_tokens <= tokens <= self.max_tokens
            and 0 <= past <= self.max_past
        )


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the router, scheduler, metering and ledger need to know about an engine."""

    engine_id: str
    model: str
    backend: str  # onnxruntime | tensorrt | torch | fake
    precision: Precision
    device: str  # "cpu" or e.g. "cuda:0"
    device_class: str  # key into the RU factor table, e.g. "cpu", "H100-SXM"
    max_batch: int
    max_seq_len: int  # prompt + completion tokens per sequence
    vocab_size: int
    eos_token_id: int | None
    num_layers: int
    num_kv_heads: int
    head_dim: int
    kv_bytes_per_element: int = 4
    profiles: tuple[ShapeProfile, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token holds: K and V for every layer."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_bytes_per_element


@dataclass(frozen=True, slots=True)
class SeqInput:
    """One sequence's part of a step: the new token ids to feed after its cached past."""

    seq_id: str
    tokens: Sequence[int]


@dataclass(slots=True)
class StepOutput:
    """Last-position logits per sequence (float32, shape [vocab]) and the step's device time."""

    logits: dict[str, npt.NDArray[np.float32]]
    device_us: int


class Engine(Protocol):
    info: EngineInfo
    timer: StepTimer

    def step(self, inputs: Sequence[SeqInput]) -> StepOutput:
        """Run one batched step. Sequences new to the engine start with an empty cache."""
        ...

    def past_length(self, seq_id: str) -> int:
        """Tokens cached for ``seq_id`` (0 if unknown)."""
        ...

    def release(self, seq_id: str) -> None:
        """Drop a sequence's cache. Unknown ids are ignored."""
        ...

    def close(self) -> None: ...


class Tokenizer(Protocol):
    eos_token_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def apply_chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        """Render chat messages to the prompt text the model was trained on."""
        ...


def validate_step(inputs: Sequence[SeqInput], info: EngineInfo, past_length: Callable[[str], int]) -> None:
    """The checks every engine makes before running a step, with one set of messages.

    Raises ValueError for an empty input or a seq_id given twice, ContextTooLong when a
    sequence would exceed ``info.max_seq_len``, InvalidRequest for a token id outside the
    vocabulary. Nothing has run when it raises.
    """
    seen: set[str] = set()
    limit, vocab = info.max_seq_len, info.vocab_size
    for x in inputs:
        if x.seq_id in seen:
            raise ValueError(f"seq_id {x.seq_id!r} appears twice in one step; give it once")
        seen.add(x.seq_id)
        if not x.tokens:
            raise ValueError(f"seq_id {x.seq_id!r} has no new tokens; a step feeds at least one")
        past = past_length(x.seq_id)
        total = past + len(x.tokens)
        if total > limit:
            raise ContextTooLong(
                f"sequence {x.seq_id} would hold {total:,} tokens ({past:,} cached + "
                f"{len(x.tokens):,} new); engine {info.engine_id} accepts at most "
                f"{limit:,}; shorten the prompt or lower max_tokens"
            )
        low, high = min(x.tokens), max(x.tokens)
        if low < 0 or high >= vocab:
            raise InvalidRequest(
                f"token id {low if low < 0 else high} of sequence {x.seq_id} is outside the "
                f"vocabulary 0..{vocab - 1} of engine {info.engine_id}; send ids the model's "
                "tokenizer produces",
                param="prompt",
            )


class HasLength(Protocol):
    @property
    def length(self) -> int: ...


class SequenceCaches:
    """The bookkeeping every KV-caching engine shares: per-sequence caches keyed by seq_id.

    Subclasses keep ``self._caches: dict[str, <cache with a .length>]`` and ``self.info``.
    """

    info: EngineInfo
    _caches: Mapping[str, HasLength]

    def past_length(self, seq_id: str) -> int:
        cache = self._caches.get(seq_id)
        return 0 if cache is None else cache.length

    def kv_bytes(self, seq_id: str) -> int:
        """Bytes of KV cache the sequence's cached tokens hold (0 if unknown)."""
        return self.past_length(seq_id) * self.info.kv_bytes_per_token

    def release(self, seq_id: str) -> None:
        self._caches.pop(seq_id, None)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class LoadedEngine:
    """An engine ready to serve, with the tokenizer of its model."""

    engine: Engine
    tokenizer: Tokenizer
