"""Invoices: one rounding per line, re-addable totals, exact sums, corrections, CSV = JSON."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.billing.invoices import (
    CSV_COLUMNS,
    build_invoice,
    invoice_to_csv,
    invoice_to_json,
    period_bounds,
)
from infermeter.core.errors import InvalidRequest
from infermeter.core.records import UsageRecord
from infermeter.core.types import Precision, ServiceTier, Status

NOV = datetime(2026, 11, 1, tzinfo=UTC)
_n = 0


def rec(
    cost: Decimal | str,
    *,
    model: str = "tiny",
    tier: ServiceTier = ServiceTier.DEFAULT,
    kind: str = "usage",
    tenant: str = "ten_a",
    ended_at: datetime = NOV + timedelta(days=3),
    warmup: bool = False,
    currency: str = "USD",
    device_us: int = 1500,
    ru_micros: int = 2_000_000,
) -> UsageRecord:
    global _n
    _n += 1
    return UsageRecord(
        record_id=f"rec_{_n}", request_id=f"req_{_n}", tenant_id=tenant, model=model,
        engine_id="eng", device="cpu", precision=Precision.FP32, service_tier=tier,
        status=Status.COMPLETED, prompt_tokens=10, completion_tokens=5, cached_tokens=0,
        device_us=device_us, prefill_us=device_us, decode_us=0, kv_mb_s=Decimal(0),
        ru_micros=ru_micros, cost=Decimal(cost), currency=currency, queue_ms=0, latency_ms=2,
        started_at=ended_at, ended_at=ended_at, cost_model_version="cm", ru_table_version="ru",
        price_plan_version="plan", warmup=warmup, kind=kind,
    )  # fmt: skip


def test_period_bounds() -> None:
    """A period is [first of the month, first of the next) in UTC, December rolling the year."""
    assert period_bounds("2026-11") == (NOV, datetime(2026, 12, 1, tzinfo=UTC))
    assert period_bounds("2026-12")[1] == datetime(2027, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("bad", ["2026-13", "2026-00", "2026-1", "26-11", "2026-11\n", "nov", ""])
def test_bad_period_names_value_and_format(bad: str) -> None:
    """A malformed period raises InvalidRequest naming the value and YYYY-MM."""
    with pytest.raises(InvalidRequest) as err:
        build_invoice("ten_a", bad, [], "USD")
    assert repr(bad) in err.value.message and "YYYY-MM" in err.value.message
    assert err.value.param == "period"


def test_rounds_once_per_line_half_up() -> None:
    """Three records of 0.001 make one line of 0.003 -> 0.00; 0.005 rounds up to 0.01."""
    inv = build_invoice("ten_a", "2026-11", [rec("0.001")] * 3, "USD")
    assert inv.lines[0].exact_amount == Decimal("0.003") and inv.lines[0].amount == Decimal("0")
    inv = build_invoice("ten_a", "2026-11", [rec("0.0025"), rec("0.0025")], "USD")
    assert inv.lines[0].amount == Decimal("0.01") and inv.total == Decimal("0.01")
    neg = build_invoice("ten_a", "2026-11", [rec("-0.005", kind="credit")], "USD")
    assert neg.lines[0].amount == Decimal("-0.01")  # half away from zero


def test_lines_by_model_and_tier_and_corrections_apart() -> None:
    """Usage groups by (model, tier); corrections by (kind, model, tier), after usage."""
    records = [
        rec("1.10", model="b"), rec("2", model="a"), rec("3", model="a"),
        rec("0.5", model="a", tier=ServiceTier.FLEX),
        rec("-2", model="a", kind="reversal"), rec("-0.25", model="a", kind="credit"),
        rec("0.125", model="b", tier=ServiceTier.FLEX, kind="adjustment"),
    ]  # fmt: skip
    inv = build_invoice("ten_a", "2026-11", records, "USD")
    keys = [(ln.kind, ln.model, ln.service_tier.value, ln.requests) for ln in inv.lines]
    assert keys == [
        ("usage", "a", "default", 2), ("usage", "a", "flex", 1), ("usage", "b", "default", 1),
        ("adjustment", "b", "flex", 0), ("credit", "a", "default", 0),
        ("reversal", "a", "default", 0),
    ]  # fmt: skip
    first = inv.lines[0]
    assert (first.prompt_tokens, first.completion_tokens) == (20, 10)
    assert first.device_ms == Decimal("3.000") and first.ru == Decimal("4")
    assert inv.exact_total == Decimal("4.475")
    assert inv.total == Decimal("4.48")  # 5.00 + 0.50 + 1.10 + 0.13 - 0.25 - 2.00


def test_warmup_other_tenants_and_other_months_are_left_out() -> None:
    """Warmup records, other tenants' records and records outside the month never appear."""
    records = [
        rec("1"), rec("5", warmup=True), rec("7", tenant="ten_b"),
        rec("9", ended_at=NOV - timedelta(microseconds=1)),
        rec("11", ended_at=datetime(2026, 12, 1, tzinfo=UTC)),
        rec("13", ended_at=datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC)),
    ]  # fmt: skip
    inv = build_invoice("ten_a", "2026-11", records, "USD")
    assert inv.exact_total == Decimal(14)
    assert sum(ln.requests for ln in inv.lines) == 2


