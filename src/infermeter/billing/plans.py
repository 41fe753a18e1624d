"""Versioned price plans, their assignment to tenants, and the price a request is quoted.

A *plan* has a name (``standard``) and numbered *versions* (``standard.v1``, ``standard.v2``).
A version holds a currency and a price per 1,000 RU for each service tier, and an
``effective_from`` instant; it is never edited, only followed by a newer version. A tenant is
*assigned* a plan from an instant on. The price of a request is found at its admission time
``t``:

    assignment = the tenant's latest assignment with effective_from <= t (none: the default plan)
    version    = the plan's latest version with effective_from <= t
    cost       = RU x price_per_1000_ru(version, tier) / 1000 x multiplier

Nothing is retroactive: a new version or assignment must take effect at or after the moment
it is made (``check_future``), so a request already priced keeps its price. The multiplier is
1 for every tier until a dynamic multiplier applies; the *price point* names what a record was
priced with: ``<plan version>:<tier>:x<multiplier>``. Pure: no clocks, no store.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from infermeter.billing.pricing import EXACT, PricePlan
from infermeter.core.errors import ConfigError, InvalidRequest
from infermeter.core.records import iso
from infermeter.core.types import ServiceTier

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ONE = Decimal(1)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequest(
            f"plan name {name!r} is invalid; use 1-63 lower-case letters, digits, '-' or '_' "
            "starting with a letter or digit, e.g. 'standard'",
            param="name",
        )
    return name


def parse_time(value: str | datetime, field: str = "effective_from") -> datetime:
    """An ISO 8601 instant in UTC (a naive one is taken as UTC); InvalidRequest naming ``field``."""
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(
                f"{field}={value!r} is not an ISO 8601 time; use e.g. 2026-12-01T00:00:00Z",
                param=field,
            ) from None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def check_future(at: datetime, now: datetime, field: str = "effective_from") -> None:
    """Refuse a change that would reprice the past (``at`` before ``now``)."""
    if at < now:
        raise InvalidRequest(
            f"{field}={iso(at)} is in the past (now is {iso(now)}); a price change applies only "
            f"from its effective time on, never retroactively: give a time at or after now",
            param=field,
        )


@dataclass(frozen=True, slots=True)
class PlanVersion:
    """One immutable version of a plan: prices per 1,000 RU per tier, from ``effective_from``."""

    plan: str
    version: int
    effective_from: datetime
    currency: str
    per_1000_ru: Mapping[ServiceTier, Decimal]
    created_at: datetime

    def __post_init__(self) -> None:
        check_name(self.plan)
        if type(self.version) is not int or self.version < 1:
            raise InvalidRequest(f"plan version {self.version!r} must be an integer >= 1", param="version")
        try:  # PricePlan validates the currency and every price (never a float)
            priced = PricePlan(self.version_id, self.currency, dict(self.per_1000_ru))
        except ConfigError as exc:
            raise InvalidRequest(exc.message, param="per_1000_ru") from None
        if not priced.per_1000_ru:
            raise InvalidRequest(
                f"plan {self.plan!r} has no prices; give at least one tier, e.g. "
                '{"default": "0.0020", "flex": "0.0010"}',
                param="per_1000_ru",
            )
        object.__setattr__(self, "per_1000_ru", priced.per_1000_ru)

    @property
    def version_id(self) -> str:
        """What records name: ``<plan>.v<version>``."""
        return f"{self.plan}.v{self.version}"

    def price_plan(self) -> PricePlan:
        return PricePlan(self.version_id, self.currency, self.per_1000_ru)

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "plan_version",
            "plan": self.plan,
            "version": self.version,
            "version_id": self.version_id,
            "effective_from": iso(self.effective_from),
            "currency": self.currency,
            "per_1000_ru": {t.value: str(p) for t, p in sorted(self.per_1000_ru.items())},
            "created_at": iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class PlanAssignment:
    """Tenant ``tenant_id`` is on plan ``plan`` from ``effective_from`` on."""

    tenant_id: str
    plan: str
    effective_from: datetime
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "plan_assignment",
            "tenant_id": self.tenant_id,
            "plan": self.plan,
            "effective_from": iso(self.effective_from),
            "created_at": iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class Quote:
    """What a request is priced with, fixed at admission."""

    plan_version: str
    currency: str
    tier: ServiceTier
    list_price: Decimal  # per 1,000 RU, before the multiplier
    multiplier: Decimal

    @property
    def price_point(self) -> str:
        return f"{self.plan_version}:{self.tier.value}:x{self.multiplier}"

    @property
    def unit_price(self) -> Decimal:
        """Per 1,000 RU after the multiplier (exact)."""
        return EXACT.multiply(self.list_price, self.multiplier)

    def price_plan(self) -> PricePlan:
        """A one-tier PricePlan at the effective price, named by the plan version."""
        return PricePlan(self.plan_version, self.currency, {self.tier: self.unit_price})


def parse_prices(raw: Mapping[str, Any] | Iterable[str]) -> dict[ServiceTier, Decimal]:
    """``{"default": "0.002"}`` or ``["default=0.002", ...]`` -> {tier: Decimal}, named errors."""
    pairs: list[tuple[str, Any]] = []
    if isinstance(raw, Mapping):
        pairs = list(raw.items())
    else:
        for item in raw:
            tier, sep, value = str(item).partition("=")
            if not sep:
                raise InvalidRequest(
                    f"price {item!r} is not TIER=PRICE; use e.g. default=0.0020", param="per_1000_ru"
                )
            pairs.append((tier.strip(), value.strip()))
    out: dict[ServiceTier, Decimal] = {}
    for tier, value in pairs:
        try:
            key = ServiceTier(tier)
        except ValueError:
            raise InvalidRequest(
                f"unknown service tier {tier!r} in per_1000_ru; tiers are "
                f"{', '.join(t.value for t in ServiceTier)}",
                param="per_1000_ru",
            ) from None
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise InvalidRequest(
                f'price for tier {tier!r} is {value!r}; give a decimal string such as "0.0020"',
                param="per_1000_ru",
            )
        try:
            price = Decimal(value)
        except ArithmeticError:
            raise InvalidRequest(
                f"price for tier {tier!r} is {value!r}, not a decimal number", param="per_1000_ru"
            ) from None
        if not price.is_finite() or price < 0:
            raise InvalidRequest(
                f"price for tier {tier!r} is {value!r}; it must be a finite, non-negative decimal",
                param="per_1000_ru",
            )
        out[key] = price
    return out


def plan_file(text: str) -> dict[str, Any]:
    """A plan file (JSON): ``{"name", "currency", "effective_from"?, "per_1000_ru": {...}}``."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"the plan file is not JSON ({exc}); see docs/pricing.md") from None
    if not isinstance(obj, dict) or not {"name", "currency", "per_1000_ru"} <= obj.keys():
        raise InvalidRequest(
            'a plan file is a JSON object with "name", "currency" and "per_1000_ru" '
            '(and optionally "effective_from"); see docs/pricing.md'
        )
    return obj


