"""INT8 drift: how far the quantized graph strays from FP32 on a fixed prompt set.

For each prompt the FP32 graph decodes ``new_tokens`` greedy tokens. Both graphs are then
run over the same sequence (prompt + FP32's tokens, teacher-forced), and every position
that predicts a generated token is compared:

- ``max_logit_diff``: the largest |INT8 logit - FP32 logit| over those positions and the
  whole vocabulary;
- ``token_agreement``: the fraction of those positions where both graphs' greedy (argmax)
  token is the same.

Teacher forcing keeps one early disagreement from making every later position disagree,
so agreement measures the quantization error per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from infermeter.runtime.compile import decoder_io
from infermeter.runtime.compile.metadata import DriftReport
from infermeter.runtime.engine import EngineInfo, Tokenizer

DRIFT_PROMPTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Return the number of items in a container.",
    "User: What does a hash function do?\nAssistant:",
    "def add(a, b):\n    return a + b\n",
    "Every request is billed by the device time it used.",
)


def measure_drift(
    fp32_graph: Path,
    int8_graph: Path,
    info: EngineInfo,
    tokenizer: Tokenizer,
    *,
    prompts: Sequence[str] = DRIFT_PROMPTS,
    new_tokens: int = 16,
) -> DriftReport:
    """Compare ``int8_graph`` with ``fp32_graph`` as this module's docstring says."""
    fp32 = decoder_io.open_session(fp32_graph)
    int8 = decoder_io.open_session(int8_graph)
    max_diff, agree, positions = 0.0, 0, 0
    for prompt in prompts:
        ids = [t for t in tokenizer.encode(prompt) if 0 <= t < info.vocab_size]
        ids = ids[: max(1, info.max_seq_len - new_tokens)]
        if not ids:
            continue
        start = len(ids) - 1
        logits, past = decoder_io.run(fp32, info, ids)
        for n in range(new_tokens):
            ids.append(int(np.argmax(logits[-1])))
            if n + 1 < new_tokens:
                logits, past = decoder_io.run(fp32, info, ids[-1:], past)
        a, _ = decoder_io.run(fp32, info, ids[:-1])
        b, _ = decoder_io.run(int8, info, ids[:-1])
        a, b = a[start:], b[start:]
        max_diff = max(max_diff, float(np.max(np.abs(a - b))))
        agree += int(np.sum(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))
        positions += a.shape[0]
    if positions == 0:
        raise ValueError("no drift prompt survived tokenization; give prompts the tokenizer encodes")
    return DriftReport(round(max_diff, 6), round(agree / positions, 6), len(prompts), positions)


__all__ = ["DRIFT_PROMPTS", "measure_drift"]
