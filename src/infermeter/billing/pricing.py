"""Price plans: a versioned price per 1,000 RU for each service tier. Pure and exact.

cost = ru_micros x price_per_1000_ru / 10^9, an exact Decimal with no rounding: micro-RU are
integers and a price has finitely many decimals, so the product is exact. Rounding to the
currency's minor unit happens once per invoice line (``billing.invoices``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import (
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
)
from typing import Any

from infermeter.core.errors import ConfigError
from infermeter.core.types import ServiceTier

EXACT = Context(prec=200, traps=[Inexact, Rounded, InvalidOperation, DivisionByZero, Overflow])
"""A Decimal context for money sums and products that raises rather than round."""

_CURRENCY = re.compile(r"^[A-Z]{3}$")


def _price(version: str, tier: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | str | int):
        raise ConfigError(
            f"price plan {version!r}: price for tier {tier!r} is {value!r}; "
            'give a decimal string such as "0.0020" (never a float)'
        )
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise ConfigError(
            f"price plan {version!r}: price for tier {tier!r} is {value!r}, not a decimal number"
        ) from None
    if not price.is_finite() or price < 0:
        raise ConfigError(
            f"price plan {version!r}: price for tier {tier!r} is {value!r}; "
            "it must be a finite, non-negative decimal"
        )
    return price


@dataclass(frozen=True)
class PricePlan:
    """A versioned price list in one currency: the price of 1,000 RU per service tier."""

    version: str
    currency: str
    per_1000_ru: Mapping[ServiceTier, Decimal]

    def __post_init__(self) -> None:
        if not self.version:
            raise ConfigError("price plan version must be a non-empty string, e.g. 'plan-2026-11'")
        if not _CURRENCY.match(self.currency):
            raise ConfigError(
                f"price plan {self.version!r}: currency {self.currency!r} is not an ISO 4217 "
                "code; use three capital letters such as USD"
            )
        prices: dict[ServiceTier, Decimal] = {}
        for tier, value in self.per_1000_ru.items():
            try:
                key = ServiceTier(tier)
            except ValueError:
                raise ConfigError(
                    f"price plan {self.version!r}: unknown service tier {tier!r}; "
                    f"tiers are {', '.join(t.value for t in ServiceTier)}"
                ) from None
            prices[key] = _price(self.version, key.value, value)
        object.__setattr__(self, "per_1000_ru", prices)

    def price(self, tier: ServiceTier | str) -> Decimal:
        """The price of 1,000 RU in ``tier``; ConfigError naming the plan's tiers if absent."""
        try:
            price = self.per_1000_ru.get(ServiceTier(tier))
        except ValueError:
            price = None
        if price is None:
            raise ConfigError(
                f"price plan {self.version!r} has no price for tier {str(tier)!r}; "
                f"it prices {', '.join(sorted(self.per_1000_ru))}"
            )
        return price

    def cost(self, ru_micros: int, tier: ServiceTier | str, *, warmup: bool = False) -> Decimal:
        """Exact cost of ``ru_micros`` micro-RU in ``tier`` (linear, no rounding); warmup is 0."""
        if type(ru_micros) is not int:
            raise TypeError(
                f"ru_micros must be an int (micro-RU), got {ru_micros!r}; "
                "convert RU with RuTable.ru_micros, never via a float"
            )
        price = self.price(tier)
        if warmup:
            return Decimal(0)
        return EXACT.multiply(Decimal(ru_micros), price).scaleb(-9, EXACT)

    def to_json(self) -> dict[str, Any]:
        """``{"version", "currency", "per_1000_ru": {tier: "decimal string"}}``."""
        return {
            "version": self.version,
            "currency": self.currency,
            "per_1000_ru": {tier.value: str(price) for tier, price in sorted(self.per_1000_ru.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> PricePlan:
        """Inverse of ``to_json``; accepts the dict or its JSON text. Prices must be strings."""
        obj = json.loads(data) if isinstance(data, str) else data
        prices = obj["per_1000_ru"]
        for tier, value in prices.items():
            if not isinstance(value, str):
                raise ConfigError(
                    f"price plan {obj.get('version')!r}: price for tier {tier!r} is {value!r}; "
                    'store prices as decimal strings such as "0.0020"'
                )
        return cls(str(obj["version"]), str(obj["currency"]), prices)


DEFAULT_PLAN = PricePlan(
    "plan-2026-11",
    "USD",
    # flex runs the INT8 economy engine: it takes fewer device-ms (fewer RU) and each RU is
    # cheaper, at a lower scheduling priority. priority runs ahead of default at twice its price.
    {
        ServiceTier.DEFAULT: Decimal("0.0020"),
        ServiceTier.FLEX: Decimal("0.0010"),
        ServiceTier.PRIORITY: Decimal("0.0040"),
    },
)

__all__ = ["DEFAULT_PLAN", "EXACT", "PricePlan"]
