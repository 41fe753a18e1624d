"""Reserved capacity: a tenant's monthly commitment of RU at a reserved price. Pure.

A commitment promises ``ru_per_month`` RU of ``default``-tier work each calendar month (UTC)
at ``per_1000_ru`` (the reserved price), from ``start_at`` to ``end_at`` (open when None).
Commitments are only ever added (an append-only table); a commitment ends at its ``end_at``.

For one invoice period (a month, ``[P0, P1)``), in commitment order (``start_at``, then
creation):

    active_s  = seconds of [start_at, end_at) ∩ [P0, P1)
    Q_eff     = floor_µRU( ru_per_month * active_s / (P1 - P0) seconds )   # prorated by seconds
    U         = the RU of the period's default-tier records admitted while it is active
                (start_at <= started_at < end_at), not yet covered by an earlier commitment
    covered   = min(Q_eff, U), taken from those records oldest first (order-independent:
                records are sorted by admission time and record id)
    unused    = Q_eff - covered
    credit    = Σ over the records it covers: record cost * RU taken / record RU
                (each share exact, or 18 places if endless)

Invoice lines (each rounded once, half-up, like every line):

- ``commitment_used``: ``covered`` RU at the reserved price;
- ``commitment_unused``: ``unused`` RU at the reserved price (billed, never refunded);
- ``commitment_coverage``: ``-credit``, the on-demand value of the covered RU taken off the
  usage lines, which stay at on-demand prices.

So the tenant pays ``Q_eff`` at the reserved price plus its default usage beyond ``Q_eff`` at
the on-demand price. Everything comes from the records and the stored commitments, so the
invoice can be rebuilt from the ledger alone.

A tenant with a commitment active now schedules with weight ``RESERVED_WEIGHT`` (others 1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, Inexact, localcontext
from typing import Any

from infermeter.billing.plans import parse_time
from infermeter.billing.pricing import EXACT
from infermeter.core.errors import InvalidRequest
from infermeter.core.records import UsageRecord, iso
from infermeter.core.types import ServiceTier

COMMITTED_TIER = ServiceTier.DEFAULT
RESERVED_WEIGHT = Decimal(2)
CREDIT_PLACES = 18  # a coverage credit that does not terminate is kept to 18 places
_MICRO = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class Commitment:
    """``tenant_id`` commits to ``ru_per_month`` RU a month at ``per_1000_ru``."""

    tenant_id: str
    ru_per_month: Decimal
    per_1000_ru: Decimal
    start_at: datetime
    end_at: datetime | None
    created_at: datetime

    def __post_init__(self) -> None:
        for name, value in (("ru_per_month", self.ru_per_month), ("per_1000_ru", self.per_1000_ru)):
            if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
                raise InvalidRequest(
                    f"{name}={value!r} must be a positive decimal string, e.g. "
                    + ('"1000000"' if name == "ru_per_month" else '"0.0015"'),
                    param=name,
                )
        if self.ru_per_month != self.ru_per_month.quantize(_MICRO):
            raise InvalidRequest(
                f"ru_per_month={self.ru_per_month} has more than 6 decimals; RU are counted in micro-RU",
                param="ru_per_month",
            )
        if self.end_at is not None and self.end_at <= self.start_at:
            raise InvalidRequest(
                f"end_at={iso(self.end_at)} is not after start_at={iso(self.start_at)}; "
                "a commitment ends after it starts",
                param="end_at",
            )

    def active_at(self, at: datetime) -> bool:
        return self.start_at <= at and (self.end_at is None or at < self.end_at)

    def effective_ru(self, period_start: datetime, period_end: datetime) -> Decimal:
        """``Q_eff``: the RU this commitment holds in the period, prorated by seconds, floored."""
        lo = max(self.start_at, period_start)
        hi = period_end if self.end_at is None else min(self.end_at, period_end)
        if hi <= lo:
            return Decimal(0)
        active = int((hi - lo).total_seconds())
        whole = int((period_end - period_start).total_seconds())
        micros = int(self.ru_per_month.scaleb(6))  # an integer: at most 6 decimals
        return Decimal(micros * active // whole).scaleb(-6)  # floor, in integers: exact

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "commitment",
            "tenant_id": self.tenant_id,
            "ru_per_month": str(self.ru_per_month),
            "per_1000_ru": str(self.per_1000_ru),
            "tier": COMMITTED_TIER.value,
            "start_at": iso(self.start_at),
            "end_at": None if self.end_at is None else iso(self.end_at),
            "created_at": iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class CommitmentUse:
    """One commitment's result for one period."""

    commitment: Commitment
    effective_ru: Decimal
    covered_ru: Decimal
    unused_ru: Decimal
    used_amount: Decimal  # covered * reserved price, exact
    unused_amount: Decimal  # unused * reserved price, exact
    coverage_credit: Decimal  # on-demand value of covered RU (positive), exact

    def to_json(self) -> dict[str, Any]:
        return {
            **self.commitment.to_json(),
            "effective_ru": str(self.effective_ru),
            "covered_ru": str(self.covered_ru),
            "unused_ru": str(self.unused_ru),
        }


