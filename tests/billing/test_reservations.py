"""Reserved capacity: monthly RU commitments prorated by seconds, coverage, overage at the
on-demand price, unused commitment billed and shown, rounding once per invoice line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from infermeter.billing.invoices import build_invoice, invoice_to_json
from infermeter.billing.reservations import Commitment, new_commitment, scheduling_weight
from infermeter.billing.store import Store
from infermeter.core.errors import InvalidRequest
from infermeter.core.records import iso
from infermeter.core.types import ServiceTier
from tests.billing.test_invoices import NOV, rec

DEC = datetime(2026, 12, 1, tzinfo=UTC)


def commit(ru: str, price: str = "0.0015", start: datetime = NOV, end: datetime | None = None) -> Commitment:
    return Commitment("ten_a", Decimal(ru), Decimal(price), start, end, start)


def lines(inv: object) -> dict[str, tuple[str, str]]:
    out = invoice_to_json(inv)  # type: ignore[arg-type]
    return {x["kind"]: (x["ru"], x["amount"]) for x in out["lines"] if x["kind"].startswith("commitment")}


def test_a_partial_month_is_prorated_by_seconds() -> None:
    """Active for the last 10 of November's 30 days: a third of the monthly RU, floored to µRU."""
    c = commit("1000", start=NOV + timedelta(days=20))
    assert c.effective_ru(NOV, DEC) == Decimal("333.333333")
    assert commit("1000", end=NOV + timedelta(days=15)).effective_ru(NOV, DEC) == Decimal("500")
    assert commit("1000", start=DEC).effective_ru(NOV, DEC) == 0


def test_usage_within_the_commitment_is_covered_and_the_rest_shows_unused() -> None:
    """2 RU used of 10 committed: 2 covered, 8 unused, all 10 at the reserved price, usage credited."""
    usage = [rec("0.000004", ru_micros=2_000_000)]  # 2 RU at on-demand 0.0020 per 1,000
    inv = build_invoice("ten_a", "2026-11", usage, "USD", [commit("10", price="1000")])
    assert lines(inv) == {
        "commitment_used": ("2.000000", "2.00"),
        "commitment_unused": ("8.000000", "8.00"),
        "commitment_coverage": ("2.000000", "0.00"),
    }
    assert inv.total == Decimal("10.00")  # the whole commitment; the usage line is credited back
    assert inv.commitments[0].unused_ru == Decimal(8)


def test_usage_beyond_the_commitment_is_billed_at_the_on_demand_price() -> None:
    """30 RU used against 10 committed: 10 at the reserved price, 20 at the records' price."""
    usage = [rec("15", ru_micros=15_000_000), rec("15", ru_micros=15_000_000)]  # 1 per RU on demand
    inv = build_invoice("ten_a", "2026-11", usage, "USD", [commit("10", price="500")])
    assert lines(inv) == {
        "commitment_used": ("10.000000", "5.00"),
        "commitment_unused": ("0.000000", "0.00"),
        "commitment_coverage": ("10.000000", "-10.00"),
    }
    assert inv.total == Decimal("30.00") - Decimal("10.00") + Decimal("5.00")


def test_usage_admitted_before_a_commitment_starts_is_not_covered() -> None:
    """A commitment from the 20th covers the 25th's usage, not the 3rd's (found in a trial)."""
    before = rec("4", ru_micros=4_000_000, ended_at=NOV + timedelta(days=3))
    after = rec("6", ru_micros=6_000_000, ended_at=NOV + timedelta(days=25))
    inv = build_invoice(
        "ten_a", "2026-11", [after, before], "USD", [commit("3000", start=NOV + timedelta(days=20))]
    )
    (use,) = inv.commitments
    assert use.covered_ru == Decimal(6)  # only what it was active for
    assert use.coverage_credit == Decimal(6)  # the covered record's on-demand cost


def test_flex_and_priority_usage_is_not_covered() -> None:
    """A commitment covers default-tier RU only."""
    usage = [rec("5", tier=ServiceTier.FLEX), rec("5", tier=ServiceTier.PRIORITY)]
    inv = build_invoice("ten_a", "2026-11", usage, "USD", [commit("10", price="100")])
    assert inv.commitments[0].covered_ru == 0 and inv.commitments[0].unused_ru == 10


def test_an_earlier_commitment_is_used_first() -> None:
    """Two commitments: coverage fills the one that started earlier, then the next."""
    usage = [rec("3", ru_micros=3_000_000)]
    later = commit("10", start=NOV + timedelta(seconds=1))
    inv = build_invoice("ten_a", "2026-11", usage, "USD", [later, commit("2")])
    covered = [(u.commitment.start_at, u.covered_ru) for u in inv.commitments]
    assert covered == [(NOV, Decimal(2)), (later.start_at, Decimal(1))]


def test_a_commitment_cannot_start_in_the_past_or_be_empty() -> None:
    """Named 400s: start_at before now, a non-positive amount, an end before the start."""
    now = datetime.now(UTC)
    with pytest.raises(InvalidRequest, match=r"start_at=.*in the past") as err:
        new_commitment("t", "10", "0.001", "2020-01-01T00:00:00Z", None, now)
    assert err.value.param == "start_at"
    with pytest.raises(InvalidRequest, match="ru_per_month=") as err:
        new_commitment("t", "0", "0.001", None, None, now)
    with pytest.raises(InvalidRequest, match=r"end_at=.*not after") as err:
        new_commitment("t", "1", "0.001", None, "2020-01-01T00:00:00Z", now)
    assert err.value.param == "end_at"


def test_an_active_commitment_raises_the_scheduling_weight() -> None:
    """Weight 2 while a commitment is active, 1 before it starts and after it ends."""
    c = commit("10", end=DEC)
    assert scheduling_weight([c], "ten_a", NOV + timedelta(days=1)) == 2
    assert scheduling_weight([c], "ten_a", DEC) == 1
    assert scheduling_weight([c], "ten_b", NOV) == 1


def test_both_stores_keep_commitments_in_order_and_refuse_unknown_tenants(any_store: Store) -> None:
    """SQLite and PostgreSQL round-trip commitments (listed per tenant); an unknown tenant is 404."""
    from infermeter.core.errors import NotFound

    tenant = any_store.create_tenant("acme")
    now = datetime.now(UTC)
    first = new_commitment(tenant.tenant_id, "1000", "0.0015", None, None, now)
    second = new_commitment(tenant.tenant_id, "5.5", "0.001", None, iso(now + timedelta(days=3)), now)
    any_store.add_commitment(first)
    any_store.add_commitment(second)
    assert any_store.list_commitments(tenant.tenant_id) == [first, second]
    assert any_store.list_commitments("ten_other") == []
    with pytest.raises(NotFound):
        any_store.add_commitment(new_commitment("ten_nobody", "1", "1", None, None, now))


def test_a_stored_commitment_is_never_changed(tmp_path: Path) -> None:
    """The SQLite table refuses UPDATE and DELETE naming the fix."""
    import sqlite3

    from infermeter.billing.sqlite_store import SqliteStore

    path = tmp_path / "ledger.db"
    with SqliteStore(path) as store:
        tenant = store.create_tenant("acme")
        store.add_commitment(new_commitment(tenant.tenant_id, "10", "0.001", None, None, datetime.now(UTC)))
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.IntegrityError, match="never changed"):
        conn.execute("UPDATE commitments SET ru_per_month = '1'")