def test_currency_and_kind_mismatch_raise() -> None:
    """A record in another currency, or of an unknown kind, raises naming the record."""
    bad = rec("1", currency="EUR")
    with pytest.raises(InvalidRequest, match=f"{bad.record_id} is priced in EUR"):
        build_invoice("ten_a", "2026-11", [bad], "USD")
    odd = rec("1", kind="refund")
    with pytest.raises(InvalidRequest, match="kind 'refund'"):
        build_invoice("ten_a", "2026-11", [odd], "USD")


def test_zero_decimal_currency_rounds_to_units() -> None:
    """JPY lines round to whole yen, half-up."""
    inv = build_invoice("ten_a", "2026-11", [rec("2.5", currency="JPY")], "JPY")
    assert inv.lines[0].amount == Decimal(3) and invoice_to_json(inv)["total"] == "3"


costs = st.decimals(min_value=-5, max_value=50, places=12, allow_nan=False, allow_infinity=False)
records = st.lists(
    st.builds(
        rec,
        costs,
        model=st.sampled_from(["a", "b", "c"]),
        tier=st.sampled_from(list(ServiceTier)),
        kind=st.sampled_from(["usage", "usage", "usage", "credit", "reversal", "adjustment"]),
        ended_at=st.datetimes(
            min_value=datetime(2026, 10, 25),
            max_value=datetime(2026, 12, 5),
            timezones=st.just(UTC),
        ),
        warmup=st.booleans(),
    ),
    max_size=40,
)


def _in_period(r: UsageRecord) -> bool:
    return not r.warmup and NOV <= r.ended_at < datetime(2026, 12, 1, tzinfo=UTC)


@given(records)
def test_totals_are_exact_and_re_addable(recs: list[UsageRecord]) -> None:
    """total == Σ rounded lines; Σ exact lines == Σ record costs; each line rounded once half-up."""
    inv = build_invoice("ten_a", "2026-11", recs, "USD")
    assert inv.total == sum((ln.amount for ln in inv.lines), Decimal(0))
    assert inv.exact_total == sum((ln.exact_amount for ln in inv.lines), Decimal(0))
    assert inv.exact_total == sum((r.cost for r in recs if _in_period(r)), Decimal(0))
    for ln in inv.lines:
        assert ln.amount == ln.exact_amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    assert sum(ln.requests for ln in inv.lines) == sum(1 for r in recs if _in_period(r) and r.kind == "usage")
    assert abs(inv.total - inv.exact_total) <= Decimal("0.005") * len(inv.lines)


@given(records)
def test_csv_and_json_agree(recs: list[UsageRecord]) -> None:
    """Every CSV row carries the same strings as the JSON line; the total row matches too."""
    inv = build_invoice("ten_a", "2026-11", recs, "USD")
    data: dict[str, Any] = invoice_to_json(inv)
    rows = list(csv.DictReader(io.StringIO(invoice_to_csv(inv))))
    assert tuple(rows[0].keys()) == CSV_COLUMNS if rows else True
    assert len(rows) == len(data["lines"]) + 1
    for row, line in zip(rows, data["lines"], strict=False):
        assert row["currency"] == "USD"
        assert {k: row[k] for k in line} == {k: str(v) for k, v in line.items()}
        assert Decimal(row["amount"]) == Decimal(line["amount"])
    assert rows[-1]["kind"] == "total"
    assert rows[-1]["amount"] == data["total"] and rows[-1]["exact_amount"] == data["exact_total"]
    assert Decimal(data["total"]) == inv.total and Decimal(data["exact_total"]) == inv.exact_total