VERSION_COLUMNS = "plan, version, effective_from, currency, prices, created_at"
ASSIGNMENT_COLUMNS = "tenant_id, plan, effective_from, created_at"


def version_row(v: PlanVersion) -> tuple[str, int, str, str, str, str]:
    prices = json.dumps({t.value: str(p) for t, p in sorted(v.per_1000_ru.items())}, sort_keys=True)
    return (v.plan, v.version, iso(v.effective_from), v.currency, prices, iso(v.created_at))


def version_from_row(row: tuple[Any, ...]) -> PlanVersion:
    plan, version, effective, currency, prices, created = row
    per = {ServiceTier(t): Decimal(p) for t, p in json.loads(prices).items()}
    return PlanVersion(plan, int(version), parse_time(effective), currency, per, parse_time(created))


def assignment_row(a: PlanAssignment) -> tuple[str, str, str, str]:
    return (a.tenant_id, a.plan, iso(a.effective_from), iso(a.created_at))


def assignment_from_row(row: tuple[Any, ...]) -> PlanAssignment:
    tenant, plan, effective, created = row
    return PlanAssignment(tenant, plan, parse_time(effective), parse_time(created))


def plan_version_taken(v: PlanVersion) -> InvalidRequest:
    return InvalidRequest(
        f"plan version {v.version_id} exists already (versions are never edited); "
        "create the next version instead",
        param="version",
        code="plan_version_exists",
    )


LIMIT_COLUMNS = "subject, requests_per_min, tokens_per_min, ru_per_min"


def limits_row(subject: str, limits: Any) -> tuple[str, int | None, int | None, str | None, str]:
    """A ``rate_limits`` row (``billing.rate_limits.Limits``), stamped now."""
    from infermeter.core.records import utc_now

    ru = None if limits.ru_per_min is None else str(limits.ru_per_min)
    return (subject, limits.requests_per_min, limits.tokens_per_min, ru, iso(utc_now()))


