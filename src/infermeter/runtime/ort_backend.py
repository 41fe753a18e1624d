"""ONNX Runtime CPU engine for decoder models in the Hugging Face Optimum layout.

A model directory holds ``model.onnx`` (inputs ``input_ids``, ``attention_mask``, optionally
``position_ids``, ``past_key_values.{i}.key|value``; outputs ``logits``, ``present.{i}.key|value``)
and ``config.json`` (GPT-2 or Llama-style keys for layers, heads, positions and eos).

One ``step`` splits its inputs into a decode group (one new token each) and a prefill group
(several new tokens, possibly a chunk after a cached past), and runs each group as one
left-padded batch: pasts padded to the group's longest past ``P``, new tokens to its longest
chunk ``N``, ``attention_mask`` zero on every pad, ``position_ids`` the true positions. Each
sequence's present is cut back out without the padding, so the cache holds real tokens only.
The step timer brackets the whole step — batch assembly, the session runs and cutting the
presents back out — because on a CPU that copying occupies the same cores the model runs
on: it is device time the step's requests caused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]  # ships no type information

from infermeter.core.errors import ConfigError, EngineError
from infermeter.core.timing import StepTimer
from infermeter.core.types import Precision
from infermeter.runtime.engine import (
    EngineInfo,
    SeqInput,
    SequenceCaches,
    ShapeProfile,
    StepOutput,
    validate_step,
)

_KV_DTYPES: dict[str, type[np.floating[Any]]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}


@dataclass(slots=True)
class _Cache:
    """One sequence's KV cache, ``kv[layer, key|value, head, position, dim]``, grown by doubling."""

    kv: npt.NDArray[Any]
    length: int


