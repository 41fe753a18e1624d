"""Monthly invoices from usage records. Pure: records in, an invoice value out.

Rounding happens exactly once per line: a line's amount is its exact Σ of record costs
quantized to the currency's minor unit, half-up (away from zero), via ``Money.rounded``. The
invoice total is Σ of the rounded line amounts, so the lines always add up to the total
(GOBL's "currency" model); ``exact_total`` keeps the unrounded sum for audit.

Lines: one per (model, service tier, price plan version) for usage, so an invoice spanning a
plan change shows each version on its own lines, and one per (kind, model, tier, version) for
corrections (credit, reversal, adjustment), whose costs may be negative. Warmup records never
appear. A tenant's commitments (``billing.reservations``) add ``commitment_used``,
``commitment_unused`` and ``commitment_coverage`` lines after them.
A record belongs to the period of its ``ended_at`` (UTC), the CloudEvent's time.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from infermeter.billing.pricing import EXACT
from infermeter.billing.reservations import COMMITTED_TIER, Commitment, CommitmentUse, apply_commitments
from infermeter.core.errors import InvalidRequest
from infermeter.core.money import MINOR_UNITS, Money, format_decimal
from infermeter.core.records import UsageRecord
from infermeter.core.types import ServiceTier

USAGE = "usage"
CORRECTION_KINDS = ("adjustment", "credit", "reversal")

_PERIOD = re.compile(r"([0-9]{4})-([0-9]{2})")

CSV_COLUMNS = (
    "kind",
    "model",
    "service_tier",
    "price_plan_version",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "device_ms",
    "ru",
    "exact_amount",
    "amount",
    "currency",
)


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """``"YYYY-MM"`` -> [first instant of the month, first instant of the next) in UTC."""
    match = _PERIOD.fullmatch(period) if isinstance(period, str) else None
    year, month = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not (1 <= month <= 12 and 1 <= year <= 9998):
        raise InvalidRequest(
            f"period {period!r} is not a month; use the format YYYY-MM, e.g. 2026-11",
            param="period",
        )
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start, end


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One line: usage of one model in one tier, or one kind of correction for them."""

    kind: str  # usage | adjustment | credit | reversal
    model: str
    service_tier: ServiceTier
    requests: int
    prompt_tokens: int
    completion_tokens: int
    device_ms: Decimal
    ru: Decimal
    exact_amount: Decimal  # Σ record costs, unrounded
    amount: Decimal  # exact_amount rounded once to the minor unit, half-up
    price_plan_version: str = ""  # the plan version its records were priced with


@dataclass(frozen=True, slots=True)
class Invoice:
    tenant_id: str
    period: str
    period_start: datetime
    period_end: datetime
    currency: str
    lines: tuple[InvoiceLine, ...]
    total: Decimal  # Σ line amounts (re-addable)
    exact_total: Decimal  # Σ exact line amounts
    commitments: tuple[CommitmentUse, ...] = ()


def _tally(records: list[UsageRecord]) -> tuple[int, int, int, Decimal, Decimal, Decimal]:
    device_us = ru_micros = prompt = completion = 0
    exact = Decimal(0)
    for r in records:
        prompt += r.prompt_tokens
        completion += r.completion_tokens
        device_us += r.device_us
        ru_micros += r.ru_micros
        exact = EXACT.add(exact, r.cost)
    return (
        prompt,
        completion,
        sum(1 for r in records if r.kind == "usage"),  # a credit or reversal is not a request
        Decimal(device_us).scaleb(-3),
        Decimal(ru_micros).scaleb(-6),
        exact,
    )


def invoice_currency(records: Iterable[UsageRecord], default: str) -> str:
    """The currency of the first billable record (a tenant's plan sets it), else ``default``."""
    for r in records:
        if not r.warmup:
            return r.currency
    return default


