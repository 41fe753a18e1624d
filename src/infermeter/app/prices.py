"""The serving side of price plans: the plan book, cached, and the quote of each request.

Plan versions and assignments are read from the store and kept in memory; the copy is
reloaded at most every ``RELOAD_S`` seconds (another process, e.g. ``infermeter plans
create``, may have added rows) and at once after a change through this process. Commitments
(``billing.reservations``) are reloaded with them, for each tenant's scheduling weight. A
request is quoted at admission and priced with that quote however long it queues or runs.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from fractions import Fraction

from infermeter.billing.plan_registry import load_book
from infermeter.billing.plans import PlanBook, Quote
from infermeter.billing.pricing import PricePlan
from infermeter.billing.reservations import Commitment, scheduling_weight
from infermeter.billing.store import Store
from infermeter.core.records import utc_now
from infermeter.core.types import ServiceTier

RELOAD_S = 1.0


class Prices:
    def __init__(self, store: Store, default: PricePlan, reload_s: float = RELOAD_S) -> None:
        self.store = store
        self.default = default
        self.reload_s = reload_s
        self._lock = threading.Lock()
        self._book: PlanBook | None = None
        self._commitments: list[Commitment] = []
        self._loaded = 0.0

    def book(self) -> PlanBook:
        now = time.monotonic()
        book = self._book
        if book is None or now - self._loaded >= self.reload_s:
            with self._lock:
                if self._book is None or now - self._loaded >= self.reload_s:
                    self._book = load_book(self.store, self.default)
                    self._commitments = self.store.list_commitments()
                    self._loaded = now
                book = self._book
        return book

    def invalidate(self) -> None:
        with self._lock:
            self._book = None

    def quote(self, tenant_id: str, tier: ServiceTier, at: datetime | None = None) -> Quote:
        return self.book().quote(tenant_id, tier, utc_now() if at is None else at)

    def weight(self, tenant_id: str, at: datetime) -> Fraction:
        """The tenant's fair-share weight at ``at`` (a reservation raises it)."""
        self.book()  # reloads commitments with the plans
        return Fraction(scheduling_weight(self._commitments, tenant_id, at))

    def plan_at(self, tenant_id: str, at: datetime) -> PricePlan:
        return self.book().plan_at(tenant_id, at)


__all__ = ["RELOAD_S", "Prices"]