class PlanBook:
    """Every plan version and assignment, answering "what price at time t" (pure)."""

    def __init__(
        self,
        default: PricePlan,
        versions: Iterable[PlanVersion] = (),
        assignments: Iterable[PlanAssignment] = (),
    ) -> None:
        self.default = default
        self._versions: dict[str, list[PlanVersion]] = {}
        for v in sorted(versions, key=lambda v: (v.plan, v.effective_from, v.version)):
            self._versions.setdefault(v.plan, []).append(v)
        self._assignments: dict[str, list[PlanAssignment]] = {}
        for a in sorted(assignments, key=lambda a: (a.tenant_id, a.effective_from, a.created_at)):
            self._assignments.setdefault(a.tenant_id, []).append(a)

    def versions(self, plan: str | None = None) -> list[PlanVersion]:
        if plan is not None:
            return list(self._versions.get(plan, ()))
        return [v for name in sorted(self._versions) for v in self._versions[name]]

    def assignments(self, tenant_id: str | None = None) -> list[PlanAssignment]:
        if tenant_id is not None:
            return list(self._assignments.get(tenant_id, ()))
        return [a for t in sorted(self._assignments) for a in self._assignments[t]]

    def plan_at(self, tenant_id: str, at: datetime) -> PricePlan:
        """The tenant's price plan in effect at ``at`` (the default plan when it has none yet)."""
        plan = None
        for a in self._assignments.get(tenant_id, ()):
            if a.effective_from <= at:
                plan = a.plan
        if plan is None:
            return self.default
        current = None
        for v in self._versions.get(plan, ()):
            if v.effective_from <= at:
                current = v
        return self.default if current is None else current.price_plan()

    def quote(self, tenant_id: str, tier: ServiceTier, at: datetime, multiplier: Decimal = ONE) -> Quote:
        plan = self.plan_at(tenant_id, at)
        if ServiceTier(tier) not in plan.per_1000_ru:
            priced = ", ".join(sorted(plan.per_1000_ru))
            raise InvalidRequest(
                f"service_tier={str(tier)!r} is not offered to tenant {tenant_id!r}: its plan "
                f"{plan.version} prices only {priced}; send one of those, or give the plan a "
                f"{str(tier)!r} price (`infermeter plans create <plan> --price {tier}=<per 1000 RU>`)",
                param="service_tier",
                code="service_tier_unavailable",
            )
        return Quote(plan.version, plan.currency, ServiceTier(tier), plan.price(tier), multiplier)

    def list_price(self, version_id: str, tier: ServiceTier) -> Decimal | None:
        """The price per 1,000 RU of ``tier`` in plan version ``version_id`` (None if unknown)."""
        if version_id == self.default.version:
            return self.default.per_1000_ru.get(tier)
        name, _, number = version_id.rpartition(".v")
        for v in self._versions.get(name, ()):
            if str(v.version) == number:
                return v.per_1000_ru.get(tier)
        return None

    def next_version(self, plan: str, currency: str, effective_from: datetime) -> int:
        """The number the next version of ``plan`` gets; InvalidRequest if it would break order."""
        existing = self._versions.get(plan, [])
        if existing:
            last = existing[-1]
            if currency != last.currency:
                raise InvalidRequest(
                    f"plan {plan!r} is priced in {last.currency}; a new version cannot change the "
                    f"currency to {currency}: create a new plan for {currency}",
                    param="currency",
                )
            if effective_from <= last.effective_from:
                raise InvalidRequest(
                    f"effective_from={iso(effective_from)} is not after {last.version_id}'s "
                    f"{iso(last.effective_from)}; a new version takes effect after the last one",
                    param="effective_from",
                )
            return max(v.version for v in existing) + 1
        return 1

    def check_assignable(self, plan: str) -> None:
        if plan not in self._versions:
            known = ", ".join(sorted(self._versions)) or "none yet"
            raise InvalidRequest(
                f"no plan named {plan!r} (plans: {known}); create it with `infermeter plans create`",
                param="plan",
            )


__all__ = [
    "ASSIGNMENT_COLUMNS",
    "ONE",
    "VERSION_COLUMNS",
    "PlanAssignment",
    "PlanBook",
    "PlanVersion",
    "Quote",
    "assignment_from_row",
    "assignment_row",
    "check_future",
    "check_name",
    "parse_prices",
    "parse_time",
    "plan_file",
    "plan_version_taken",
    "version_from_row",
    "version_row",
]
