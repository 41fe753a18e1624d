"""The store protocol: tenants, API keys, budgets and the append-only usage ledger.

SQLite (``billing.sqlite_store``) is the embedded default; PostgreSQL (``billing.pg_store``) is behind the
same protocol. Every method is safe to call from any thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from infermeter.billing.plans import PlanAssignment, PlanVersion
from infermeter.billing.rate_limits import Limits
from infermeter.billing.reservations import Commitment
from infermeter.core.errors import InvalidRequest
from infermeter.core.records import UsageRecord, iso


@dataclass(frozen=True, slots=True)
class Tenant:
    tenant_id: str
    name: str
    created_at: datetime
    budget: Decimal | None  # spend limit in the plan's currency; None = unlimited


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str  # public, e.g. "key_..."; the secret is never stored
    tenant_id: str | None  # None for admin keys
    admin: bool
    created_at: datetime
    revoked_at: datetime | None
    prefix: str  # first characters of the secret, to help people tell keys apart


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The outcome of an append: ``created`` is False when the request id was already recorded."""

    record: UsageRecord  # the stored record (the first one, for a repeat)
    seq: int  # ledger position (0-based leaf index)
    entry_hash: str
    created: bool


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    entries: int
    first_bad_seq: int | None
    first_bad_record_id: str | None
    message: str


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One group of ``usage_summary``: key is a day (YYYY-MM-DD), model, or tier."""

    key: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    device_us: int
    ru_micros: int
    cost: Decimal


AppendCallback = Callable[[AppendResult | BaseException], None]


class Store(Protocol):
    # tenants and keys ------------------------------------------------------
    def create_tenant(self, name: str, budget: Decimal | None = None) -> Tenant: ...

    def get_tenant(self, tenant_id: str) -> Tenant | None: ...

    def find_tenant(self, name_or_id: str) -> Tenant | None: ...

    def list_tenants(self) -> list[Tenant]: ...

    def set_budget(self, tenant_id: str, budget: Decimal | None) -> Tenant: ...

    def create_key(self, tenant_id: str | None, *, admin: bool = False) -> tuple[ApiKey, str]:
        """Make a key; returns it and its secret, which is shown once and stored only hashed."""
        ...

    def revoke_key(self, key_id: str) -> ApiKey: ...

    def lookup_key(self, secret: str) -> ApiKey | None:
        """The key whose hash matches ``secret`` (revoked keys included; callers check)."""
        ...

    def list_keys(self, tenant_id: str | None = None) -> list[ApiKey]: ...

    # price plans (billing.plans): rows only ever added -------------------------
    def add_plan_version(self, version: PlanVersion) -> PlanVersion: ...

    def list_plan_versions(self) -> list[PlanVersion]: ...

    def add_plan_assignment(self, assignment: PlanAssignment) -> PlanAssignment: ...

    def list_plan_assignments(self) -> list[PlanAssignment]: ...

    # commitments (billing.reservations): rows only ever added
    def add_commitment(self, commitment: Commitment) -> Commitment: ...

    def list_commitments(self, tenant_id: str | None = None) -> list[Commitment]: ...

    # rate limits (billing.rate_limits): subject "tenant:<id>" or "key:<id>" -> limits
    def set_rate_limits(self, subject: str, limits: Limits) -> None:
        """Replace the subject's limits (empty limits remove them)."""
        ...

    def list_rate_limits(self) -> dict[str, Limits]: ...

    # the ledger -----------------------------------------------------------
    def append(self, records: Sequence[UsageRecord]) -> list[AppendResult]:
        """Append in one transaction, idempotent on request id (and record id); durable on return."""
        ...

    def submit(self, record: UsageRecord, callback: AppendCallback) -> None:
        """Queue an append for the writer thread's next group commit; ``callback`` runs after commit."""
        ...

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything submitted so far is committed."""
        ...

    def health(self) -> str | None:
        """None while ledger appends commit; else the cause of the last failed commit."""
        ...

    def probe(self) -> str | None:
        """Try a real write now (adds no entry); clears or sets ``health()``, returns it."""
        ...

    def get_record(self, record_id: str) -> UsageRecord | None: ...

    def in_transit(self, record_or_request_id: str) -> str | None:
        """The tenant of a record this process accepted that the ledger does not hold yet
        (cluster mode: still in the worker's outbox); None otherwise."""
        ...

    def get_by_request(self, request_id: str) -> UsageRecord | None: ...

    def list_records(
        self,
        tenant_id: str | None,
        *,
        limit: int = 50,
        after_seq: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        include_warmup: bool = False,
    ) -> list[tuple[int, UsageRecord]]:
        """Records in ledger order (oldest first) after ``after_seq``; ``None`` tenant = all."""
        ...

    def usage_summary(
        self,
        tenant_id: str | None,
        group_by: str,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[UsageRow]: ...

    def spent(self, tenant_id: str) -> Decimal:
        """Σ cost of the tenant's ledger entries (corrections included)."""
        ...

    def ledger_size(self) -> int: ...

    def verify(self) -> VerifyReport: ...

    def close(self) -> None: ...


def event_time(name: str, value: datetime | None) -> str | None:
    """A ``start``/``end`` bound as the ledger's ISO text; a naive datetime is refused."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise InvalidRequest(
            f"{name}={value.isoformat()} has no time zone; pass an aware datetime, "
            "e.g. datetime(2026, 1, 1, tzinfo=UTC)",
            param=name,
        )
    return iso(value)


def ledger_filter(
    tenant_id: str | None, start: datetime | None, end: datetime | None, warmup: bool, mark: str
) -> tuple[str, list[Any]]:
    """The WHERE clause (and its arguments) both stores use to read ledger rows; ``mark`` is the
    driver's placeholder (``?`` for SQLite, ``%s`` for psycopg)."""
    clauses, args = ["1 = 1"], []
    for clause, value in (
        ("tenant_id = ", tenant_id),
        ("event_time >= ", event_time("start", start)),
        ("event_time < ", event_time("end", end)),
    ):
        if value is not None:
            clauses.append(clause + mark)
            args.append(value)
    if not warmup:
        clauses.append("warmup = 0")
    return " AND ".join(clauses), args
