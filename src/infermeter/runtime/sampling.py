"""Token sampling: logit bias, presence/frequency penalties, greedy, temperature, top-p.

The order is OpenAI's: ``logit_bias`` is added to the logits, then the penalties
``logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty`` over the
tokens this request has generated so far, then temperature (0 is greedy) and nucleus
sampling. The API validates every parameter's range; what reaches here is in range, and a
failure here (say, non-finite logits from a broken engine) is the one request's problem:
the worker fails that request only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SEED_SPACE = 2**64
"""numpy seeds are non-negative; an OpenAI seed is any int64, mapped by ``seed mod 2**64``."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """temperature 0 means greedy; top_p in (0, 1]; seed makes sampling reproducible.

    ``logit_bias`` holds ``(token id, bias)`` pairs; penalties are OpenAI's, in [-2, 2].
    """

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def penalized(self) -> bool:
        """True when sampling needs the counts of the tokens generated so far."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def generator(seed: int | None) -> np.random.Generator:
    """The request's random generator: any integer seed (negative included) is accepted.

    ``seed mod 2**64`` is deterministic and one-to-one on the int64 range, so two requests
    with the same seed draw the same tokens and two different int64 seeds never collide.
    """
    return np.random.default_rng(None if seed is None else seed % SEED_SPACE)


def _adjusted(
    logits: npt.NDArray[np.float32], params: SamplingParams, counts: Mapping[int, int] | None
) -> npt.NDArray[np.float64]:
    out = logits.astype(np.float64)  # a copy: the engine's array is never changed
    vocab = len(out)
    for token, bias in params.logit_bias:
        if not 0 <= token < vocab:
            raise ValueError(f"logit_bias token id {token} is outside the vocabulary 0..{vocab - 1}")
        out[token] += bias
    if counts and params.penalized:
        ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        seen = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        keep = (ids >= 0) & (ids < vocab)  # e.g. an eos id past the logits never counts
        out[ids[keep]] -= seen[keep] * params.frequency_penalty + params.presence_penalty
    return out


def sample(
    logits: npt.NDArray[np.float32],
    params: SamplingParams,
    rng: np.random.Generator,
    counts: Mapping[int, int] | None = None,
) -> int:
    """Pick the next token id from one position's logits.

    ``counts``: how often each token id occurs in this request's output so far (only read
    when a penalty is set). Raises ValueError for logits that give no valid distribution.
    """
    x: npt.NDArray[np.floating] = logits
    if params.logit_bias or (counts and params.penalized):
        x = _adjusted(logits, params, counts)
    if params.temperature <= 0.0:
        return int(np.argmax(x))
    # subtract the max before dividing: a tiny temperature then gives 0 and -inf, never inf - inf
    with np.errstate(over="ignore", under="ignore"):  # -inf and 0 are the right answers there
        scaled = (x.astype(np.float64) - float(np.max(x))) / params.temperature
        probs = np.exp(scaled)
    total = probs.sum()
    if not np.isfinite(total) or total <= 0.0:
        raise ValueError("the logits give no valid distribution (non-finite values); cannot sample")
    probs /= total
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        keep = min(int(np.searchsorted(cumulative, params.top_p, side="left")) + 1, len(order))
        kept = order[:keep]
        mass = probs[kept] / probs[kept].sum()
        return int(kept[rng.choice(len(kept), p=mass)])
    return int(rng.choice(len(probs), p=probs))
