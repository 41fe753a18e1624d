"""Cluster mode's store: reads and admin writes on PostgreSQL, the request path via an outbox.

``submit`` (every finished request) commits the record to the worker's local outbox and
calls back once it is on disk, so a response never waits for NATS or PostgreSQL; the relay
carries it to the stream and the ingester into the ledger. Everything else — tenants, keys,
reads, and ``append`` (warm-up records, corrections: rare, and their callers need the ledger
position back) — goes straight to PostgreSQL. A submitted record is readable (usage,
invoices, receipts) once it has been ingested.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from infermeter.billing.outbox import Outbox
from infermeter.billing.pg_store import PgStore
from infermeter.billing.plans import PlanAssignment, PlanVersion
from infermeter.billing.rate_limits import Limits
from infermeter.billing.relay import Relay
from infermeter.billing.reservations import Commitment
from infermeter.billing.sqlite_store import PROBE_MIN_FREE
from infermeter.billing.store import ApiKey, AppendCallback, AppendResult, Tenant, UsageRow, VerifyReport
from infermeter.core.records import UsageRecord


class QueuedStore:
    """``Store`` for a worker: ``PgStore`` + ``Outbox`` + ``Relay`` (started here)."""

    def __init__(self, db_url: str, queue_url: str, outbox_path: Path, worker: str) -> None:
        self.pg = PgStore(db_url)
        self.url = db_url
        self.outbox = Outbox(outbox_path)
        self.relay = Relay(self.outbox, queue_url, self.pg.has_records, worker)
        self.relay.start()

    # the request path -----------------------------------------------------------------
    def submit(self, record: UsageRecord, callback: AppendCallback) -> None:
        self.outbox.submit(record, callback)

    def flush(self, timeout: float | None = None) -> None:
        self.outbox.flush(timeout)
        self.pg.flush(timeout)

    def health(self) -> str | None:
        """The outbox's health: a worker keeps serving while PostgreSQL or NATS are down."""
        return self.outbox.fault

    def probe(self) -> str | None:
        """The outbox answers a write now (PostgreSQL and NATS are the relay's business)."""
        free = shutil.disk_usage(self.outbox.path.parent).free
        if free < PROBE_MIN_FREE:
            self.outbox.fault = f"only {free:,} bytes free on the disk holding {self.outbox.path}"
            return self.outbox.fault
        try:
            self.outbox.flush(timeout=5)
        except Exception as exc:
            self.outbox.fault = f"the outbox {self.outbox.path} does not answer: {exc}"
        else:
            self.outbox.fault = None
        return self.outbox.fault

    def in_transit(self, record_or_request_id: str) -> str | None:
        """The tenant of a record in this worker's outbox, not yet seen in the ledger."""
        return self.outbox.tenant_of(record_or_request_id)

    def outbox_depth(self) -> int:
        """Records in the outbox not yet seen in the ledger (a counter, no query)."""
        return self.outbox.rows

    def relay_lag_s(self) -> float:
        """Seconds since the oldest outbox record's request ended; 0.0 when the outbox is empty."""
        oldest = self.outbox.oldest_end()
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def queue_problem(self, max_outbox: int) -> str | None:
        """Why this worker should take no new requests: its outbox reached ``max_outbox``
        (0 = no bound) because NATS, the ingester or PostgreSQL has not drained it."""
        depth = self.outbox.rows
        if not max_outbox or depth < max_outbox:
            return None
        link = "connected" if self.relay.connected else "NOT connected"
        return (
            f"the outbox {self.outbox.path} holds {depth:,} records, at its bound (--max-outbox "
            f"{max_outbox:,}); the relay is {link} to NATS at {self.relay.url}: start NATS and "
            "`infermeter ingest`, or raise --max-outbox; send requests to another worker"
        )

    # straight to PostgreSQL --------------------------------------------------------------
    def append(self, records: Sequence[UsageRecord]) -> list[AppendResult]:
        return self.pg.append(records)

    def create_tenant(self, name: str, budget: Decimal | None = None) -> Tenant:
        return self.pg.create_tenant(name, budget)

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        return self.pg.get_tenant(tenant_id)

    def find_tenant(self, name_or_id: str) -> Tenant | None:
        return self.pg.find_tenant(name_or_id)

    def list_tenants(self) -> list[Tenant]:
        return self.pg.list_tenants()

    def set_budget(self, tenant_id: str, budget: Decimal | None) -> Tenant:
        return self.pg.set_budget(tenant_id, budget)

    def create_key(self, tenant_id: str | None, *, admin: bool = False) -> tuple[ApiKey, str]:
        return self.pg.create_key(tenant_id, admin=admin)

    def revoke_key(self, key_id: str) -> ApiKey:
        return self.pg.revoke_key(key_id)

    def lookup_key(self, secret: str) -> ApiKey | None:
        return self.pg.lookup_key(secret)

    def list_keys(self, tenant_id: str | None = None) -> list[ApiKey]:
        return self.pg.list_keys(tenant_id)

    def add_plan_version(self, version: PlanVersion) -> PlanVersion:
        return self.pg.add_plan_version(version)

    def list_plan_versions(self) -> list[PlanVersion]:
        return self.pg.list_plan_versions()

    def add_plan_assignment(self, assignment: PlanAssignment) -> PlanAssignment:
        return self.pg.add_plan_assignment(assignment)

    def list_plan_assignments(self) -> list[PlanAssignment]:
        return self.pg.list_plan_assignments()

    def add_commitment(self, commitment: Commitment) -> Commitment:
        return self.pg.add_commitment(commitment)

    def list_commitments(self, tenant_id: str | None = None) -> list[Commitment]:
        return self.pg.list_commitments(tenant_id)

    def set_rate_limits(self, subject: str, limits: Limits) -> None:
        self.pg.set_rate_limits(subject, limits)

    def list_rate_limits(self) -> dict[str, Limits]:
        return self.pg.list_rate_limits()

    def get_record(self, record_id: str) -> UsageRecord | None:
        return self.pg.get_record(record_id)

    def get_by_request(self, request_id: str) -> UsageRecord | None:
        return self.pg.get_by_request(request_id)

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
        return self.pg.list_records(
            tenant_id, limit=limit, after_seq=after_seq, start=start, end=end, include_warmup=include_warmup
        )

    def usage_summary(
        self, tenant_id: str | None, group_by: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[UsageRow]:
        return self.pg.usage_summary(tenant_id, group_by, start, end)

    def spent(self, tenant_id: str) -> Decimal:
        return self.pg.spent(tenant_id)

    def ledger_size(self) -> int:
        return self.pg.ledger_size()

    def verify(self) -> VerifyReport:
        return self.pg.verify()

    def close(self) -> None:
        """Commit the outbox, stop the relay (unrelayed rows stay on disk), close PostgreSQL."""
        self.outbox.flush(timeout=10)
        self.relay.stop()  # before the outbox closes under it
        self.outbox.close()
        self.pg.close()


__all__ = ["QueuedStore"]
