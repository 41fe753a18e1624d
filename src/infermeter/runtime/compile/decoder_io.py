"""Raw ONNX Runtime runs of a decoder graph, for calibration and drift (not for serving).

Serving goes through ``OrtEngine``, which batches, pads and keeps caches. Building needs
less: one sequence at a time, with an empty past or with the past a previous run produced,
and the logits at every position. ``EngineInfo`` (from ``OrtEngine.load``) supplies the
layer, head and vocabulary sizes, so config.json is read in one place only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]  # ships no type information

from infermeter.core.timing import NullTimer
from infermeter.runtime.engine import EngineInfo
from infermeter.runtime.ort_backend import OrtEngine

Feeds = dict[str, npt.NDArray[Any]]


def model_info(model_dir: Path, model_file: str = "model.onnx") -> EngineInfo:
    """The decoder's dimensions as ``OrtEngine`` reads them (validates the graph's inputs)."""
    engine = OrtEngine.load(model_dir, timer=NullTimer(), model_file=model_file, intra_op_threads=1)
    try:
        return engine.info
    finally:
        engine.close()


def open_session(path: Path) -> ort.InferenceSession:
    """A quiet CPU session over one graph file."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(
    session: ort.InferenceSession,
    info: EngineInfo,
    ids: Sequence[int],
    past: Sequence[npt.NDArray[Any]] | None = None,
) -> Feeds:
    """Feeds for one sequence: ``ids`` after ``past`` (per layer key, value; empty if None)."""
    inputs = {i.name: i for i in session.get_inputs()}
    n = len(ids)
    p = 0 if past is None else int(past[0].shape[2])
    out: Feeds = {
        "input_ids": np.asarray([ids], np.int64),
        "attention_mask": np.ones((1, p + n), np.int64),
    }
    if "position_ids" in inputs:
        out["position_ids"] = np.arange(p, p + n, dtype=np.int64)[None, :]
    for layer in range(info.num_layers):
        for part, name in enumerate(("key", "value")):
            key = f"past_key_values.{layer}.{name}"
            dtype = np.float16 if inputs[key].type == "tensor(float16)" else np.float32
            if past is None:
                out[key] = np.zeros((1, info.num_kv_heads, 0, info.head_dim), dtype)
            else:
                out[key] = past[2 * layer + part].astype(dtype, copy=False)
    return out


def run(
    session: ort.InferenceSession,
    info: EngineInfo,
    ids: Sequence[int],
    past: Sequence[npt.NDArray[Any]] | None = None,
) -> tuple[npt.NDArray[np.float32], list[npt.NDArray[Any]]]:
    """Logits at every new position ``[n, vocab]`` (float32) and the presents, in order."""
    result = session.run(None, feeds(session, info, ids, past))
    return np.asarray(result[0][0], np.float32), list(result[1:])


__all__ = ["Feeds", "feeds", "model_info", "open_session", "run"]
