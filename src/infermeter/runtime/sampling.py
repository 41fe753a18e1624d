"""Token sampling: greedy, temperature and nucleus (top-p)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """temperature 0 means greedy; top_p in (0, 1]; seed makes sampling reproducible."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


def sample(logits: npt.NDArray[np.float32], params: SamplingParams, rng: np.random.Generator) -> int:
    """Pick the next token id from one position's logits."""
    if params.temperature <= 0.0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    scaled -= scaled.max()
    probs = np.exp(scaled)
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        keep = int(np.searchsorted(cumulative, params.top_p, side="left")) + 1
        kept = order[:keep]
        mass = probs[kept] / probs[kept].sum()
        return int(kept[rng.choice(len(kept), p=mass)])
    return int(rng.choice(len(probs), p=probs))
