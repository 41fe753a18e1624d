"""``BudgetBook`` on PostgreSQL: one tenant limit enforced across every worker at once.

Each reservation is one call of a server-side function (``billing.pg_budget_schema``) that
locks the tenant's account row, checks ``spent + reserved + amount <= limit`` and adds
the grant, so no two workers can both take the last of a budget. ``extend`` (a running
request's cap) and ``settle``/``release`` are one call each as well. ``spent`` moves only
in the ledger append's own transaction, so it is always Σ cost of the tenant's ledger
entries; a settled reservation keeps counting the request until its record is appended.

A worker holds a lease in ``budget_workers``, renewed every ``heartbeat_s``; a keeper
thread also sweeps: it releases the unsettled reservations of every worker whose lease ran
out (it was killed), once this worker itself has held the database for a whole lease
(after an outage every live worker gets that long to renew before anyone sweeps). A
settle or release that fails (the database is down) is retried by the keeper.

A tenant with no limit needs no reservation: once the database says a tenant is
unlimited, requests of that tenant are admitted without a round trip for
``unlimited_ttl_s``. While the database is unreachable, a tenant with a limit is refused
with a 503 (its shared budget cannot be checked); calls fail fast for ``retry_s``
after a failed connection instead of waiting on the network each time.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import psycopg

from infermeter.billing.budgets import Grant, exceeded
from infermeter.billing.pg_store import redact
from infermeter.core.errors import InvalidRequest, Unavailable
from infermeter.core.money import to_decimal

log = logging.getLogger(__name__)
T = TypeVar("T")


def worker_name(port: int | str) -> str:
    """A name for this process that no other process, nor a later run of this one, shares."""
    return f"{socket.gethostname()}-{port}-{os.getpid()}-{secrets.token_hex(3)}"


class PgBudgets:
    """Shared tenant budgets in the billing database; thread-safe. ``start`` runs the keeper."""

    def __init__(
        self,
        url: str,
        worker: str,
        *,
        default_limit: Decimal | None = None,
        lease_s: float = 15.0,
        heartbeat_s: float = 2.0,
        settled_hold_s: float = 86_400.0,
        unlimited_ttl_s: float = 5.0,
        retry_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.worker = worker
        self.default_limit = default_limit
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self.settled_hold_s = settled_hold_s
        self.unlimited_ttl_s = unlimited_ttl_s
        self.retry_s = retry_s
        self._clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[psycopg.Connection[Any]] = []
        self._held: dict[str, str] = {}  # request id -> tenant, for requests holding a row
        self._unlimited: dict[str, float] = {}  # tenant -> when the database said "no limit"
        self._retry: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._down_until = 0.0
        self._healthy_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.swept = 0  # reservations this worker's keeper released for dead workers
        self._heartbeat()  # the lease exists before the first reservation names this worker

    # the database -----------------------------------------------------------------
    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=3)
            with self._lock:
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    def _call(self, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """One statement, one row; Unavailable (503) when the database does not answer."""
        if self._clock() < self._down_until:
            raise self._unavailable("it failed less than a second ago")
        try:
            row = self._conn().execute(sql, args).fetchone()
        except psycopg.OperationalError as exc:
            self._down_until = self._clock() + self.retry_s
            self._healthy_since = None
            raise self._unavailable(" ".join(str(exc).split())) from None
        assert row is not None
        return tuple(row)

    def _unavailable(self, why: str) -> Unavailable:
        return Unavailable(
            f"the shared budget database at {redact(self.url)} does not answer ({why}); a tenant with "
            "a spend limit cannot be admitted until it does; retry in a few seconds",
            code="budget_unavailable",
        )

    # BudgetBook -----------------------------------------------------------------------
    def reserve_up_to(self, tenant_id: str, request_id: str, amount: Decimal, minimum: Decimal) -> Grant:
        amount, minimum = to_decimal(amount), to_decimal(minimum)
        if amount < 0 or minimum < 0:
            raise ValueError(
                f"reservation for {request_id} is {amount} (minimum {minimum}); both must be >= 0"
            )
        said = self._unlimited.get(tenant_id)
        if said is not None and self._clock() - said < self.unlimited_ttl_s:
            return Grant(amount, False)
        try:
            granted, limit, spent, reserved = self._call(
                "SELECT * FROM im_budget_reserve(%s, %s, %s, %s, %s, %s)",
                (tenant_id, request_id, amount, minimum, self.default_limit, self.worker),
            )
        except psycopg.errors.UniqueViolation:
            raise InvalidRequest(
                f"request id {request_id!r} already has a budget reservation; give every request a new id",
                param="request_id",
            ) from None
        if limit is None:
            self._unlimited[tenant_id] = self._clock()
            return Grant(amount, False)
        self._unlimited.pop(tenant_id, None)
        if granted is None:
            raise exceeded(tenant_id, Decimal(limit), Decimal(spent), Decimal(reserved), min(minimum, amount))
        with self._lock:
            self._held[request_id] = tenant_id
        return Grant(Decimal(granted), True)

    def extend(self, request_id: str, want: Decimal, minimum: Decimal) -> Decimal:
        want, minimum = to_decimal(want), to_decimal(minimum)
        if want <= 0 or request_id not in self._held:
            return Decimal(0)
        try:
            (grown,) = self._call(
                "SELECT im_budget_extend(%s, %s, %s, %s)", (request_id, want, minimum, self.default_limit)
            )
        except Unavailable:
            return Decimal(0)  # the cap stops the request where it is
        return Decimal(grown)

    def settle(self, request_id: str, actual: Decimal) -> bool:
        actual = to_decimal(actual)
        with self._lock:
            if self._held.pop(request_id, None) is None:
                return False  # unlimited, or already settled or released
        return self._finish("SELECT im_budget_settle(%s, %s)", (request_id, actual))

    def release(self, request_id: str) -> bool:
        with self._lock:
            if self._held.pop(request_id, None) is None:
                return False
        return self._finish("SELECT im_budget_release(%s)", (request_id,))

    def _finish(self, sql: str, args: tuple[Any, ...]) -> bool:
        try:
            (done,) = self._call(sql, args)
        except Unavailable as exc:
            log.warning("budget update deferred until the database answers: %s", exc)
            with self._lock:
                self._retry.append((sql, args))
            return True
        return bool(done)

    def adjust(self, tenant_id: str, delta: Decimal) -> None:
        """Nothing to do: the correction's append moved the tenant's spent in its transaction."""

    def snapshot(self, tenant_id: str) -> tuple[Decimal | None, Decimal, Decimal]:
        limit, spent, reserved = self._call(
            "SELECT COALESCE((SELECT budget::numeric FROM tenants WHERE tenant_id = %s), "
            "CASE WHEN EXISTS (SELECT 1 FROM tenants WHERE tenant_id = %s) THEN NULL ELSE %s::numeric END), "
            "COALESCE((SELECT spent FROM budget_accounts WHERE tenant_id = %s), 0), "
            "COALESCE((SELECT reserved FROM budget_accounts WHERE tenant_id = %s), 0)",
            (tenant_id, tenant_id, self.default_limit, tenant_id, tenant_id),
        )
        return (None if limit is None else Decimal(limit)), Decimal(spent), Decimal(reserved)

    def refresh(self, tenant_id: str, *, spent: bool = False) -> None:
        """Forget that the tenant was unlimited: its next request asks the database."""
        self._unlimited.pop(tenant_id, None)

    def reserved_for(self, request_id: str) -> Decimal | None:
        row = self._call(
            "SELECT (SELECT amount FROM budget_reservations WHERE request_id = %s)", (request_id,)
        )
        return None if row[0] is None else Decimal(row[0])

    # the keeper: lease, sweep, retries --------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="infermeter-budget-keeper", daemon=True)
            self._thread.start()

    def _heartbeat(self) -> None:
        self._call(
            "INSERT INTO budget_workers (worker, lease_until) VALUES (%s, now() + make_interval(secs => %s)) "
            "ON CONFLICT (worker) DO UPDATE SET lease_until = EXCLUDED.lease_until RETURNING 1",
            (self.worker, self.lease_s),
        )
        if self._healthy_since is None:
            self._healthy_since = self._clock()

    def sweep(self) -> int:
        """Release what dead workers held (see the module docstring); the number released."""
        (n,) = self._call("SELECT im_budget_sweep(make_interval(secs => %s))", (self.settled_hold_s,))
        self.swept += int(n)
        if n:
            log.warning("released %d budget reservation(s) of workers whose lease ran out", n)
        return int(n)

    def tick(self) -> None:
        """One keeper round: renew the lease, retry deferred updates, sweep when safe."""
        self._heartbeat()
        while self._retry:
            sql, args = self._retry[0]
            self._call(sql, args)
            self._retry.popleft()
        since = self._healthy_since
        if since is not None and self._clock() - since >= self.lease_s:
            self.sweep()

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.tick()
            except Unavailable as exc:
                log.warning("budget keeper: %s", exc)
            except Exception:  # the keeper must outlive any one failure
                log.exception("budget keeper round failed")

    def close(self) -> None:
        """Stop the keeper; give back what this worker still holds; end its lease. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            while self._retry:
                sql, args = self._retry.popleft()
                self._call(sql, args)
            for request_id in list(self._held):
                self.release(request_id)
            self._call(
                "UPDATE budget_workers SET lease_until = now() - interval '1 second' WHERE worker = %s "
                "RETURNING 1",
                (self.worker,),
            )
        except (Unavailable, AssertionError):
            log.warning("budget database unreachable at close; the sweeper releases this worker's holds")
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()


__all__ = ["PgBudgets", "worker_name"]
