"""Fair share within a tier: virtual token counters (VTC) charged with *measured* cost.

One counter per tenant per tier, in attributed device-µs divided by the tenant's weight, kept
as an integer in units of 1/``SCALE`` µs (floored; soft state, not billing).
The worker owns the counters and keeps them up to date; the pure
scheduler only reads their values (``Scheduler.schedule(counters=...)``):

- **Lift.** When a tenant's queue in a tier goes from empty to non-empty, its counter is
  raised to the smallest counter of the tenants still backlogged there:
  ``c_u <- max(c_u, min{c_v : v backlogged})``. An idle tenant banks no credit.
- **Charge.** After every step, each participant's tenant is charged its request's attributed
  share of that step: ``c_u += share_us / w_u`` (the same shares that price the request).
- **Admit.** Waiting requests of a tier join the batch always from the tenant with the smallest
  counter (ties: the oldest request), which is charged an estimate at once (prompt + max_tokens
  times the measured µs per token, over its weight) so the next pick within the step sees it;
  within a tenant, oldest first. One tenant alone is therefore served exactly FIFO.

Bound (what the tests check): while two tenants are both backlogged in a tier, their
weighted service ``S_u / w_u`` differs by at most ``2 * U``, where ``U`` is the largest
measured cost of one request divided by its weight: the counter of the one behind is
always chosen next, and a request it did not see charged yet (at most one per tenant in
the batch) adds at most ``U`` on each side.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fractions import Fraction

SCALE = 1_000_000  # counter units per µs


def scaled(device_us: int, weight: Fraction) -> int:
    """``device_us / weight`` in counter units (integers only: fast, floored)."""
    return device_us * SCALE * weight.denominator // weight.numerator


class VirtualCounters:
    """Per-tenant virtual counters of one tier (mutable; one thread owns it)."""

    def __init__(self) -> None:
        self._c: dict[str, int] = {}

    def lift(self, tenant: str, backlogged: Iterable[str]) -> None:
        """``tenant`` just became backlogged; ``backlogged`` are the others waiting or running."""
        others = [self._c.get(v, 0) for v in backlogged if v != tenant]
        floor = min(others) if others else 0
        self._c[tenant] = max(self._c.get(tenant, 0), floor)

    def charge(self, tenant: str, device_us: int, weight: Fraction = Fraction(1)) -> None:
        """Add ``device_us`` of measured, attributed time at ``weight`` (> 0)."""
        if weight <= 0:
            raise ValueError(f"a tenant's weight must be > 0, got {weight}")
        self._c[tenant] = self._c.get(tenant, 0) + scaled(device_us, weight)

    def values(self) -> Mapping[str, int]:
        return dict(self._c)


__all__ = ["SCALE", "VirtualCounters", "scaled"]
