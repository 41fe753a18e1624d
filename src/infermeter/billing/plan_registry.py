"""Creating plan versions and assignments in a store, with the rules of ``billing.plans``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

from infermeter.billing.plans import (
    PlanAssignment,
    PlanBook,
    PlanVersion,
    check_future,
    check_name,
)
from infermeter.billing.pricing import PricePlan
from infermeter.billing.store import Store
from infermeter.core.types import ServiceTier


def load_book(store: Store, default: PricePlan) -> PlanBook:
    """Every version and assignment the store holds, over ``default`` for unassigned tenants."""
    return PlanBook(default, store.list_plan_versions(), store.list_plan_assignments())


def create_version(
    store: Store,
    default: PricePlan,
    name: str,
    currency: str,
    prices: Mapping[ServiceTier, Decimal],
    effective_from: datetime,
    now: datetime,
) -> PlanVersion:
    """Add the next version of plan ``name`` (version 1 if new), effective from a time >= now."""
    check_name(name)
    check_future(effective_from, now)
    number = load_book(store, default).next_version(name, currency, effective_from)
    return store.add_plan_version(PlanVersion(name, number, effective_from, currency, prices, now))


def assign(
    store: Store, default: PricePlan, tenant_id: str, plan: str, effective_from: datetime, now: datetime
) -> PlanAssignment:
    """Put ``tenant_id`` on ``plan`` from ``effective_from`` (>= now) on."""
    check_future(effective_from, now)
    load_book(store, default).check_assignable(plan)
    return store.add_plan_assignment(PlanAssignment(tenant_id, plan, effective_from, now))


__all__ = ["assign", "create_version", "load_book"]