class OrtEngine(SequenceCaches):
    """The Engine protocol over one ``onnxruntime.InferenceSession`` on the CPU."""

    def __init__(self, session: ort.InferenceSession, info: EngineInfo, timer: StepTimer) -> None:
        self.info = info
        self.timer = timer
        self._session: ort.InferenceSession | None = session
        self._input_names = {i.name for i in session.get_inputs()}
        self._kv_dtype = _kv_dtype(session)
        self._caches: dict[str, _Cache] = {}
        self._staging: dict[int, npt.NDArray[Any]] = {}

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        precision: Precision = Precision.FP32,
        timer: StepTimer,
        intra_op_threads: int | None = None,
        max_batch: int = 16,
        engine_id: str | None = None,
        model_name: str | None = None,
        model_file: str = "model.onnx",
    ) -> OrtEngine:
        """Open ``model_dir/model_file`` with sequential execution and full graph optimization."""
        model_dir = Path(model_dir)
        path = model_dir / model_file
        if not path.is_file():
            raise ConfigError(f"model directory {model_dir} has no {model_file}; build or export it first")
        config = _read_config(model_dir)
        options = ort.SessionOptions()
        # One step at a time, one operator at a time: the step's wall time is then its device time.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own untyped errors for broken files
            raise EngineError(f"onnxruntime cannot load {path}: {exc}; rebuild the engine") from exc
        n_layer = _int(config, "n_layer", "num_hidden_layers")
        n_head = _int(config, "n_head", "num_attention_heads")
        kv_heads = _int(config, "num_key_value_heads", default=n_head)
        head_dim = _int(config, "head_dim", default=_int(config, "n_embd", "hidden_size") // n_head)
        names = {i.name for i in session.get_inputs()}
        for i in range(n_layer):
            for part in ("key", "value"):
                if f"past_key_values.{i}.{part}" not in names:
                    raise EngineError(
                        f"{path} has no input past_key_values.{i}.{part}; export the model "
                        "with its KV cache (Optimum task text-generation-with-past)"
                    )
        max_seq_len = _int(config, "n_positions", "max_position_embeddings")
        eos = config.get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) and eos else eos
        model = model_name or str(config.get("name") or model_dir.name)
        info = EngineInfo(
            engine_id=engine_id or f"{model}-onnxruntime-{precision.value}-cpu",
            model=model,
            backend="onnxruntime",
            precision=precision,
            device="cpu",
            device_class="cpu",
            max_batch=max_batch,
            max_seq_len=max_seq_len,
            vocab_size=_int(config, "vocab_size"),
            eos_token_id=eos if isinstance(eos, int) else None,
            num_layers=n_layer,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            kv_bytes_per_element=np.dtype(_kv_dtype(session)).itemsize,
            profiles=(
                ShapeProfile(
                    "prefill",
                    1,
                    1,
                    max_batch,
                    1,
                    min(128, max_seq_len),
                    max_seq_len,
                    max_seq_len - 1,
                ),
                ShapeProfile("decode", 1, max_batch, max_batch, 1, 1, 1, max_seq_len - 1),
            ),
            extra={
                "model_dir": str(model_dir),
                "onnxruntime_version": ort.__version__,
                "intra_op_threads": intra_op_threads,
                "weights": config.get("weights"),
            },
        )
        return cls(session, info, timer)

    # -- the Engine protocol ---------------------------------------------------------------
    def step(self, inputs: Sequence[SeqInput]) -> StepOutput:
        """Run one batched step; a sequence new to the engine starts with an empty cache.

        Raises ContextTooLong (and runs nothing) when any sequence would exceed max_seq_len,
        InvalidRequest for a token id outside the vocabulary, ValueError for an empty input
        or a seq_id given twice.
        """
        session = self._require_open()
        if not inputs:
            return StepOutput({}, 0)
        self._validate(inputs)
        decode = [x for x in inputs if len(x.tokens) == 1]
        prefill = [x for x in inputs if len(x.tokens) > 1]
        groups = [g for g in (decode, prefill) if g]
        self.timer.begin()
        feeds = [self._assemble(g, slot) for slot, g in enumerate(groups)]
        results = [session.run(None, feed) for feed in feeds]
        logits: dict[str, npt.NDArray[np.float32]] = {}
        for group, result in zip(groups, results, strict=True):
            logits |= self._scatter(group, result)
        self.timer.end()
        return StepOutput(logits, self.timer.elapsed_us())

    def close(self) -> None:
        self._caches.clear()
        self._staging.clear()
        self._session = None

    # -- internals -------------------------------------------------------------------------
    def _require_open(self) -> ort.InferenceSession:
        if self._session is None:
            raise EngineError(f"engine {self.info.engine_id} is closed; load it again")
        return self._session

    def _validate(self, inputs: Sequence[SeqInput]) -> None:
        validate_step(inputs, self.info, self.past_length)

    def _assemble(self, group: Sequence[SeqInput], slot: int) -> dict[str, npt.NDArray[Any]]:
        """Left-padded feeds for one group: pads are masked out, positions are true positions.

        The padded past is written into staging buffer ``slot`` (one per group of a step).
        """
        pasts = [self.past_length(x.seq_id) for x in group]
        b, p_max, n_max = len(group), max(pasts), max(len(x.tokens) for x in group)
        info = self.info
        input_ids = np.zeros((b, n_max), np.int64)
        position_ids = np.zeros((b, n_max), np.int64)
        mask = np.zeros((b, p_max + n_max), np.int64)
        past = self._staging_view(slot, (info.num_layers, 2, b, info.num_kv_heads, p_max, info.head_dim))
        for row, (x, p) in enumerate(zip(group, pasts, strict=True)):
            n = len(x.tokens)
            input_ids[row, n_max - n :] = x.tokens
            position_ids[row, n_max - n :] = np.arange(p, p + n)
            mask[row, p_max - p : p_max] = 1
            mask[row, p_max + n_max - n :] = 1
            past[:, :, row, :, : p_max - p] = 0  # masked, but kept finite and free of stale data
            if p:
                past[:, :, row, :, p_max - p :] = self._caches[x.seq_id].kv[:, :, :, :p]
        feeds: dict[str, npt.NDArray[Any]] = {"input_ids": input_ids, "attention_mask": mask}
        if "position_ids" in self._input_names:
            feeds["position_ids"] = position_ids
        for layer in range(info.num_layers):
            feeds[f"past_key_values.{layer}.key"] = past[layer, 0]
            feeds[f"past_key_values.{layer}.value"] = past[layer, 1]
        return feeds

    def _staging_view(self, slot: int, shape: tuple[int, ...]) -> npt.NDArray[Any]:
        """A C-contiguous ``shape`` view of a reused buffer.

        Reuse spares a fresh multi-megabyte allocation (and its page faults) on every step,
        which otherwise costs more than the decode step itself.
        """
        size = int(np.prod(shape))
        buf = self._staging.get(slot)
        if buf is None or buf.size < size:
            buf = np.zeros(max(size, 2 * (0 if buf is None else buf.size)), self._kv_dtype)
            self._staging[slot] = buf
        return buf[:size].reshape(shape)

    def _scatter(self, group: Sequence[SeqInput], result: list[Any]) -> dict[str, npt.NDArray[np.float32]]:
        """Store each sequence's new K/V (pads cut away); return its last-position logits."""
        n_max = max(len(x.tokens) for x in group)
        logits, presents = result[0], result[1:]
        out: dict[str, npt.NDArray[np.float32]] = {}
        for row, x in enumerate(group):
            n = len(x.tokens)
            new = np.stack(
                [
                    np.stack([presents[2 * i][row, :, -n:], presents[2 * i + 1][row, :, -n:]])
                    for i in range(self.info.num_layers)
                ]
            )
            self._append(x.seq_id, new)
            out[x.seq_id] = np.asarray(logits[row, n_max - 1], dtype=np.float32).copy()
        return out

    def _append(self, seq_id: str, new: npt.NDArray[Any]) -> None:
        n = new.shape[3]
        cache = self._caches.get(seq_id)
        if cache is None:
            cache = _Cache(np.empty((*new.shape[:3], 0, new.shape[4]), self._kv_dtype), 0)
            self._caches[seq_id] = cache
        needed = cache.length + n
        if needed > cache.kv.shape[3]:
            capacity = min(max(needed, 2 * cache.kv.shape[3], 16), self.info.max_seq_len)
            grown = np.empty((*cache.kv.shape[:3], capacity, cache.kv.shape[4]), self._kv_dtype)
            grown[:, :, :, : cache.length] = cache.kv[:, :, :, : cache.length]
            cache.kv = grown
        cache.kv[:, :, :, cache.length : needed] = new
        cache.length = needed


def _kv_dtype(session: ort.InferenceSession) -> type[np.floating[Any]]:
    """The element type of the model's KV cache, from its first past input (float32 if unknown)."""
    for i in session.get_inputs():
        if i.name == "past_key_values.0.key":
            return _KV_DTYPES.get(i.type, np.float32)
    return np.float32


def _read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"model directory {model_dir} has no config.json; add the model's config") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; fix the file") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object; fix the file")
    return data


def _int(config: dict[str, Any], *keys: str, default: int | None = None) -> int:
    """The first of ``keys`` present in config as an int, else ``default``."""
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    if default is None:
        raise ConfigError(f"config.json lacks {' or '.join(keys)}; add it (an integer)")
    return default