def build_invoice(
    tenant_id: str,
    period: str,
    records: Iterable[UsageRecord],
    currency: str,
    commitments: Iterable[Commitment] = (),
) -> Invoice:
    """The tenant's invoice for ``period`` ("YYYY-MM") from its records and commitments.

    Records of other tenants, outside the period, or marked warmup are left out. A record in
    another currency, or of an unknown kind, raises InvalidRequest naming the record.
    """
    start, end = period_bounds(period)
    kept: list[UsageRecord] = []
    groups: dict[tuple[str, str, ServiceTier, str], list[UsageRecord]] = {}
    for r in records:
        if r.warmup or r.tenant_id != tenant_id:
            continue
        ended = r.ended_at if r.ended_at.tzinfo else r.ended_at.replace(tzinfo=UTC)
        if not start <= ended < end:
            continue
        if r.currency != currency:
            raise InvalidRequest(
                f"record {r.record_id} is priced in {r.currency}, the invoice in {currency}; "
                "invoice each currency separately",
                param="currency",
            )
        if r.kind != USAGE and r.kind not in CORRECTION_KINDS:
            raise InvalidRequest(
                f"record {r.record_id} has kind {r.kind!r}; kinds are "
                f"{', '.join((USAGE, *CORRECTION_KINDS))}",
                param="kind",
            )
        key = (r.kind, r.model, ServiceTier(r.service_tier), r.price_plan_version)
        groups.setdefault(key, []).append(r)
        kept.append(r)

    def order(key: tuple[str, str, ServiceTier, str]) -> tuple[bool, str, str, str, str]:
        kind, model, tier, version = key
        return (kind != USAGE, kind, model, tier.value, version)

    lines: list[InvoiceLine] = []
    for key in sorted(groups, key=order):
        kind, model, tier, version = key
        prompt, completion, count, device_ms, ru, exact = _tally(groups[key])
        amount = Money(exact, currency).rounded().amount
        lines.append(
            InvoiceLine(kind, model, tier, count, prompt, completion, device_ms, ru, exact, amount, version)
        )
    mine = [c for c in commitments if c.tenant_id == tenant_id]
    uses = apply_commitments(mine, kept, start, end)
    for use in uses:
        version = f"reserved@{use.commitment.per_1000_ru}"
        for kind, ru, exact in (
            ("commitment_used", use.covered_ru, use.used_amount),
            ("commitment_unused", use.unused_ru, use.unused_amount),
            ("commitment_coverage", use.covered_ru, -use.coverage_credit),
        ):
            amount = Money(exact, currency).rounded().amount
            zero = Decimal(0)
            lines.append(InvoiceLine(kind, "", COMMITTED_TIER, 0, 0, 0, zero, ru, exact, amount, version))
    total = exact_total = Decimal(0)
    for line in lines:
        total = EXACT.add(total, line.amount)
        exact_total = EXACT.add(exact_total, line.exact_amount)
    minor = Decimal(1).scaleb(-MINOR_UNITS.get(currency, 2))
    total = total.quantize(minor)  # a sum of rounded amounts is already on the grid
    return Invoice(tenant_id, period, start, end, currency, tuple(lines), total, exact_total, tuple(uses))


def _money(value: Decimal, currency: str) -> str:
    return format_decimal(value, MINOR_UNITS.get(currency, 2))


def _line_fields(line: InvoiceLine, currency: str) -> dict[str, Any]:
    return {
        "kind": line.kind,
        "model": line.model,
        "service_tier": line.service_tier.value,
        "price_plan_version": line.price_plan_version,
        "requests": line.requests,
        "prompt_tokens": line.prompt_tokens,
        "completion_tokens": line.completion_tokens,
        "device_ms": format_decimal(line.device_ms, 3),
        "ru": format_decimal(line.ru, 6),
        "exact_amount": format_decimal(line.exact_amount),
        "amount": _money(line.amount, currency),
    }


def invoice_to_json(inv: Invoice) -> dict[str, Any]:
    """JSON-safe dict; every Decimal is a string (amounts with the currency's minor digits)."""
    return {
        "object": "invoice",
        "tenant_id": inv.tenant_id,
        "period": inv.period,
        "period_start": inv.period_start.isoformat().replace("+00:00", "Z"),
        "period_end": inv.period_end.isoformat().replace("+00:00", "Z"),
        "currency": inv.currency,
        "rounding": "per line, to the minor unit, half-up; total = sum of line amounts",
        "lines": [_line_fields(line, inv.currency) for line in inv.lines],
        "total": _money(inv.total, inv.currency),
        "exact_total": format_decimal(inv.exact_total),
        "commitments": [use.to_json() for use in inv.commitments],
    }


def invoice_to_csv(inv: Invoice) -> str:
    """A header row, one row per line, then a ``total`` row (same strings as the JSON)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for line in inv.lines:
        fields = _line_fields(line, inv.currency)
        fields["currency"] = inv.currency
        writer.writerow([fields[c] for c in CSV_COLUMNS])
    total = dict.fromkeys(CSV_COLUMNS, "")
    total.update(
        kind="total",
        exact_amount=format_decimal(inv.exact_total),
        amount=_money(inv.total, inv.currency),
        currency=inv.currency,
    )
    writer.writerow([total[c] for c in CSV_COLUMNS])
    return buf.getvalue()


__all__ = [
    "CORRECTION_KINDS",
    "CSV_COLUMNS",
    "Invoice",
    "InvoiceLine",
    "build_invoice",
    "invoice_currency",
    "invoice_to_csv",
    "invoice_to_json",
    "period_bounds",
]
