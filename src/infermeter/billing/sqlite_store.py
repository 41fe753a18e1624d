"""The embedded store: one SQLite file in WAL mode, one writer thread, per-thread readers.

Writes (ledger appends, tenants, keys, and through ``write`` the signed checkpoints and
window meters of the same file) go through the writer thread (``sqlite_writer``), which
group-commits ledger appends; reads use one connection per calling thread, so they
never wait for the writer. The ledger table is append-only by trigger; ``verify`` recomputes
every hash and checks every column that queries read against its payload.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal, Inexact, localcontext
from pathlib import Path
from typing import Any, TypeVar

from infermeter.billing.ledger import (
    COLUMNS,
    LedgerHead,
    LedgerRow,
    prepare,
    record_from_payload,
    verify_entries,
)
from infermeter.billing.migrations import migrate
from infermeter.billing.plans import (
    ASSIGNMENT_COLUMNS,
    LIMIT_COLUMNS,
    VERSION_COLUMNS,
    PlanAssignment,
    PlanVersion,
    assignment_from_row,
    assignment_row,
    limits_row,
    plan_version_taken,
    version_from_row,
    version_row,
)
from infermeter.billing.rate_limits import Limits, limits_from_row
from infermeter.billing.reservations import (
    COMMITMENT_COLUMNS,
    Commitment,
    commitment_from_row,
    commitment_row,
)
from infermeter.billing.sqlite_writer import (
    APPEND,
    CALL,
    FLUSH,
    STOP,
    SUBMIT,
    Waiter,
    WalCheckpointer,
    Writer,
    closed_error,
    fault_of,
)
from infermeter.billing.store import (
    ApiKey,
    AppendCallback,
    AppendResult,
    Tenant,
    UsageRow,
    VerifyReport,
    ledger_filter,
)
from infermeter.core import ids
from infermeter.core.errors import ConfigError, InvalidRequest, NotFound, Unavailable
from infermeter.core.money import format_decimal, to_decimal
from infermeter.core.records import UsageRecord, iso, utc_now

T = TypeVar("T")
PROBE_MIN_FREE = 1 << 20  # bytes free on the ledger's disk before a faulted ledger is healthy again
_SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
_GROUP_KEYS = {"day": "day", "model": "model", "tier": "service_tier"}
_TENANT_COLS = "tenant_id, name, created_at, budget"
_KEY_COLS = "key_id, tenant_id, admin, created_at, revoked_at, prefix"


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _tenant(row: tuple[Any, ...]) -> Tenant:
    budget = None if row[3] is None else Decimal(row[3])
    return Tenant(row[0], row[1], _dt(row[2]), budget)


def _key(row: tuple[Any, ...]) -> ApiKey:
    revoked = None if row[4] is None else _dt(row[4])
    return ApiKey(row[0], row[1], bool(row[2]), _dt(row[3]), revoked, row[5])


def exact_sum(costs: Iterable[str]) -> Decimal:
    """Σ of decimal strings, exactly: traps Inexact rather than ever rounding money."""
    with localcontext(prec=200) as ctx:
        ctx.traps[Inexact] = True
        return sum((Decimal(c) for c in costs), Decimal(0))


class SqliteStore:
    """The ``Store`` protocol on one SQLite file. Thread-safe; call ``close`` when done.

    ``synchronous`` is SQLite's: FULL (default) fsyncs the WAL at every commit, so an
    acknowledged append survives power loss. ``max_group`` caps queued items per commit.
    """

    def __init__(self, path: Path | str, *, synchronous: str = "FULL", max_group: int = 4096) -> None:
        self.path = Path(path)
        mode = synchronous.upper()
        if mode not in _SYNC_MODES:
            raise ConfigError(f"synchronous={synchronous!r} is not a SQLite mode; use one of {_SYNC_MODES}")
        if str(path) == ":memory:" or max_group < 1:
            raise ConfigError(
                f"SqliteStore needs a file path and max_group >= 1, got {str(path)!r} and "
                f"{max_group}; pass e.g. tmp_path / 'infermeter.db'"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        # Ledger rows are ~1.3 KB; 16 KiB pages hold a dozen of them and made group commits
        # markedly cheaper than 4 KiB ones. Takes effect only when the file is new.
        conn.execute("PRAGMA page_size = 16384")
        if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            conn.close()
            raise ConfigError(f"{self.path}: SQLite refused WAL mode; put the file on a local disk")
        conn.execute(f"PRAGMA synchronous = {mode}")
        conn.execute("PRAGMA cache_size = -32768")  # 32 MiB: index pages stay hot under load
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # the WalCheckpointer thread does it
        migrate(conn)
        self._lock = threading.Lock()  # guards _closed against a racing put
        self._closed = False
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        checkpoint = self._connect()
        checkpoint.execute(f"PRAGMA synchronous = {mode}")
        self._writer = Writer(conn, max_group, WalCheckpointer(checkpoint))

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _read(self) -> sqlite3.Connection:
        if self._closed:
            raise closed_error()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            with self._lock:
                self._readers.append(conn)
            self._local.conn = conn
        return conn

    def _put(self, item: tuple[Any, ...]) -> None:
        with self._lock:
            if self._closed:
                raise closed_error()
            self._writer.queue.put(item)

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one ``BEGIN IMMEDIATE`` transaction on the writer thread.

        For the other writers of this file (signed checkpoints, window meters): queued behind
        the appends submitted before it, committed on its own (``synchronous`` as the store's),
        and its result or exception returned here. Not part of the ``Store`` protocol.
        """
        if self._writer.on_thread():  # called from an append callback
            return self._writer.transaction(fn)
        waiter: Waiter[T] = Waiter()
        self._put((CALL, fn, waiter))
        return waiter.wait()

    # tenants and keys -----------------------------------------------------
    def create_tenant(self, name: str, budget: Decimal | None = None) -> Tenant:
        name = name.strip()
        if not name:
            raise InvalidRequest("tenant name is empty; pass a name such as 'acme'", param="name")
        tenant = Tenant(ids.tenant_id(), name, utc_now(), _budget(budget))

        def insert(conn: sqlite3.Connection) -> None:
            taken = conn.execute("SELECT tenant_id FROM tenants WHERE name = ?", (name,)).fetchone()
            if taken is not None:
                raise InvalidRequest(
                    f"tenant name {name!r} is taken by {taken[0]}; pick another name",
                    param="name", code="tenant_exists",
                )  # fmt: skip
            conn.execute(
                "INSERT INTO tenants (tenant_id, name, created_at, budget) VALUES (?, ?, ?, ?)",
                (tenant.tenant_id, name, iso(tenant.created_at), _budget_text(tenant.budget)),
            )

        self.write(insert)
        return tenant

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        sql = f"SELECT {_TENANT_COLS} FROM tenants WHERE tenant_id = ?"
        row = self._read().execute(sql, (tenant_id,)).fetchone()
        return None if row is None else _tenant(row)

    def find_tenant(self, name_or_id: str) -> Tenant | None:
        sql = f"SELECT {_TENANT_COLS} FROM tenants WHERE tenant_id = ? OR name = ? ORDER BY name = ?"
        row = self._read().execute(sql, (name_or_id, name_or_id, name_or_id)).fetchone()
        return None if row is None else _tenant(row)

    def list_tenants(self) -> list[Tenant]:
        sql = f"SELECT {_TENANT_COLS} FROM tenants ORDER BY created_at, tenant_id"
        return [_tenant(r) for r in self._read().execute(sql)]

    def set_budget(self, tenant_id: str, budget: Decimal | None) -> Tenant:
        text = _budget_text(_budget(budget))

        def update(conn: sqlite3.Connection) -> Tenant:
            conn.execute("UPDATE tenants SET budget = ? WHERE tenant_id = ?", (text, tenant_id))
            row = conn.execute(
                f"SELECT {_TENANT_COLS} FROM tenants WHERE tenant_id = ?", (tenant_id,)
            ).fetchone()
            if row is None:
                raise _no_tenant(tenant_id)
            return _tenant(row)

        return self.write(update)

    def create_key(self, tenant_id: str | None, *, admin: bool = False) -> tuple[ApiKey, str]:
        if (tenant_id is None) != admin:
            raise InvalidRequest(
                f"a key has a tenant or is an admin key, not both or neither (tenant_id="
                f"{tenant_id!r}, admin={admin}); pass a tenant id, or None with admin=True",
                param="tenant_id",
            )
        # 240 random bits: a fast unsalted SHA-256 is the right hash here (no dictionary or
        # brute-force attack on a secret this long), and it keeps every request's lookup cheap.
        secret = "im-" + secrets.token_urlsafe(30)
        key = ApiKey(ids.new_id("key"), tenant_id, admin, utc_now(), None, secret[:8])

        def insert(conn: sqlite3.Connection) -> None:
            if (
                tenant_id is not None
                and conn.execute("SELECT 1 FROM tenants WHERE tenant_id = ?", (tenant_id,)).fetchone() is None
            ):
                raise _no_tenant(tenant_id)
            conn.execute(
                "INSERT INTO api_keys (key_id, tenant_id, admin, secret_sha256, prefix, "
                "created_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (key.key_id, tenant_id, int(admin), _secret_hash(secret), key.prefix,
                 iso(key.created_at)),
            )  # fmt: skip

        self.write(insert)
        return key, secret

    def revoke_key(self, key_id: str) -> ApiKey:
        def revoke(conn: sqlite3.Connection) -> ApiKey:
            conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (iso(utc_now()), key_id),
            )
            row = conn.execute(f"SELECT {_KEY_COLS} FROM api_keys WHERE key_id = ?", (key_id,))
            found = row.fetchone()
            if found is None:
                raise NotFound(f"no API key {key_id!r}; list keys with `infermeter keys list`")
            return _key(found)

        return self.write(revoke)

    def lookup_key(self, secret: str) -> ApiKey | None:
        sql = f"SELECT {_KEY_COLS} FROM api_keys WHERE secret_sha256 = ?"
        row = self._read().execute(sql, (_secret_hash(secret),)).fetchone()
        return None if row is None else _key(row)

    def list_keys(self, tenant_id: str | None = None) -> list[ApiKey]:
        where, args = ("WHERE tenant_id = ?", (tenant_id,)) if tenant_id is not None else ("", ())
        sql = f"SELECT {_KEY_COLS} FROM api_keys {where} ORDER BY created_at, key_id"
        return [_key(r) for r in self._read().execute(sql, args)]

    # price plans (billing.plans) ------------------------------------------------
    def add_plan_version(self, version: PlanVersion) -> PlanVersion:
        def insert(conn: sqlite3.Connection) -> None:
            taken = conn.execute(
                "SELECT 1 FROM plan_versions WHERE plan = ? AND version = ?", (version.plan, version.version)
            ).fetchone()
            if taken is not None:
                raise plan_version_taken(version)
            conn.execute(
                f"INSERT INTO plan_versions ({VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                version_row(version),
            )

        self.write(insert)
        return version

    def list_plan_versions(self) -> list[PlanVersion]:
        sql = f"SELECT {VERSION_COLUMNS} FROM plan_versions ORDER BY plan, version"
        return [version_from_row(r) for r in self._read().execute(sql)]

    def add_plan_assignment(self, assignment: PlanAssignment) -> PlanAssignment:
        def insert(conn: sqlite3.Connection) -> None:
            if (
                conn.execute("SELECT 1 FROM tenants WHERE tenant_id = ?", (assignment.tenant_id,)).fetchone()
                is None
            ):
                raise _no_tenant(assignment.tenant_id)
            conn.execute(
                f"INSERT INTO plan_assignments ({ASSIGNMENT_COLUMNS}) VALUES (?, ?, ?, ?)",
                assignment_row(assignment),
            )

        self.write(insert)
        return assignment

    def list_plan_assignments(self) -> list[PlanAssignment]:
        sql = f"SELECT {ASSIGNMENT_COLUMNS} FROM plan_assignments ORDER BY number"
        return [assignment_from_row(r) for r in self._read().execute(sql)]

    def add_commitment(self, commitment: Commitment) -> Commitment:
        def insert(conn: sqlite3.Connection) -> None:
            known = conn.execute("SELECT 1 FROM tenants WHERE tenant_id = ?", (commitment.tenant_id,))
            if known.fetchone() is None:
                raise _no_tenant(commitment.tenant_id)
            conn.execute(
                f"INSERT INTO commitments ({COMMITMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                commitment_row(commitment),
            )

        self.write(insert)
        return commitment

    def list_commitments(self, tenant_id: str | None = None) -> list[Commitment]:
        where, args = ("WHERE tenant_id = ?", (tenant_id,)) if tenant_id is not None else ("", ())
        sql = f"SELECT {COMMITMENT_COLUMNS} FROM commitments {where} ORDER BY number"
        return [commitment_from_row(r) for r in self._read().execute(sql, args)]

    def set_rate_limits(self, subject: str, limits: Limits) -> None:
        def put(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM rate_limits WHERE subject = ?", (subject,))
            if not limits.empty:
                conn.execute(
                    f"INSERT INTO rate_limits ({LIMIT_COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?)",
                    limits_row(subject, limits),
                )

        self.write(put)

    def list_rate_limits(self) -> dict[str, Limits]:
        sql = f"SELECT {LIMIT_COLUMNS} FROM rate_limits ORDER BY subject"
        return {r[0]: limits_from_row(r) for r in self._read().execute(sql)}

    # the ledger: writes -----------------------------------------------------
    def append(self, records: Sequence[UsageRecord]) -> list[AppendResult]:
        if not records:
            return []
        entries = [prepare(r) for r in records]
        if self._writer.on_thread():
            return self._writer.append_now(entries)
        waiter: Waiter[list[AppendResult]] = Waiter()
        self._put((APPEND, entries, waiter))
        return waiter.wait()

    def submit(self, record: UsageRecord, callback: AppendCallback) -> None:
        """Queue ``record``; never waits for disk. A record that cannot be encoded raises here."""
        self._put((SUBMIT, prepare(record), callback))

    def flush(self, timeout: float | None = None) -> None:
        if self._writer.on_thread():
            return  # the writer cannot wait for itself; its current group is being delivered
        done = threading.Event()
        try:
            self._put((FLUSH, done, None))
        except Unavailable:
            return  # closed: close() committed everything first
        if not done.wait(timeout):
            raise Unavailable(
                f"the ledger writer did not commit within {timeout} s; the disk may be slow "
                "or stalled: retry flush() or check the disk holding the store"
            )

    # health ---------------------------------------------------------------
    def health(self) -> str | None:
        """None while the ledger can append; else why its last commit failed (disk full, I/O)."""
        return self._writer.fault

    def probe(self) -> str | None:
        """Check that an append could commit now; clear or set ``health()``, and return it.

        Two checks, adding nothing to the ledger: the disk holding the file has at least
        ``PROBE_MIN_FREE`` bytes free (a write that reuses WAL space can succeed on a full
        disk, so a write alone would say healthy too early), and one real write, a no-op
        update of the ledger head, commits (and is fsynced) through the writer thread.
        """

        def touch(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE ledger_head SET size = size WHERE id = 0")

        free = shutil.disk_usage(self.path.parent).free
        if free < PROBE_MIN_FREE:
            self._writer.fault = (
                f"only {free:,} bytes free on the disk holding {self.path}, under the "
                f"{PROBE_MIN_FREE:,} the ledger needs"
            )
            return self._writer.fault
        try:
            self.write(touch)
        except Exception as exc:
            self._writer.fault = fault_of(exc) or self._writer.fault
        else:
            self._writer.fault = None
        return self._writer.fault

    # the ledger: reads ------------------------------------------------------
    def in_transit(self, record_or_request_id: str) -> str | None:
        """None: an append is in the ledger when it returns (no outbox in between)."""
        return None

    def get_record(self, record_id: str) -> UsageRecord | None:
        return self._one("SELECT payload FROM ledger WHERE record_id = ?", record_id)

    def get_by_request(self, request_id: str) -> UsageRecord | None:
        return self._one("SELECT payload FROM ledger WHERE request_id = ?", request_id)

    def _one(self, sql: str, key: str) -> UsageRecord | None:
        row = self._read().execute(sql, (key,)).fetchone()
        return None if row is None else record_from_payload(row[0])

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
        """Records in ledger order after ``after_seq``; event time in [start, end)."""
        if limit < 1:
            raise InvalidRequest(f"limit={limit} must be at least 1", param="limit")
        where, args = ledger_filter(tenant_id, start, end, include_warmup, "?")
        sql = f"SELECT seq, payload FROM ledger WHERE {where} AND seq > ? ORDER BY seq LIMIT ?"
        rows = self._read().execute(sql, [*args, -1 if after_seq is None else after_seq, limit])
        return [(seq, record_from_payload(payload)) for seq, payload in rows]

    def usage_summary(
        self,
        tenant_id: str | None,
        group_by: str,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[UsageRow]:
        """Sums per day, model or tier over event time in [start, end), sorted by key.

        ``requests`` counts ``usage`` entries; the sums include corrections. Warmup entries
        count only when ``tenant_id`` names their tenant, never in the all-tenant view.
        """
        column = _GROUP_KEYS.get(group_by)
        if column is None:
            raise InvalidRequest(
                f"group_by={group_by!r} is not one of {sorted(_GROUP_KEYS)}", param="group_by"
            )
        where, args = ledger_filter(tenant_id, start, end, tenant_id is not None, "?")
        sql = (
            f"SELECT {column}, SUM(kind = 'usage'), SUM(prompt_tokens), SUM(completion_tokens), "
            f"SUM(device_us), SUM(ru_micros), group_concat(cost, ' ') FROM ledger "
            f"WHERE {where} GROUP BY {column} ORDER BY {column}"
        )
        return [
            UsageRow(key, n, p, c, us, ru, exact_sum(costs.split()))
            for key, n, p, c, us, ru, costs in self._read().execute(sql, args)
        ]

    def spent(self, tenant_id: str) -> Decimal:
        sql = "SELECT group_concat(cost, ' ') FROM ledger WHERE tenant_id = ?"
        costs = self._read().execute(sql, (tenant_id,)).fetchone()[0]
        return exact_sum(costs.split() if costs else ())

    def ledger_size(self) -> int:
        row = self._read().execute("SELECT COALESCE(MAX(seq) + 1, 0) FROM ledger").fetchone()
        return int(row[0])

    def leaf_hashes(self, size: int | None = None) -> list[bytes]:
        """The RFC 9162 leaf hashes of the first ``size`` entries (all when None), in seq order.

        For ``billing.merkle``: ``merkle_root(store.leaf_hashes())`` is the ledger's tree head.
        Not part of the ``Store`` protocol.
        """
        sql = "SELECT leaf_hash FROM ledger ORDER BY seq LIMIT ?"
        rows = self._read().execute(sql, (-1 if size is None else size,))
        return [bytes.fromhex(h) for (h,) in rows]

    def verify(self) -> VerifyReport:
        """Re-hash and re-check the whole ledger, in one read snapshot."""
        conn = self._read()
        conn.execute("BEGIN")
        try:
            try:
                row = conn.execute("SELECT size, head FROM ledger_head WHERE id = 0").fetchone()
            except sqlite3.OperationalError:
                row = None  # the head table was dropped: the chain alone still verifies
            head = None if row is None else LedgerHead(row[0], row[1])
            cursor = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM ledger ORDER BY seq")
            return verify_entries((LedgerRow(*r) for r in cursor), head)
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        """Commit everything queued, stop the writer, close every connection. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writer.queue.put((STOP,))
        if not self._writer.on_thread():
            self._writer.thread.join()
        with self._lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _budget(budget: Decimal | None) -> Decimal | None:
    if budget is None:
        return None
    value = to_decimal(budget)
    if not value.is_finite() or value < 0:
        raise InvalidRequest(
            f"budget {budget} must be a finite amount >= 0; pass None for no limit",
            param="budget",
        )
    return value


def _budget_text(budget: Decimal | None) -> str | None:
    return None if budget is None else format_decimal(budget)


def _no_tenant(tenant_id: str) -> NotFound:
    return NotFound(f"no tenant {tenant_id!r}; list tenants with `infermeter tenants list`")


__all__ = ["SqliteStore", "exact_sum"]
