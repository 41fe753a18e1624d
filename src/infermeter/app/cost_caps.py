"""Budget reservations as hard caps: the per-token cost ceilings and each request's cap.

**The reservation bound.** For an engine, the pipeline keeps the largest attributed cost
per token seen in the engine's last ``WINDOW`` steps of each phase (µs of device time per
prefill token and per decode token: a participant's share of a step divided by its
tokens; a warm-up step counts its whole time over its tokens). A request's reservation is

    bound(n) = price(RU(prompt_tokens * prefill_ceiling, n * decode_ceiling))

with the same RU table and price plan that price its record. It holds
``bound(min(max_tokens, RESERVE_FIRST_TOKENS))`` at admission, and its minimum is
``bound(1)``: the prompt and one token. Holding the first tokens only, not ``max_tokens``,
lets concurrent requests share a small budget (a request that ends early never held what
it did not use); a request that needs more grows its cap as below. Before an engine has
run a step of a phase, the ceiling is ``DEFAULT_PREFILL_US`` / ``DEFAULT_DECODE_US`` per
token.

**The cap.** A tenant with a limit gets ``min(bound, what is left)`` reserved, admitted
only if that covers the minimum; the grant is the request's cap. The cap is charged each
step with the request's attributed share, exactly the µs its record is priced from, so
its running cost equals the price its record will carry (RU is linear; the price is
computed once from the cumulative µs). Before each step the worker asks whether the step
fits: cost so far plus the step's tokens at the ceilings must stay within the cap; if not,
the cap first tries to grow its reservation from the tenant's remaining budget (by four
times the shortfall or its own size, whichever is more), and only if that fails the
request stops (finish_reason ``length``, ``stopped_by: "budget"``).

**The guarantee.** A request only starts a step while its cost so far is within its cap,
so it ends at most one step's share above it; reservations never sum past the limit; so a
tenant's spent total never passes its budget by more than one step's share per request in
flight (none, when the ceilings held).
"""

from __future__ import annotations

import math
from collections import deque
from decimal import Decimal

from infermeter.billing.budgets import BudgetBook
from infermeter.billing.pricing import PricePlan
from infermeter.core.records import StepRecord, StepShares
from infermeter.core.types import ServiceTier
from infermeter.metering.ru import RuTable
from infermeter.runtime.engine import EngineInfo

WINDOW = 256  # steps per phase that the ceiling is the maximum over
DEFAULT_PREFILL_US = 1000.0  # per token, until the engine has run a prefill
DEFAULT_DECODE_US = 20000.0  # per token, until the engine has run a decode step
GROWTH = 4  # a cap that would stop asks for this many times its shortfall (or its size)
RESERVE_FIRST_TOKENS = 16  # decode tokens a capped request reserves up front (then it grows)


class _SlidingMax:
    """The maximum of the last ``size`` values, O(1) amortized per value."""

    __slots__ = ("_count", "_size", "_window")

    def __init__(self, size: int) -> None:
        self._size = size
        self._count = 0
        self._window: deque[tuple[int, float]] = deque()  # (index, value), values decreasing

    def add(self, value: float) -> None:
        window = self._window
        while window and window[-1][1] <= value:
            window.pop()
        window.append((self._count, value))
        self._count += 1
        if window[0][0] <= self._count - 1 - self._size:
            window.popleft()

    def get(self) -> float | None:
        return self._window[0][1] if self._window else None


