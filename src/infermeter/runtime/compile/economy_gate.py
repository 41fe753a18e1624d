"""The economy-engine gate: an engine cheaper than FP32 must be measurably right and faster.

Every economy (INT8) build is measured against its FP32 sibling before it may serve:

- drift, on the fixed prompt set of ``drift.DRIFT_PROMPTS``: FP32 decodes ``new_tokens``
  greedy tokens per prompt; both engines then score the same sequence teacher-forced, and
  every position that predicts a generated token is compared — greedy (argmax) agreement
  and the largest |Δlogit| over the vocabulary;
- speed: the median device time of a batch-1 decode step of each engine over the same
  prompts, from the engine's own step timer (the time metering bills). The two engines'
  steps alternate, so load from other processes falls on both alike.

The build passes when agreement ≥ ``MIN_AGREEMENT``, max |Δlogit| ≤ ``MAX_LOGIT_DIFF`` and its
per-token device time is below the FP32 sibling's. A build that fails is indexed with its
figures but kept out of serving unless it was built with ``--force``; ``engines show``
prints the figures either way.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from infermeter.runtime.compile.drift import DRIFT_PROMPTS
from infermeter.runtime.compile.metadata import DriftReport
from infermeter.runtime.engine import Engine, SeqInput, Tokenizer

MIN_AGREEMENT = 0.90  # greedy tokens agreeing with FP32, teacher-forced
MAX_LOGIT_DIFF = 4.0  # largest |logit - logit_fp32| anywhere on the prompt set
# Scorer: the logits of every position of ``ids`` (shape [len(ids), vocab]) in one forward.
Scorer = Callable[[Sequence[int]], npt.NDArray[np.float32]]


@dataclass(frozen=True, slots=True)
class GateReport:
    """The figures a gate decision rests on, and the decision."""

    token_agreement: float
    max_logit_diff: float
    prompts: int
    positions: int
    ms_per_token: float  # median batch-1 decode step, device time
    fp32_ms_per_token: float
    min_agreement: float
    max_allowed_logit_diff: float
    passed: bool
    reasons: tuple[str, ...]  # why it failed; empty when it passed
    forced: bool = False

    @property
    def serves(self) -> bool:
        return self.passed or self.forced

    @property
    def drift(self) -> DriftReport:
        return DriftReport(self.max_logit_diff, self.token_agreement, self.prompts, self.positions)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        data["speedup"] = round(self.fp32_ms_per_token / self.ms_per_token, 3) if self.ms_per_token else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GateReport:
        fields = {k: v for k, v in data.items() if k != "speedup"}
        fields["reasons"] = tuple(fields.get("reasons") or ())
        return cls(**fields)


def decide(
    agreement: float,
    max_diff: float,
    ms: float,
    fp32_ms: float,
    *,
    prompts: int,
    positions: int,
    forced: bool = False,
) -> GateReport:
    """The gate's verdict on measured figures (thresholds of this module)."""
    reasons = []
    if agreement < MIN_AGREEMENT:
        reasons.append(f"greedy agreement {agreement:.1%} is below {MIN_AGREEMENT:.0%}")
    if max_diff > MAX_LOGIT_DIFF:
        reasons.append(f"max |Δlogit| {max_diff:.2f} exceeds {MAX_LOGIT_DIFF:g}")
    if not ms < fp32_ms:
        reasons.append(f"{ms:.2f} ms/token is not below FP32's {fp32_ms:.2f} ms/token")
    return GateReport(
        round(agreement, 6), round(max_diff, 6), prompts, positions, round(ms, 3), round(fp32_ms, 3),
        MIN_AGREEMENT, MAX_LOGIT_DIFF, not reasons, tuple(reasons), forced,
    )  # fmt: skip


def greedy(engine: Engine, ids: Sequence[int], new_tokens: int, seq_id: str = "gate") -> list[int]:
    """``new_tokens`` greedy tokens of ``engine`` after ``ids`` (its cache released after)."""
    out, tokens = engine.step([SeqInput(seq_id, list(ids))]), []
    try:
        for n in range(new_tokens):
            tokens.append(int(np.argmax(out.logits[seq_id])))
            if n + 1 < new_tokens:
                out = engine.step([SeqInput(seq_id, tokens[-1:])])
    finally:
        engine.release(seq_id)
    return tokens


def measure_drift(
    fp32_engine: Engine,
    fp32: Scorer,
    candidate: Scorer,
    tokenizer: Tokenizer,
    *,
    prompts: Sequence[str] = DRIFT_PROMPTS,
    new_tokens: int = 16,
) -> tuple[float, float, int]:
    """(greedy agreement, max |Δlogit|, positions compared), as the module docstring says."""
    max_diff, agree, positions = 0.0, 0, 0
    vocab_size = fp32_engine.info.vocab_size
    for prompt in prompts:
        ids = [t for t in tokenizer.encode(prompt) if 0 <= t < vocab_size]
        if not ids:
            continue
        start = len(ids) - 1
        ids += greedy(fp32_engine, ids, new_tokens)
        a, b = fp32(ids[:-1])[start:], candidate(ids[:-1])[start:]
        max_diff = max(max_diff, float(np.max(np.abs(a - b))))
        agree += int(np.sum(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))
        positions += a.shape[0]
    if positions == 0:
        raise ValueError("no drift prompt survived tokenization; give prompts the tokenizer encodes")
    return agree / positions, max_diff, positions


def decode_ms_per_token(
    engines: Sequence[Engine],
    tokenizer: Tokenizer,
    *,
    prompts: Sequence[str] = DRIFT_PROMPTS,
    steps: int = 12,
) -> list[float]:
    """Median device time (ms) of a batch-1 decode step of each engine, steps alternating."""
    times: list[list[float]] = [[] for _ in engines]
    for i, prompt in enumerate(prompts):
        seq = f"gate-{i}"
        tokens = []
        for engine in engines:
            out = engine.step([SeqInput(seq, tokenizer.encode(prompt) or [0])])
            tokens.append(int(np.argmax(out.logits[seq])))
        for _ in range(steps):
            for k, engine in enumerate(engines):
                out = engine.step([SeqInput(seq, [tokens[k]])])
                times[k].append(out.device_us / 1000.0)
                tokens[k] = int(np.argmax(out.logits[seq]))
        for engine in engines:
            engine.release(seq)
    return [statistics.median(t) for t in times]


__all__ = [
    "MAX_LOGIT_DIFF",
    "MIN_AGREEMENT",
    "GateReport",
    "Scorer",
    "decide",
    "decode_ms_per_token",
    "greedy",
    "measure_drift",
]
