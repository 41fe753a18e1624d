"""Versioned price plans: resolution by time, no retroactive change, stored on either store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from infermeter.billing.entry_encoding import encode_event, reference_event
from infermeter.billing.plan_registry import assign, create_version, load_book
from infermeter.billing.plans import PlanAssignment, PlanBook, PlanVersion
from infermeter.billing.pricing import DEFAULT_PLAN
from infermeter.billing.store import Store
from infermeter.core.errors import InvalidRequest, NotFound
from infermeter.core.records import UsageRecord, canonical_json
from infermeter.core.types import ServiceTier
from tests.billing.ledger_records import make_record

T0 = datetime(2026, 11, 1, tzinfo=UTC)
D, F = ServiceTier.DEFAULT, ServiceTier.FLEX


def version(n: int, at: datetime, default: str, currency: str = "USD") -> PlanVersion:
    return PlanVersion("standard", n, at, currency, {D: Decimal(default), F: Decimal("0.001")}, at)


def test_the_version_in_effect_at_a_time_prices_it() -> None:
    """Before v2's effective time v1 applies, from it on v2; before any assignment, the default."""
    book = PlanBook(
        DEFAULT_PLAN,
        [version(1, T0, "0.003"), version(2, T0 + timedelta(days=10), "0.004")],
        [PlanAssignment("ten_a", "standard", T0 + timedelta(hours=1), T0)],
    )
    assert book.plan_at("ten_a", T0) is DEFAULT_PLAN
    assert book.quote("ten_a", D, T0 + timedelta(days=9)).plan_version == "standard.v1"
    q = book.quote("ten_a", D, T0 + timedelta(days=10))
    assert (q.plan_version, q.list_price, q.multiplier) == ("standard.v2", Decimal("0.004"), Decimal(1))
    assert q.price_point == "standard.v2:default:x1"
    assert book.plan_at("ten_other", T0 + timedelta(days=20)) is DEFAULT_PLAN


def test_a_quote_prices_exactly() -> None:
    """cost = RU x price per 1,000 RU x multiplier, exact (no float, no rounding)."""
    q = PlanBook(DEFAULT_PLAN, [version(1, T0, "0.0030")], [PlanAssignment("t", "standard", T0, T0)]).quote(
        "t", D, T0
    )
    assert q.price_plan().cost(1_234_567, D) == Decimal("1234567") * Decimal("0.0030") / Decimal(10**9)


def test_a_float_price_is_refused_naming_the_field() -> None:
    """A price given as a float is a 400-class error naming per_1000_ru."""
    with pytest.raises(InvalidRequest) as err:
        PlanVersion("standard", 1, T0, "USD", {D: 0.002}, T0)  # type: ignore[dict-item]
    assert err.value.param == "per_1000_ru" and "float" in err.value.message


def test_a_change_in_the_past_is_refused(any_store: Store) -> None:
    """A version or an assignment effective before now would reprice the past: refused."""
    now = datetime.now(UTC)
    with pytest.raises(InvalidRequest) as err:
        create_version(
            any_store, DEFAULT_PLAN, "std", "USD", {D: Decimal("0.002")}, now - timedelta(seconds=1), now
        )
    assert err.value.param == "effective_from" and "retroactively" in err.value.message
    create_version(any_store, DEFAULT_PLAN, "std", "USD", {D: Decimal("0.002")}, now, now)
    tenant = any_store.create_tenant("acme")
    with pytest.raises(InvalidRequest):
        assign(any_store, DEFAULT_PLAN, tenant.tenant_id, "std", now - timedelta(days=1), now)


def test_versions_follow_each_other_in_one_currency(any_store: Store) -> None:
    """v2 must start after v1 and keep its currency; numbers are assigned in order."""
    now = datetime.now(UTC)
    v1 = create_version(any_store, DEFAULT_PLAN, "std", "USD", {D: Decimal("0.002")}, now, now)
    later = now + timedelta(days=1)
    v2 = create_version(any_store, DEFAULT_PLAN, "std", "USD", {D: Decimal("0.003")}, later, now)
    assert (v1.version_id, v2.version_id) == ("std.v1", "std.v2")
    with pytest.raises(InvalidRequest, match="currency"):
        create_version(any_store, DEFAULT_PLAN, "std", "EUR", {D: Decimal("1")}, later + timedelta(1), now)
    with pytest.raises(InvalidRequest, match="after"):
        create_version(any_store, DEFAULT_PLAN, "std", "USD", {D: Decimal("1")}, later, now)


def test_plans_and_assignments_round_trip_through_the_store(any_store: Store) -> None:
    """What is stored reads back equal, on SQLite and on PostgreSQL."""
    now = datetime.now(UTC)
    v1 = create_version(any_store, DEFAULT_PLAN, "std", "JPY", {D: Decimal("3"), F: Decimal("1.5")}, now, now)
    tenant = any_store.create_tenant("acme")
    a = assign(any_store, DEFAULT_PLAN, tenant.tenant_id, "std", now, now)
    book = load_book(any_store, DEFAULT_PLAN)
    assert book.versions() == [v1] and book.assignments() == [a]
    assert book.quote(tenant.tenant_id, F, now).unit_price == Decimal("1.5")


def test_assigning_an_unknown_plan_or_tenant_fails_by_name(any_store: Store) -> None:
    """An unknown plan is a 400 naming it; an unknown tenant a 404."""
    now = datetime.now(UTC)
    tenant = any_store.create_tenant("acme")
    with pytest.raises(InvalidRequest, match="'nope'"):
        assign(any_store, DEFAULT_PLAN, tenant.tenant_id, "nope", now, now)
    create_version(any_store, DEFAULT_PLAN, "std", "USD", {D: Decimal("0.002")}, now, now)
    with pytest.raises(NotFound):
        assign(any_store, DEFAULT_PLAN, "ten_missing", "std", now, now)


def test_sqlite_refuses_to_edit_a_plan_version(tmp_path: object) -> None:
    """The plan tables are append-only: an UPDATE is aborted by a trigger."""
    import sqlite3

    from infermeter.billing.sqlite_store import SqliteStore

    path = f"{tmp_path}/im.db"
    store = SqliteStore(path)
    now = datetime.now(UTC)
    create_version(store, DEFAULT_PLAN, "std", "USD", {D: Decimal("0.002")}, now, now)
    store.close()
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.IntegrityError, match="never changed"):
        conn.execute("UPDATE plan_versions SET prices = '{}'")


@pytest.mark.parametrize("multiplier", [Decimal("1"), Decimal("0.75"), Decimal("0.500"), None])
def test_price_fields_encode_as_the_reference_does(multiplier: Decimal | None) -> None:
    """The fast encoder writes price_point and multiplier byte-identically, and only when set."""
    point = None if multiplier is None else f"standard.v1:flex:x{multiplier}"
    record = make_record(3, price_point=point, multiplier=multiplier)
    assert encode_event(record) == reference_event(record)
    assert encode_event(record)[0].encode() == canonical_json(record.to_cloudevent())
    if multiplier is None:
        assert "price_point" not in record.data() and "multiplier" not in record.data()
    assert UsageRecord.from_cloudevent(record.to_cloudevent()) == record
