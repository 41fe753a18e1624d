"""Batched, left-padded KV-cache steps over torch tensors: the half an engine shares.

Both device engines (``TorchEngine``, ``TrtEngine``) keep each sequence's KV cache as a
tensor on the device and run a step the way ``OrtEngine`` does on the CPU: inputs split into
a decode group (one new token each) and a prefill group (a chunk after a cached past), each
run as one left-padded batch whose pads are masked out (``attention_mask`` 0, true
``position_ids``), and each sequence's new K/V cut back out without the padding.

A subclass supplies ``_forward(input_ids, attention_mask, position_ids, past)`` returning the
last position's logits ``[B, vocab]`` and the new K/V ``[layers, 2, B, heads, N, head_dim]``.

Timing: ``timer.begin()`` comes before the group's device work is assembled and
``timer.end()`` after its caches are updated, all on the engine's stream; the only sync is
the logits' copy to the host, after which ``timer.elapsed_us()`` is read. With a CUDA-event
timer on the engine's stream that is the step's device time with no added sync.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from infermeter.core.errors import ConfigError, EngineError
from infermeter.core.timing import StepTimer
from infermeter.runtime.engine import EngineInfo, SeqInput, SequenceCaches, StepOutput, validate_step

TimerFactory = Callable[[Any], StepTimer]  # receives the engine's CUDA stream, or None on CPU


def import_torch() -> Any:
    """``torch``, or a ConfigError naming the extra that installs it."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise ConfigError(
            "this engine needs PyTorch, which is not installed: pip install 'infermeter[torch]'"
        ) from exc


@dataclass(slots=True)
class _Cache:
    """One sequence's cache ``kv[layer, key|value, head, position, dim]``, grown by doubling."""

    kv: Any
    length: int


class PaddedKVEngine(SequenceCaches):
    """The Engine protocol over device-resident caches; subclasses run the model."""

    def __init__(
        self, info: EngineInfo, timer: StepTimer, *, device: Any, kv_dtype: Any, stream: Any | None
    ) -> None:
        self.torch = import_torch()
        self.info = info
        self.timer = timer
        self.device = device
        self.stream = stream  # torch.cuda.Stream on a GPU, None on the CPU
        self._kv_dtype = kv_dtype
        self._caches: dict[str, _Cache] = {}
        self._closed = False

    # -- subclass hook --------------------------------------------------------------
    def _forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, past: Any) -> tuple[Any, Any]:
        raise NotImplementedError  # pragma: no cover - every engine class overrides it

    # -- the Engine protocol --------------------------------------------------------
    def step(self, inputs: Sequence[SeqInput]) -> StepOutput:
        """Run one batched step; a sequence new to the engine starts with an empty cache.

        Raises ContextTooLong (and runs nothing) when a sequence would exceed max_seq_len,
        InvalidRequest for a token outside the vocabulary, ValueError for an empty input or
        a seq_id given twice, EngineError once closed.
        """
        if self._closed:
            raise EngineError(f"engine {self.info.engine_id} is closed; load it again")
        if not inputs:
            return StepOutput({}, 0)
        self._validate(inputs)
        groups = self._groups(inputs)
        torch = self.torch
        streamed = torch.cuda.stream(self.stream) if self.stream is not None else None
        with torch.inference_mode(), streamed or contextlib.nullcontext():
            self.timer.begin()
            last = []
            for group in groups:
                logits, new_kv = self._forward(*self._assemble(group))
                self._scatter(group, new_kv)
                last.append(logits)
            self.timer.end()
            host = [t.float().cpu().numpy() for t in last]  # the step's one sync point
        device_us = self.timer.elapsed_us()
        out: dict[str, npt.NDArray[np.float32]] = {}
        for group, logits in zip(groups, host, strict=True):
            for row, x in enumerate(group):
                out[x.seq_id] = np.ascontiguousarray(logits[row], dtype=np.float32)
        return StepOutput(out, device_us)

    def close(self) -> None:
        self._caches.clear()
        self._closed = True

    # -- internals ------------------------------------------------------------------
    def _groups(self, inputs: Sequence[SeqInput]) -> list[list[SeqInput]]:
        """The batches one step runs: every decode input together, then the prefill chunks."""
        decode = [x for x in inputs if len(x.tokens) == 1]
        prefill = [x for x in inputs if len(x.tokens) > 1]
        return [g for g in (decode, prefill) if g]

    def _validate(self, inputs: Sequence[SeqInput]) -> None:
        validate_step(inputs, self.info, self.past_length)

    def _assemble(self, group: Sequence[SeqInput]) -> tuple[Any, Any, Any, Any]:
        """Left-padded device tensors for one group; pads are masked, positions are true."""
        torch, info = self.torch, self.info
        pasts = [self.past_length(x.seq_id) for x in group]
        b, p_max, n_max = len(group), max(pasts), max(len(x.tokens) for x in group)
        ids = np.zeros((b, n_max), np.int64)
        positions = np.zeros((b, n_max), np.int64)
        mask = np.zeros((b, p_max + n_max), np.int64)
        for row, (x, p) in enumerate(zip(group, pasts, strict=True)):
            n = len(x.tokens)
            ids[row, n_max - n :] = x.tokens
            positions[row, n_max - n :] = np.arange(p, p + n)
            mask[row, p_max - p : p_max] = 1
            mask[row, p_max + n_max - n :] = 1
        past = torch.zeros(
            (info.num_layers, 2, b, info.num_kv_heads, p_max, info.head_dim),
            dtype=self._kv_dtype,
            device=self.device,
        )
        for row, (x, p) in enumerate(zip(group, pasts, strict=True)):
            if p:
                past[:, :, row, :, p_max - p :] = self._caches[x.seq_id].kv[:, :, :, :p]
        to = self._to_device
        return to(ids), to(mask), to(positions), past

    def _to_device(self, array: npt.NDArray[np.int64]) -> Any:
        return self.torch.from_numpy(array).to(self.device, non_blocking=True)

    def _scatter(self, group: Sequence[SeqInput], new_kv: Any) -> None:
        """Append each sequence's new K/V (its last ``n`` positions, pads cut away)."""
        for row, x in enumerate(group):
            n = len(x.tokens)
            self._append(x.seq_id, new_kv[:, :, row, :, new_kv.shape[4] - n :])

    def _append(self, seq_id: str, new: Any) -> None:
        n = int(new.shape[3])
        cache = self._caches.get(seq_id)
        if cache is None:
            shape = (*new.shape[:3], 0, new.shape[4])
            cache = _Cache(self.torch.empty(shape, dtype=self._kv_dtype, device=self.device), 0)
            self._caches[seq_id] = cache
        needed = cache.length + n
        if needed > cache.kv.shape[3]:
            capacity = min(max(needed, 2 * cache.kv.shape[3], 16), self.info.max_seq_len)
            grown = self.torch.empty(
                (*cache.kv.shape[:3], capacity, cache.kv.shape[4]), dtype=self._kv_dtype, device=self.device
            )
            grown[:, :, :, : cache.length] = cache.kv[:, :, :, : cache.length]
            cache.kv = grown
        cache.kv[:, :, :, cache.length : needed] = new.to(self._kv_dtype)
        cache.length = needed


__all__ = ["PaddedKVEngine", "TimerFactory", "import_torch"]
