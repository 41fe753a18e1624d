"""Serving side of rate limits: the configured limits, cached, and the buckets of each subject.

Limits are read from the store at most every ``RELOAD_S`` seconds (``infermeter limits set``
may run in another process) and at once after a change through this process. Buckets live
in this process's memory: with several servers each enforces the limits on its own share.
"""

from __future__ import annotations

import threading
import time

from infermeter.billing.rate_limits import Headroom, Limits, RateLimiter, Subject
from infermeter.billing.store import ApiKey, Store

RELOAD_S = 1.0


class RateLimits:
    def __init__(self, store: Store, reload_s: float = RELOAD_S) -> None:
        self.store = store
        self.reload_s = reload_s
        self.limiter = RateLimiter(lambda: time.monotonic_ns() // 1_000_000)
        self._lock = threading.Lock()
        self._limits: dict[str, Limits] | None = None
        self._loaded = 0.0

    def limits(self) -> dict[str, Limits]:
        now = time.monotonic()
        with self._lock:
            if self._limits is None or now - self._loaded >= self.reload_s:
                self._limits = self.store.list_rate_limits()
                self._loaded = now
            return self._limits

    def invalidate(self) -> None:
        with self._lock:
            self._limits = None

    def subjects(self, key: ApiKey) -> list[Subject]:
        configured = self.limits()
        if not configured:
            return []
        names = [f"tenant:{key.tenant_id}", f"key:{key.key_id}"]
        return [(n, configured[n]) for n in names if n in configured]

    def admit(self, subjects: list[Subject], tokens: int) -> Headroom | None:
        """None when the key and its tenant have no limits; else the headers; or RateLimited."""
        if not subjects:
            return None
        return self.limiter.admit(subjects, tokens)

    def charge_ru(self, subjects: list[Subject], ru_micros: int) -> None:
        if subjects:
            self.limiter.charge_ru(subjects, ru_micros)


__all__ = ["RateLimits"]
