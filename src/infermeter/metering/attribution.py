# ruff: noqa: RUF002  (Greek letters are the cost model's published coefficient names)
"""Split one step's measured device time over the requests that took part in it, exactly.

The cost model gives each participant a modeled marginal cost

    ĉᵢ = α·pᵢ + β·pᵢ·cᵢ + γ·dᵢ + δ·dᵢ·cᵢ

(p new prefill tokens, c context tokens before them, d decode tokens) plus a fixed per-step
term φ (weight streaming, launch floor) that is split equally: the symmetric Shapley share of
a shared fixed cost. The step's measured time T is split in proportion:

    shareᵢ = T·(ĉᵢ + φ/n) / (Σĉ + φ)

computed in integers (multiply through by n) so that Σ shares + unattributed == T exactly.
Coefficients are integers in arbitrary cost units (say nanoseconds per token): only their
ratios matter, and integer arithmetic keeps the split exact and fast on the serving path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from infermeter.core.records import Participant, StepRecord, StepShares

_COEFFICIENTS = ("alpha", "beta", "gamma", "delta", "phi")


@dataclass(frozen=True, slots=True)
class CostModel:
    """Integer coefficients of the per-participant cost model; ``version`` goes on every record."""

    version: str
    alpha: int  # per new prefill token
    beta: int  # per prefill token per context token (attention over what came before)
    gamma: int  # per decode token
    delta: int  # per decode token per context token (reading the KV cache)
    phi: int  # fixed per step, split equally over participants

    def __post_init__(self) -> None:
        if not self.version:
            raise ValueError("cost model version must be a non-empty string, e.g. 'fit-2026-11-01'")
        for name in _COEFFICIENTS:
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(
                    f"cost model {self.version!r}: {name}={value!r} must be a non-negative int "
                    "(scale fitted coefficients to integer units, e.g. nanoseconds per token)"
                )

    def cost(self, p: Participant) -> int:
        """The modeled marginal cost ĉ of one participant (without its share of φ)."""
        c = p.context_tokens
        return (
            self.alpha * p.prefill_tokens
            + self.beta * p.prefill_tokens * c
            + self.gamma * p.decode_tokens
            + self.delta * p.decode_tokens * c
        )

    def predict(self, participants: tuple[Participant, ...] | list[Participant]) -> int:
        """Modeled step cost Σĉ + φ (in the model's units) for a batch; 0 for an empty batch."""
        if not participants:
            return 0
        return sum(self.cost(p) for p in participants) + self.phi

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> CostModel:
        """Inverse of ``to_json``; accepts the dict or its JSON text."""
        obj = json.loads(data) if isinstance(data, str) else data
        missing = [k for k in ("version", *_COEFFICIENTS) if k not in obj]
        if missing:
            raise ValueError(f"cost model JSON lacks {', '.join(missing)}; got keys {sorted(obj)}")
        return cls(str(obj["version"]), *(obj[k] for k in _COEFFICIENTS))


TOKEN_PROPORTIONAL = CostModel("token-proportional-v1", 1, 0, 1, 0, 0)
"""The default until a model is calibrated: every new token (prefill or decode) costs the same."""


def remainder_threshold(rems: Iterable[int], leftover: int) -> int | None:
    """Largest-remainder apportionment that treats equal remainders as one block.

    Parts whose remainder is >= the returned threshold get one more unit. Blocks of equal
    remainder are served largest first, each only if ``leftover`` covers the whole block, so
    identical parts always get identical amounts and a smaller exact share never ends up
    above a larger one; what cannot be given stays with the caller's pool. None: give none.
    """
    if leftover <= 0:
        return None
    counts: dict[int, int] = {}
    for r in rems:
        counts[r] = counts.get(r, 0) + 1
    threshold = None
    for r in sorted(counts, reverse=True):
        if r == 0 or counts[r] > leftover:
            break
        leftover -= counts[r]
        threshold = r
    return threshold


def attribute(step: StepRecord, model: CostModel) -> StepShares:
    """Split ``step.device_us`` over its participants by ``model``; exact and order-independent.

    Contract:
    - Σ shares + unattributed_us == step.device_us, every share >= 0 (integers, µs).
    - Warmup steps, steps without participants and steps whose modeled cost is zero give
      everything to ``unattributed_us`` (participants of a non-warmup step still appear with 0).
    - Floors plus largest remainder: participants with equal remainders form a block that gets
      +1 µs each only if the leftover covers the whole block, so identical participants get
      identical shares and the result does not depend on participant order. Leftover that no
      block can take (always < n µs) stays unattributed (rounding).
    - A request id that appears more than once in the step gets the sum of its parts.
    """
    total_us = step.device_us
    if type(total_us) is not int or total_us < 0:
        raise ValueError(f"step {step.step_id}: device_us={total_us!r} must be a non-negative int (µs)")
    parts = step.participants
    if step.warmup or not parts:
        return StepShares(step.step_id, total_us, {}, total_us)

    alpha, beta, gamma, delta, phi = model.alpha, model.beta, model.gamma, model.delta, model.phi
    n = len(parts)
    costs: list[int] = []
    for p in parts:
        pre, ctx, dec = p.prefill_tokens, p.context_tokens, p.decode_tokens
        if pre < 0 or ctx < 0 or dec < 0:
            raise ValueError(
                f"step {step.step_id}: participant {p.request_id!r} has negative token counts "
                f"(prefill={pre}, context={ctx}, decode={dec}); counts must be >= 0"
            )
        costs.append(alpha * pre + beta * pre * ctx + gamma * dec + delta * dec * ctx)

    den = n * (sum(costs) + phi)
    if den == 0:
        return StepShares(step.step_id, total_us, {p.request_id: 0 for p in parts}, total_us)

    floors: list[int] = []
    rems: list[int] = []
    for cost in costs:
        q, r = divmod(total_us * (n * cost + phi), den)
        floors.append(q)
        rems.append(r)
    leftover = total_us - sum(floors)  # == Σ rems / den, so 0 <= leftover < n

    threshold = remainder_threshold(rems, leftover)
    if threshold is not None:
        for i, r in enumerate(rems):
            if r >= threshold:
                floors[i] += 1
                leftover -= 1  # what is not given stays unattributed (rounding)

    shares: dict[str, int] = {}
    for p, share in zip(parts, floors, strict=True):
        rid = p.request_id
        shares[rid] = shares.get(rid, 0) + share
    return StepShares(step.step_id, total_us, shares, leftover)


__all__ = ["TOKEN_PROPORTIONAL", "CostModel", "attribute"]
