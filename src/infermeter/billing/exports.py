"""Usage records in the shapes billing systems take as they are. Pure: records in, bodies out.

- Stripe: bodies of ``POST /v2/billing/meter_event_stream`` (at most 100 events each); one
  meter event per record, ``identifier`` = the record id (Stripe refuses a repeat), value =
  the record's RU as a decimal string with 6 places, ``timestamp`` = the record's time.
- Lago: bodies of ``POST /api/v1/events/batch`` (at most 100 events each);
  ``transaction_id`` = the record id (Lago ignores a repeat), ``precise_total_amount_cents``
  = our exact price in cents, for a dynamic charge (we are the rater).
- OpenMeter: the ledger entry itself, a CloudEvents 1.0 event (``id`` = the record id,
  ``subject`` = the tenant); OpenMeter deduplicates on (source, id).
- FOCUS: a CSV with FinOps FOCUS column names, one row per record (corrections included,
  as ``ChargeClass=Correction``).

Only ``usage`` records that are not warm-up go to the event formats (a correction is a
credit note there, not usage); the cursor (ledger position) still moves past the others.
"""

from __future__ import annotations

import calendar
import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from infermeter.billing.invoices import period_bounds
from infermeter.billing.plans import PlanBook
from infermeter.billing.pricing import EXACT
from infermeter.billing.store import Store
from infermeter.core.errors import InvalidRequest
from infermeter.core.money import format_decimal
from infermeter.core.records import UsageRecord, iso
from infermeter.core.types import ServiceTier

FORMATS = ("stripe", "lago", "openmeter", "focus")
BATCH = 100  # events per request body: the limit of Stripe's stream and Lago's batch endpoint
DEFAULT_EVENT_NAME = "infermeter_ru"  # Stripe meter event_name / Lago billable metric code

PRICING_CATEGORY = {
    ServiceTier.PRIORITY: "Standard",
    ServiceTier.DEFAULT: "Standard",
    ServiceTier.FLEX: "Dynamic",
}
CHARGE_CATEGORY = {"usage": "Usage", "credit": "Credit", "reversal": "Adjustment", "adjustment": "Adjustment"}

FOCUS_COLUMNS = (
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ResourceId",
    "ResourceName",
    "ServiceCategory",
    "ServiceName",
    "SkuId",
    "SkuPriceId",
    "Tags",
    "x_RecordId",
    "x_LedgerSeq",
)

ListPrice = Callable[[str, ServiceTier], Decimal | None]  # (plan version, tier) -> per 1,000 RU


@dataclass(frozen=True, slots=True)
class Page:
    """One export: ``bodies`` (JSON formats) or ``csv``; ``next_after`` is the cursor to resume."""

    format: str
    after: int | None
    next_after: int | None
    count: int  # records exported (events or rows)
    bodies: list[Any]
    csv: str | None = None


def billable(record: UsageRecord) -> bool:
    return record.kind == "usage" and not record.warmup


def _customer(record: UsageRecord, customers: Mapping[str, str]) -> str:
    return customers.get(record.tenant_id, record.tenant_id)


def stripe_event(record: UsageRecord, customers: Mapping[str, str], event_name: str) -> dict[str, Any]:
    return {
        "event_name": event_name,
        "identifier": record.record_id,
        "payload": {
            "stripe_customer_id": _customer(record, customers),
            "value": format_decimal(record.ru, 6),
        },
        "timestamp": iso(record.ended_at),
    }


def lago_event(record: UsageRecord, customers: Mapping[str, str], code: str) -> dict[str, Any]:
    return {
        "transaction_id": record.record_id,
        "external_subscription_id": _customer(record, customers),
        "code": code,
        "timestamp": calendar.timegm(record.ended_at.utctimetuple()),
        "precise_total_amount_cents": format_decimal(EXACT.multiply(record.cost, Decimal(100))),
        "properties": {
            "ru": format_decimal(record.ru, 6),
            "device_ms": format_decimal(record.device_ms, 3),
            "model": record.model,
            "service_tier": record.service_tier.value,
            "price_plan_version": record.price_plan_version,
            "price_point": record.price_point,
            "currency": record.currency,
        },
    }


def _batches(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"events": events[i : i + BATCH]} for i in range(0, len(events), BATCH)]