def _share(amount: Decimal, part: Decimal, whole: Decimal) -> Decimal:
    """``amount * part / whole``: exact when it terminates, else to CREDIT_PLACES (half-even)."""
    product = EXACT.multiply(amount, part)
    with localcontext() as ctx:
        ctx.prec, ctx.traps[Inexact] = 80, False
        ctx.clear_flags()
        q = product / whole
        if ctx.flags[Inexact]:
            return q.quantize(Decimal(1).scaleb(-CREDIT_PLACES), rounding=ROUND_HALF_EVEN)
    return q


def _at_reserved(ru: Decimal, per_1000_ru: Decimal) -> Decimal:
    return EXACT.multiply(ru, per_1000_ru).scaleb(-3, EXACT)


def apply_commitments(
    commitments: Iterable[Commitment],
    usage: Iterable[UsageRecord],
    period_start: datetime,
    period_end: datetime,
) -> list[CommitmentUse]:
    """Each commitment's coverage of ``usage`` (the tenant's period records, already filtered).

    A commitment covers only default-tier records admitted while it is active
    (``start_at <= started_at < end_at``), oldest first; the records' order in ``usage`` does
    not matter (they are sorted by admission time and record id).
    """
    eligible = sorted(
        (
            r
            for r in usage
            if r.kind == "usage" and not r.warmup and ServiceTier(r.service_tier) == COMMITTED_TIER
        ),
        key=lambda r: (r.started_at, r.record_id),
    )
    left = {r.record_id: Decimal(r.ru_micros).scaleb(-6) for r in eligible}
    out: list[CommitmentUse] = []
    for c in sorted(commitments, key=lambda c: (c.start_at, c.created_at)):
        q = c.effective_ru(period_start, period_end)
        if q == 0:
            continue
        covered = credit = Decimal(0)
        for r in eligible:
            if covered >= q:
                break
            take = min(q - covered, left[r.record_id])
            if take <= 0 or not c.active_at(r.started_at):
                continue
            left[r.record_id] -= take
            covered += take
            credit = EXACT.add(credit, _share(r.cost, take, Decimal(r.ru_micros).scaleb(-6)))
        out.append(
            CommitmentUse(
                c,
                q,
                covered,
                q - covered,
                _at_reserved(covered, c.per_1000_ru),
                _at_reserved(q - covered, c.per_1000_ru),
                credit,
            )
        )
    return out


def scheduling_weight(commitments: Iterable[Commitment], tenant_id: str, at: datetime) -> Decimal:
    """``RESERVED_WEIGHT`` while the tenant holds an active commitment, else 1."""
    held = any(c.tenant_id == tenant_id and c.active_at(at) for c in commitments)
    return RESERVED_WEIGHT if held else Decimal(1)


def _decimal(name: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidRequest(f'{name}={value!r}; give a decimal string such as "1000000"', param=name)
    try:
        return Decimal(value)
    except ArithmeticError:
        raise InvalidRequest(f"{name}={value!r} is not a decimal number", param=name) from None


def new_commitment(
    tenant_id: str,
    ru_per_month: object,
    per_1000_ru: object,
    start_at: str | None,
    end_at: str | None,
    now: datetime,
) -> Commitment:
    """A commitment from request or CLI text; it starts at or after ``now`` (never retroactive)."""
    from infermeter.billing.plans import check_future

    start = now if start_at is None else parse_time(start_at, "start_at")
    check_future(start, now, "start_at")
    end = None if end_at is None else parse_time(end_at, "end_at")
    return Commitment(
        tenant_id,
        _decimal("ru_per_month", ru_per_month),
        _decimal("per_1000_ru", per_1000_ru),
        start,
        end,
        now,
    )


COMMITMENT_COLUMNS = "tenant_id, ru_per_month, per_1000_ru, start_at, end_at, created_at"


def commitment_row(c: Commitment) -> tuple[str, str, str, str, str | None, str]:
    end = None if c.end_at is None else iso(c.end_at)
    return (c.tenant_id, str(c.ru_per_month), str(c.per_1000_ru), iso(c.start_at), end, iso(c.created_at))


def commitment_from_row(row: tuple[Any, ...]) -> Commitment:
    tenant, ru, price, start, end, created = row
    return Commitment(
        tenant,
        Decimal(ru),
        Decimal(price),
        parse_time(start),
        None if end is None else parse_time(end),
        parse_time(created),
    )


__all__ = [
    "COMMITMENT_COLUMNS",
    "COMMITTED_TIER",
    "RESERVED_WEIGHT",
    "Commitment",
    "CommitmentUse",
    "apply_commitments",
    "commitment_from_row",
    "commitment_row",
    "new_commitment",
    "scheduling_weight",
]