class CostCeilings:
    """Per-token cost ceilings of one engine, from its measured steps (worker thread)."""

    def __init__(self, window: int = WINDOW) -> None:
        self._prefill = _SlidingMax(window)
        self._decode = _SlidingMax(window)

    def observe(self, step: StepRecord, shares: StepShares) -> None:
        """Fold in one step: the costliest token of each phase in it is one observation."""
        prefill = decode = 0.0
        if step.warmup or not shares.shares:  # a warm-up step: its whole time, token-proportional
            tokens = sum(p.new_tokens for p in step.participants)
            if not tokens:
                return
            per_token = step.device_us / tokens
            for p in step.participants:
                if p.prefill_tokens:
                    prefill = per_token
                else:
                    decode = per_token
        else:
            got = shares.shares
            for p in step.participants:
                if p.prefill_tokens:
                    prefill = max(prefill, got.get(p.request_id, 0) / p.prefill_tokens)
                elif p.decode_tokens:
                    decode = max(decode, got.get(p.request_id, 0) / p.decode_tokens)
        if prefill:
            self._prefill.add(prefill)
        if decode:
            self._decode.add(decode)

    def prefill_us(self, tokens: int) -> int:
        ceiling = self._prefill.get()
        return math.ceil((DEFAULT_PREFILL_US if ceiling is None else ceiling) * tokens)

    def decode_us(self, tokens: int) -> int:
        ceiling = self._decode.get()
        return math.ceil((DEFAULT_DECODE_US if ceiling is None else ceiling) * tokens)


class Pricer:
    """µs by phase → micro-RU → money, for one engine and tier: the record's own formula."""

    __slots__ = ("_class", "_precision", "_price", "plan", "ru_table", "tier")

    def __init__(self, ru_table: RuTable, plan: PricePlan, info: EngineInfo, tier: ServiceTier) -> None:
        self.ru_table, self.plan, self.tier = ru_table, plan, tier
        self._class, self._precision = info.device_class, info.precision
        self._price = plan.price(tier)

    def ru(self, prefill_us: int, decode_us: int) -> int:
        return self.ru_table.ru_micros(self._class, self._precision, prefill_us, decode_us)

    def cost(self, prefill_us: int, decode_us: int) -> Decimal:
        return self.plan.cost(self.ru(prefill_us, decode_us), self.tier)

    def ru_within(self, amount: Decimal) -> int | None:
        """The most micro-RU whose price is <= ``amount`` (exact); None for a free tier."""
        if self._price == 0:
            return None
        an, ad = amount.as_integer_ratio()
        pn, pd = self._price.as_integer_ratio()
        return (an * pd * 10**9) // (ad * pn)


class RequestCap:
    """One request's cost cap (the worker's ``CostCap``): charged per step, asked before each."""

    __slots__ = (
        "_budgets",
        "_ceilings",
        "_limit_ru",
        "_pricer",
        "amount",
        "decode_us",
        "prefill_us",
        "request_id",
    )

    def __init__(
        self, request_id: str, amount: Decimal, pricer: Pricer, ceilings: CostCeilings, budgets: BudgetBook
    ) -> None:
        self.request_id = request_id
        self.amount = amount  # the reservation this request holds
        self._pricer, self._ceilings, self._budgets = pricer, ceilings, budgets
        self._limit_ru = pricer.ru_within(amount)
        self.prefill_us = 0
        self.decode_us = 0

    def charge(self, prefill_us: int, decode_us: int) -> None:
        self.prefill_us += prefill_us
        self.decode_us += decode_us

    def cost(self) -> Decimal:
        """What the request has cost so far: the price its record would carry now."""
        return self._pricer.cost(self.prefill_us, self.decode_us)

    def allows(self, prefill_tokens: int, decode_tokens: int) -> bool:
        if self._limit_ru is None:
            return True
        pre = self.prefill_us + self._ceilings.prefill_us(prefill_tokens)
        dec = self.decode_us + self._ceilings.decode_us(decode_tokens)
        need = self._pricer.ru(pre, dec)
        if need <= self._limit_ru:
            return True
        shortfall = self._pricer.plan.cost(need, self._pricer.tier) - self.amount
        # grow geometrically (at least double), so a long request asks O(log n) times, not
        # every few steps: each ask is a lock (or, on PostgreSQL, a round trip) on this thread
        want = max(shortfall * GROWTH, self.amount)
        grown = self._budgets.extend(self.request_id, want, shortfall)
        if grown < shortfall:
            return False
        self.amount += grown
        self._limit_ru = self._pricer.ru_within(self.amount)
        return True


__all__ = [
    "DEFAULT_DECODE_US",
    "DEFAULT_PREFILL_US",
    "RESERVE_FIRST_TOKENS",
    "WINDOW",
    "CostCeilings",
    "Pricer",
    "RequestCap",
]
