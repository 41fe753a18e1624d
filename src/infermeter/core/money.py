"""Money and quantities: never a float.

Per-record costs are exact Decimals (RU in integer micro-RU times a price with at most six
decimals is always exact), stored as decimal strings. Rounding to the currency's minor
unit happens once, per invoice line, half-up (away from zero) — see ``billing.invoices``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Self

MICRO = 1_000_000

# ISO 4217 minor units for the currencies a plan may use.
MINOR_UNITS: dict[str, int] = {"USD": 2, "EUR": 2, "GBP": 2, "JPY": 0, "CHF": 2}


def to_decimal(value: Decimal | int | str) -> Decimal:
    """Convert to Decimal, refusing floats, which cannot hold money exactly."""
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"money must not be a float or bool, got {value!r}; pass a str or Decimal")
    if isinstance(value, Decimal):
        return value
    return Decimal(value)


@dataclass(frozen=True, slots=True, order=True)
class Money:
    """An exact amount in one currency."""

    amount: Decimal
    currency: str = "USD"

    def __post_init__(self) -> None:
        object.__setattr__(self, "amount", to_decimal(self.amount))
        if not self.amount.is_finite():
            raise ValueError(f"money amount must be finite, got {self.amount}")

    @classmethod
    def zero(cls, currency: str = "USD") -> Self:
        return cls(Decimal(0), currency)

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise ValueError(f"cannot combine {self.currency} and {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def rounded(self) -> Money:
        """Round once to the currency's minor unit, half away from zero."""
        digits = MINOR_UNITS.get(self.currency, 2)
        quantum = Decimal(1).scaleb(-digits)
        return Money(self.amount.quantize(quantum, rounding=ROUND_HALF_UP), self.currency)

    def text(self) -> str:
        """The canonical decimal string (no exponent, trailing zeros trimmed to >= minor unit)."""
        return format_decimal(self.amount, MINOR_UNITS.get(self.currency, 2))


def format_decimal(value: Decimal, min_places: int = 0) -> str:
    """Render a Decimal without exponent, keeping at least ``min_places`` fraction digits."""
    # no normalize(): it rounds to the context's 28 digits; trimming the text never rounds
    text = format(value, "f")
    if "." in text:
        whole, frac = text.split(".")
    else:
        whole, frac = text, ""
    frac = frac.rstrip("0").ljust(min_places, "0")
    if whole in ("-0", "+0") and not frac.strip("0"):
        whole = "0"
    return f"{whole}.{frac}" if frac else whole


def micros_to_decimal(micros: int) -> Decimal:
    """Integer micro-units (of RU, or of a currency) to an exact Decimal."""
    return Decimal(micros).scaleb(-6)
