"""Tenant spend limits, enforced by reserve-then-settle.

At admission a request reserves an amount; it is admitted only if
spent + reserved + amount <= limit. ``reserve_up_to`` grants less than asked when less is
left (down to a stated minimum), and the request runs under that amount as its cost cap;
``extend`` grows a running request's reservation when its cap would stop it and the
tenant still has budget. When its usage record is durable the reservation is settled to
the measured cost (reserved -= reservation, spent += actual); a request that fails before
billing releases its reservation. Settle and release are idempotent on the request id, so
a retried callback never charges twice.

Design: embedded, single process. A tenant's spent total is loaded once from the store
(``spent_of``) and then maintained in memory under one lock; it stays right because every
billed record of this process passes through ``settle``, and every correction issued by
this process through ``adjust`` (its delta applied under the lock: re-reading spent would
miss or double-count records between their ledger append and their settle). A limit
changed elsewhere (the CLI) is re-read at most ``limit_ttl_s`` after the change.

``BudgetBook`` is the interface the service uses; ``Budgets`` implements it for one process.
On PostgreSQL, ``billing.pg_budgets.PgBudgets`` implements it with the accounts and
reservations in the database, so several processes share one limit.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from infermeter.core.errors import BudgetExceeded, InvalidRequest
from infermeter.core.money import format_decimal, to_decimal

# How many finished request ids to remember for idempotency; older repeats are caught by
# the ledger's own idempotency on request id.
FINISHED_MEMORY = 100_000


@dataclass(slots=True)
class _Account:
    limit: Decimal | None
    spent: Decimal
    reserved: Decimal


@dataclass(frozen=True, slots=True)
class Grant:
    """What ``reserve_up_to`` reserved: ``amount``; ``capped`` is False for an unlimited tenant."""

    amount: Decimal
    capped: bool


class BudgetBook(Protocol):
    """Reserve at admission, extend for a running cap, settle or release at the end."""

    def reserve_up_to(self, tenant_id: str, request_id: str, amount: Decimal, minimum: Decimal) -> Grant: ...

    def extend(self, request_id: str, want: Decimal, minimum: Decimal) -> Decimal: ...

    def settle(self, request_id: str, actual: Decimal) -> bool: ...

    def release(self, request_id: str) -> bool: ...

    def adjust(self, tenant_id: str, delta: Decimal) -> None: ...

    def snapshot(self, tenant_id: str) -> tuple[Decimal | None, Decimal, Decimal]: ...

    def refresh(self, tenant_id: str, *, spent: bool = False) -> None: ...

    def reserved_for(self, request_id: str) -> Decimal | None: ...

    def start(self) -> None: ...

    def close(self) -> None: ...


def exceeded(
    tenant_id: str, limit: Decimal, spent: Decimal, reserved: Decimal, minimum: Decimal
) -> BudgetExceeded:
    """The 402 for a request whose minimum (its prompt and one token) does not fit."""
    return BudgetExceeded(
        f"tenant {tenant_id} budget exceeded: limit {format_decimal(limit)}, "
        f"spent {format_decimal(spent)}, reserved (in flight) "
        f"{format_decimal(reserved)}, this request needs at least "
        f"{format_decimal(minimum)} (its prompt and one token). Ask an admin to "
        "raise the budget, wait for in-flight requests to finish, or shorten the prompt"
    )


def _amount(value: Decimal, what: str) -> Decimal:
    amount = to_decimal(value)  # refuses floats
    if not amount.is_finite():
        raise ValueError(f"{what} must be a finite Decimal, got {amount}")
    return amount


class Budgets:
    """Thread-safe tenant spend limits: ``reserve`` at admission, ``settle``/``release`` after."""

    def __init__(
        self,
        spent_of: Callable[[str], Decimal],
        limit_of: Callable[[str], Decimal | None],
        *,
        limit_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spent_of = spent_of
        self._limit_of = limit_of
        # A limit changed elsewhere (`infermeter tenants budget` while serving) takes effect
        # within this many seconds: one indexed read per tenant per period, not per request.
        self._limit_ttl_s = limit_ttl_s
        self._clock = clock
        self._limit_read: dict[str, float] = {}
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}
        self._reservations: dict[str, tuple[str, Decimal]] = {}  # request -> (tenant, amount)
        self._finished: OrderedDict[str, None] = OrderedDict()

    def _account(self, tenant_id: str) -> _Account:
        """The tenant's account, loading it from the store on first use."""
        with self._lock:
            account = self._accounts.get(tenant_id)
        if account is not None:
            now = self._clock()
            if now - self._limit_read.get(tenant_id, now) >= self._limit_ttl_s:
                limit = self._limit_of(tenant_id)
                with self._lock:
                    account.limit = None if limit is None else _amount(limit, "limit")
                    self._limit_read[tenant_id] = now
            return account
        # Load outside the lock so a slow store never blocks other tenants; the first loader
        # to finish wins, and nothing can settle for a tenant before its account exists.
        limit = self._limit_of(tenant_id)
        loaded = _Account(
            None if limit is None else _amount(limit, "limit"),
            _amount(self._spent_of(tenant_id), "spent"),
            Decimal(0),
        )
        with self._lock:
            self._limit_read.setdefault(tenant_id, self._clock())
            return self._accounts.setdefault(tenant_id, loaded)

    def reserve(self, tenant_id: str, request_id: str, amount: Decimal) -> None:
        """Hold ``amount`` for the request if it fits the limit, else raise BudgetExceeded."""
        amount = _amount(amount, "reservation amount")
        if amount < 0:
            raise ValueError(f"reservation for {request_id} is {amount}; it must be >= 0")
        account = self._account(tenant_id)
        with self._lock:
            self._check_new(request_id)
            limit = account.limit
            if limit is not None and account.spent + account.reserved + amount > limit:
                raise BudgetExceeded(
                    f"tenant {tenant_id} budget exceeded: limit {format_decimal(limit)}, "
                    f"spent {format_decimal(account.spent)}, reserved (in flight) "
                    f"{format_decimal(account.reserved)}, this request needs up to "
                    f"{format_decimal(amount)}. Ask an admin to raise the budget, wait for "
                    "in-flight requests to finish, or lower max_tokens"
                )
            account.reserved += amount
            self._reservations[request_id] = (tenant_id, amount)

    def reserve_up_to(self, tenant_id: str, request_id: str, amount: Decimal, minimum: Decimal) -> Grant:
        """Hold ``amount``, or what is left of the limit if that is less but at least ``minimum``.

        The grant is the request's cost cap when ``capped``. Raises BudgetExceeded when not even
        ``minimum`` fits.
        """
        amount, minimum = _amount(amount, "reservation amount"), _amount(minimum, "minimum")
        if amount < 0 or minimum < 0:
            raise ValueError(
                f"reservation for {request_id} is {amount} (minimum {minimum}); both must be >= 0"
            )
        minimum = min(minimum, amount)
        account = self._account(tenant_id)
        with self._lock:
            self._check_new(request_id)
            limit = account.limit
            granted = amount
            if limit is not None:
                left = limit - account.spent - account.reserved
                if left < minimum:
                    raise exceeded(tenant_id, limit, account.spent, account.reserved, minimum)
                granted = min(amount, left)
            account.reserved += granted
            self._reservations[request_id] = (tenant_id, granted)
            return Grant(granted, limit is not None)

    def extend(self, request_id: str, want: Decimal, minimum: Decimal) -> Decimal:
        """Grow a held reservation by ``want``, or by what is left if at least ``minimum``.

        Returns the amount added (0 when not even ``minimum`` fits or the request holds no
        reservation). Runs on the worker thread when a request's cap would stop it.
        """
        want, minimum = _amount(want, "extension"), _amount(minimum, "minimum")
        with self._lock:
            held = self._reservations.get(request_id)
            if held is None or want <= 0:
                return Decimal(0)
            tenant_id, amount = held
            account = self._accounts[tenant_id]
            grow = want
            if account.limit is not None:
                grow = min(want, account.limit - account.spent - account.reserved)
                if grow < min(minimum, want) or grow <= 0:
                    return Decimal(0)
            account.reserved += grow
            self._reservations[request_id] = (tenant_id, amount + grow)
            return grow

    def adjust(self, tenant_id: str, delta: Decimal) -> None:
        """Add ``delta`` to the tenant's spent total (a correction: negative for a credit).

        Applied under the lock, so no settle is lost or counted twice. A tenant not loaded
        yet needs nothing: its first use reads the store, which already holds the correction.
        """
        delta = _amount(delta, "correction delta")
        with self._lock:
            account = self._accounts.get(tenant_id)
            if account is not None:
                account.spent += delta

    def _check_new(self, request_id: str) -> None:
        """Refuse a request id that already reserved (caller holds the lock)."""
        if request_id in self._reservations or request_id in self._finished:
            raise InvalidRequest(
                f"request id {request_id!r} already has a budget reservation; give every request a new id",
                param="request_id",
            )

    def _finish(self, request_id: str) -> tuple[_Account, Decimal] | None:
        """Drop the reservation (caller holds the lock); None if unknown or already finished."""
        held = self._reservations.pop(request_id, None)
        if held is None:
            return None
        tenant_id, amount = held
        account = self._accounts[tenant_id]
        account.reserved -= amount
        self._finished[request_id] = None
        if len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)
        return account, amount

    def settle(self, request_id: str, actual: Decimal) -> bool:
        """Replace the reservation by the measured cost; True if applied, False if a no-op.

        A second settle or release of the same request, or a request never reserved here,
        changes nothing.
        """
        actual = _amount(actual, "settled cost")
        with self._lock:
            done = self._finish(request_id)
            if done is None:
                return False
            done[0].spent += actual
            return True

    def release(self, request_id: str) -> bool:
        """Give the reservation back without charging; True if applied, False if a no-op."""
        with self._lock:
            return self._finish(request_id) is not None

    def snapshot(self, tenant_id: str) -> tuple[Decimal | None, Decimal, Decimal]:
        """(limit, spent, reserved) for the tenant; limit None means unlimited."""
        account = self._account(tenant_id)
        with self._lock:
            return account.limit, account.spent, account.reserved

    def refresh(self, tenant_id: str, *, spent: bool = False) -> None:
        """Reload the tenant's limit (after a change); with ``spent=True`` also its spent total.

        Reload spent only when no record of the tenant is between its ledger append and its
        settle (at start, in tests), or that record would be counted twice; a correction
        while serving uses ``adjust``.
        """
        with self._lock:
            loaded = tenant_id in self._accounts
        limit = self._limit_of(tenant_id)
        new_limit = None if limit is None else _amount(limit, "limit")
        new_spent = _amount(self._spent_of(tenant_id), "spent") if spent or not loaded else None
        with self._lock:
            account = self._accounts.get(tenant_id)
            if account is None:  # never loaded: accounts are only ever added, so new_spent is set
                assert new_spent is not None
                self._accounts[tenant_id] = _Account(new_limit, new_spent, Decimal(0))
                return
            account.limit = new_limit
            if new_spent is not None:
                account.spent = new_spent

    def reserved_for(self, request_id: str) -> Decimal | None:
        """The amount the request holds, or None if it holds no reservation."""
        with self._lock:
            held = self._reservations.get(request_id)
            return None if held is None else held[1]

    def start(self) -> None:
        """Nothing to start: one process, all in memory."""

    def close(self) -> None:
        """Nothing to close."""


__all__ = ["FINISHED_MEMORY", "BudgetBook", "Budgets", "Grant", "exceeded"]