def focus_row(seq: int, record: UsageRecord, list_price: ListPrice) -> dict[str, str]:
    """One FOCUS row. Costs are exact decimals (FOCUS leaves rounding to the invoice)."""
    start, end = period_bounds(record.ended_at.strftime("%Y-%m"))
    tier = ServiceTier(record.service_tier)
    per_1000 = list_price(record.price_plan_version, tier)
    ru = record.ru
    list_cost = "" if per_1000 is None else format_decimal(EXACT.multiply(ru, per_1000).scaleb(-3, EXACT))
    unit = "" if per_1000 is None else format_decimal(per_1000.scaleb(-3, EXACT))
    mult = record.multiplier if record.multiplier is not None else Decimal(1)
    contracted = "" if per_1000 is None else format_decimal(EXACT.multiply(per_1000, mult).scaleb(-3, EXACT))
    correction = record.kind != "usage"
    tags = {
        "service_tier": tier.value,
        "price_plan_version": record.price_plan_version,
        "model": record.model,
    }
    if record.price_point is not None:
        tags["price_point"] = record.price_point
    if record.corrects is not None:
        tags["corrects"] = record.corrects
    cost = format_decimal(record.cost)
    return {
        "BilledCost": cost,
        "BillingAccountId": record.tenant_id,
        "BillingAccountName": record.tenant_id,
        "BillingCurrency": record.currency,
        "BillingPeriodEnd": iso(end),
        "BillingPeriodStart": iso(start),
        "ChargeCategory": CHARGE_CATEGORY.get(record.kind, "Adjustment"),
        "ChargeClass": "Correction" if correction else "",
        "ChargeDescription": (record.reason or record.kind)
        if correction
        else f"{record.model} {tier.value} inference",
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodEnd": iso(record.ended_at),
        "ChargePeriodStart": iso(min(record.started_at, record.ended_at)),
        "ConsumedQuantity": format_decimal(ru, 6),
        "ConsumedUnit": "RU",
        "ContractedCost": cost,
        "ContractedUnitPrice": contracted,
        "EffectiveCost": cost,
        "InvoiceIssuerName": "infermeter",
        "ListCost": list_cost,
        "ListUnitPrice": unit,
        "PricingCategory": PRICING_CATEGORY.get(tier, "Other"),
        "PricingQuantity": format_decimal(ru, 6),
        "PricingUnit": "RU",
        "ProviderName": "infermeter",
        "PublisherName": "infermeter",
        "ResourceId": record.engine_id,
        "ResourceName": record.engine_id,
        "ServiceCategory": "AI and Machine Learning",
        "ServiceName": "infermeter inference",
        "SkuId": f"{record.model}:{tier.value}",
        "SkuPriceId": record.price_point or f"{record.price_plan_version}:{tier.value}",
        "Tags": json.dumps(tags, sort_keys=True, separators=(",", ":")),
        "x_RecordId": record.record_id,
        "x_LedgerSeq": str(seq),
    }


def export_page(
    fmt: str,
    rows: Sequence[tuple[int, UsageRecord]],
    after: int | None,
    *,
    customers: Mapping[str, str] | None = None,
    event_name: str = DEFAULT_EVENT_NAME,
    list_price: ListPrice = lambda version, tier: None,
) -> Page:
    """Render ledger ``rows`` (seq, record) read after ``after`` in ``fmt``."""
    customers = customers or {}
    next_after = rows[-1][0] if rows else after
    if fmt == "focus":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, FOCUS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        n = 0
        for seq, r in rows:
            if not r.warmup:
                writer.writerow(focus_row(seq, r, list_price))
                n += 1
        return Page(fmt, after, next_after, n, [], buf.getvalue())
    chosen = [r for _, r in rows if billable(r)]
    if fmt == "stripe":
        bodies: list[Any] = _batches([stripe_event(r, customers, event_name) for r in chosen])
    elif fmt == "lago":
        bodies = _batches([lago_event(r, customers, event_name) for r in chosen])
    else:  # openmeter: the CloudEvents themselves, one body each
        bodies = [r.to_cloudevent() for r in chosen]
    return Page(fmt, after, next_after, len(chosen), bodies)


MAX_LIMIT = 10_000


def read_page(
    store: Store,
    fmt: str,
    after: int | None,
    limit: int,
    book: PlanBook,
    *,
    customers: Mapping[str, str] | None = None,
    event_name: str = DEFAULT_EVENT_NAME,
) -> Page:
    """The next ``limit`` ledger entries after ``after`` (every tenant), rendered in ``fmt``.

    Resume with ``after = page.next_after``: an entry is in exactly one page, so re-running
    from the saved cursor exports nothing twice.
    """
    if fmt not in FORMATS:
        raise InvalidRequest(
            f"export format {fmt!r} is unknown; formats are {', '.join(FORMATS)}", param="format"
        )
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit={limit} is out of range; send 1 to {MAX_LIMIT}", param="limit")
    rows = store.list_records(None, limit=limit, after_seq=after, include_warmup=True)
    return export_page(
        fmt, rows, after, customers=customers, event_name=event_name, list_price=book.list_price
    )


__all__ = [
    "BATCH",
    "DEFAULT_EVENT_NAME",
    "FOCUS_COLUMNS",
    "FORMATS",
    "MAX_LIMIT",
    "Page",
    "export_page",
    "focus_row",
    "lago_event",
    "read_page",
    "stripe_event",
]
