"""The ``Store`` protocol on PostgreSQL: one billing database shared by many processes.

Same entries, leaf hashes and hash chain as the SQLite store (``billing.ledger`` encodes and
chains both). An append is one transaction: ``SELECT … FROM ledger_head WHERE id = 0 FOR
UPDATE`` serialises every appender in every process; under that lock the batch drops the
request and record ids already in the ledger (``UNIQUE`` on both is the backstop), chains
from the stored head, writes the rows with one COPY and moves the head. ``submit`` queues
records for a writer thread that group-commits them the same way. Reads use one connection
per thread; ``verify`` streams the ledger through a server-side cursor in one snapshot.

Needs psycopg 3 (``pip install 'infermeter[postgres]'``); the URL is a libpq one,
``postgresql://user@host:5432/dbname``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from queue import SimpleQueue
from typing import Any, TypeVar

import psycopg

from infermeter.billing.ledger import (
    COLUMNS,
    LedgerHead,
    LedgerRow,
    PreparedEntry,
    chain_rows,
    prepare,
    record_from_payload,
    verify_entries,
)
from infermeter.billing.pg_migrations import pg_migrate
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
from infermeter.billing.sqlite_store import _budget, _budget_text, _dt, _no_tenant, _secret_hash
from infermeter.billing.sqlite_writer import next_group
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
from infermeter.core.records import UsageRecord, iso, utc_now

log = logging.getLogger(__name__)
T = TypeVar("T")

_GROUP_KEYS = {"day": "day", "model": "model", "tier": "service_tier"}
_TENANT_COLS = "tenant_id, name, created_at, budget"
_KEY_COLS = "key_id, tenant_id, admin, created_at, revoked_at, prefix"
_COPY = f"COPY ledger ({', '.join(COLUMNS)}) FROM STDIN"
_STREAM_ROWS = 5000  # rows a server-side cursor fetches per round trip while verifying
_STOP = object()


def _why(exc: BaseException) -> str:
    """The driver's message on one line."""
    return " ".join(str(exc).split())


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("postgresql://", "postgres://"))


def _tenant(row: tuple[Any, ...]) -> Tenant:
    return Tenant(row[0], row[1], _dt(row[2]), None if row[3] is None else Decimal(row[3]))


def _key(row: tuple[Any, ...]) -> ApiKey:
    return ApiKey(row[0], row[1], bool(row[2]), _dt(row[3]), None if row[4] is None else _dt(row[4]), row[5])


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """An autocommit connection, or Unavailable naming the URL and the fix."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as exc:
        raise Unavailable(
            f"cannot connect to PostgreSQL at {redact(url)} ({_why(exc)}); "
            "start it or fix --db / INFERMETER_DB"
        ) from None


def redact(url: str) -> str:
    """The URL without a password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable URL>"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def append_entries(conn: psycopg.Connection[Any], entries: Sequence[PreparedEntry]) -> list[AppendResult]:
    """One append transaction on ``conn`` (autocommit): lock the head, dedupe, chain, COPY, commit."""
    with conn.transaction():
        size, head = conn.execute("SELECT size, head FROM ledger_head WHERE id = 0 FOR UPDATE").fetchone()  # type: ignore[misc]
        by_request: dict[str, AppendResult] = {}
        by_record: dict[str, AppendResult] = {}
        requests = [e.columns[1] for e in entries]
        records = [e.columns[0] for e in entries]
        for seq, record_id, request_id, payload, entry_hash in conn.execute(
            "SELECT seq, record_id, request_id, payload, entry_hash FROM ledger "
            "WHERE request_id = ANY(%s) OR record_id = ANY(%s)",
            (requests, records),
        ):
            found = AppendResult(record_from_payload(payload), seq, entry_hash, False)
            by_request[request_id] = by_record[record_id] = found
        fresh: list[PreparedEntry] = []
        slots: list[int | AppendResult] = []
        first: dict[str, int] = {}
        for entry in entries:
            record_id, request_id = entry.columns[0], entry.columns[1]
            hit = by_request.get(request_id) or by_record.get(record_id)
            if hit is not None:
                slots.append(hit)
                continue
            index = first.get("q" + request_id, first.get("r" + record_id, -1))
            if index < 0:
                index = first["q" + request_id] = first["r" + record_id] = len(fresh)
                fresh.append(entry)
            slots.append(index)
        rows: list[tuple[Any, ...]] = []
        if fresh:
            rows, last = chain_rows(fresh, size, bytes.fromhex(head))
            with conn.cursor().copy(_COPY) as copy:
                for row in rows:
                    copy.write_row(row)
            conn.execute(
                "UPDATE ledger_head SET size = %s, head = %s WHERE id = 0", (size + len(rows), last.hex())
            )
            _charge_accounts(conn, fresh)
    created = [False] * len(fresh)
    out: list[AppendResult] = []
    for slot in slots:
        if isinstance(slot, AppendResult):
            out.append(slot)
            continue
        row = rows[slot]
        out.append(AppendResult(fresh[slot].record, row[0], row[-1], not created[slot]))
        created[slot] = True
    return out


_CHARGE = (
    "INSERT INTO budget_accounts (tenant_id, spent) SELECT * FROM unnest(%s::text[], %s::numeric[]) "
    "ON CONFLICT (tenant_id) DO UPDATE SET spent = budget_accounts.spent + EXCLUDED.spent"
)
_UNRESERVE = (
    "WITH gone AS (DELETE FROM budget_reservations WHERE request_id = ANY(%s) RETURNING tenant_id, amount) "
    "UPDATE budget_accounts b SET reserved = b.reserved - g.held "
    "FROM (SELECT tenant_id, SUM(amount) AS held FROM gone GROUP BY tenant_id) g "
    "WHERE b.tenant_id = g.tenant_id"
)


def _charge_accounts(conn: psycopg.Connection[Any], fresh: Sequence[PreparedEntry]) -> None:
    """In the append's transaction: add the new entries' costs to their tenants' spent and
    drop their requests' reservations (``billing.pg_budget_schema``), so spent + reserved
    counts each request once whether or not its record has reached the ledger yet.

    The account rows are locked in tenant order (the rows of one INSERT are processed in
    order), before any reservation row, as the budget functions do.
    """
    costs: dict[str, Decimal] = {}
    for entry in fresh:
        record = entry.record
        costs[record.tenant_id] = costs.get(record.tenant_id, Decimal(0)) + record.cost
    tenants = sorted(costs)
    conn.execute(_CHARGE, (tenants, [costs[t] for t in tenants]))
    conn.execute(_UNRESERVE, ([e.record.request_id for e in fresh],))


class PgStore:
    """The ``Store`` protocol on a PostgreSQL database. Thread-safe; call ``close`` when done.

    ``max_group`` caps how many submitted records one group commit takes.
    """

    def __init__(self, url: str, *, max_group: int = 4096) -> None:
        if not is_postgres_url(url):
            raise ConfigError(
                f"--db {url!r} is not a PostgreSQL URL; use e.g. postgresql://postgres@127.0.0.1/im"
            )
        self.url = url
        self.max_group = max(1, max_group)
        conn = connect(url)
        try:
            pg_migrate(conn)
        finally:
            conn.close()
        self._lock = threading.Lock()
        self._closed = False  # connections closed
        self._stopping = False  # no more submits: the writer is draining
        self._local = threading.local()
        self._conns: list[psycopg.Connection[Any]] = []
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._fault: str | None = None  # why the last group commit failed; None once one succeeds
        self._writer = threading.Thread(target=self._run, name="infermeter-pg-writer", daemon=True)
        self._writer.start()

    # connections ---------------------------------------------------------------
    def _conn(self) -> psycopg.Connection[Any]:
        """This thread's connection; a broken one (server restarted) is replaced."""
        if self._closed:
            raise _closed()
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = connect(self.url)
            with self._lock:
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    def _run_sql(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        try:
            return fn(self._conn())
        except psycopg.OperationalError as exc:
            raise Unavailable(
                f"PostgreSQL at {redact(self.url)} failed ({_why(exc)}); retry when it is back"
            ) from None

    # tenants and keys -----------------------------------------------------------
    def create_tenant(self, name: str, budget: Decimal | None = None) -> Tenant:
        name = name.strip()
        if not name:
            raise InvalidRequest("tenant name is empty; pass a name such as 'acme'", param="name")
        tenant = Tenant(ids.tenant_id(), name, utc_now(), _budget(budget))

        def insert(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                taken = conn.execute("SELECT tenant_id FROM tenants WHERE name = %s", (name,)).fetchone()
                if taken is not None:
                    raise InvalidRequest(
                        f"tenant name {name!r} is taken by {taken[0]}; pick another name",
                        param="name", code="tenant_exists",
                    )  # fmt: skip
                conn.execute(
                    "INSERT INTO tenants (tenant_id, name, created_at, budget) VALUES (%s, %s, %s, %s)",
                    (tenant.tenant_id, name, iso(tenant.created_at), _budget_text(tenant.budget)),
                )

        self._run_sql(insert)
        return tenant

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._run_sql(lambda conn: conn.execute(sql, args).fetchall())

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        rows = self._rows(f"SELECT {_TENANT_COLS} FROM tenants WHERE tenant_id = %s", (tenant_id,))
        return _tenant(rows[0]) if rows else None

    def find_tenant(self, name_or_id: str) -> Tenant | None:
        sql = (
            f"SELECT {_TENANT_COLS} FROM tenants WHERE tenant_id = %s OR name = %s "
            "ORDER BY (name = %s) LIMIT 1"
        )
        rows = self._rows(sql, (name_or_id, name_or_id, name_or_id))
        return _tenant(rows[0]) if rows else None

    def list_tenants(self) -> list[Tenant]:
        return [
            _tenant(r)
            for r in self._rows(f"SELECT {_TENANT_COLS} FROM tenants ORDER BY created_at, tenant_id")
        ]

    def set_budget(self, tenant_id: str, budget: Decimal | None) -> Tenant:
        text = _budget_text(_budget(budget))
        rows = self._rows(
            f"UPDATE tenants SET budget = %s WHERE tenant_id = %s RETURNING {_TENANT_COLS}", (text, tenant_id)
        )
        if not rows:
            raise _no_tenant(tenant_id)
        return _tenant(rows[0])

    def create_key(self, tenant_id: str | None, *, admin: bool = False) -> tuple[ApiKey, str]:
        import secrets

        if (tenant_id is None) != admin:
            raise InvalidRequest(
                f"a key has a tenant or is an admin key, not both or neither (tenant_id="
                f"{tenant_id!r}, admin={admin}); pass a tenant id, or None with admin=True",
                param="tenant_id",
            )
        secret = "im-" + secrets.token_urlsafe(30)  # 240 random bits: see SqliteStore.create_key
        key = ApiKey(ids.new_id("key"), tenant_id, admin, utc_now(), None, secret[:8])

        def insert(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                if tenant_id is not None and (
                    conn.execute("SELECT 1 FROM tenants WHERE tenant_id = %s", (tenant_id,)).fetchone()
                    is None
                ):
                    raise _no_tenant(tenant_id)
                conn.execute(
                    "INSERT INTO api_keys (key_id, tenant_id, admin, secret_sha256, prefix, created_at, "
                    "revoked_at) VALUES (%s, %s, %s, %s, %s, %s, NULL)",
                    (key.key_id, tenant_id, admin, _secret_hash(secret), key.prefix, iso(key.created_at)),
                )

        self._run_sql(insert)
        return key, secret

    def revoke_key(self, key_id: str) -> ApiKey:
        self._rows(
            "UPDATE api_keys SET revoked_at = %s WHERE key_id = %s AND revoked_at IS NULL RETURNING key_id",
            (iso(utc_now()), key_id),
        )
        rows = self._rows(f"SELECT {_KEY_COLS} FROM api_keys WHERE key_id = %s", (key_id,))
        if not rows:
            raise NotFound(f"no API key {key_id!r}; list keys with `infermeter keys list`")
        return _key(rows[0])

    def lookup_key(self, secret: str) -> ApiKey | None:
        rows = self._rows(
            f"SELECT {_KEY_COLS} FROM api_keys WHERE secret_sha256 = %s", (_secret_hash(secret),)
        )
        return _key(rows[0]) if rows else None

    def list_keys(self, tenant_id: str | None = None) -> list[ApiKey]:
        where, args = ("WHERE tenant_id = %s", (tenant_id,)) if tenant_id is not None else ("", ())
        sql = f"SELECT {_KEY_COLS} FROM api_keys {where} ORDER BY created_at, key_id"
        return [_key(r) for r in self._rows(sql, args)]

    # price plans (billing.plans) -----------------------------------------------------
    def add_plan_version(self, version: PlanVersion) -> PlanVersion:
        def insert(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute("LOCK TABLE plan_versions IN EXCLUSIVE MODE")
                taken = conn.execute(
                    "SELECT 1 FROM plan_versions WHERE plan = %s AND version = %s",
                    (version.plan, version.version),
                ).fetchone()
                if taken is not None:
                    raise plan_version_taken(version)
                conn.execute(
                    f"INSERT INTO plan_versions ({VERSION_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                    version_row(version),
                )

        self._run_sql(insert)
        return version

    def list_plan_versions(self) -> list[PlanVersion]:
        rows = self._rows(f"SELECT {VERSION_COLUMNS} FROM plan_versions ORDER BY plan, version")
        return [version_from_row(r) for r in rows]

    def add_plan_assignment(self, assignment: PlanAssignment) -> PlanAssignment:
        def insert(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                known = conn.execute(
                    "SELECT 1 FROM tenants WHERE tenant_id = %s", (assignment.tenant_id,)
                ).fetchone()
                if known is None:
                    raise _no_tenant(assignment.tenant_id)
                conn.execute(
                    f"INSERT INTO plan_assignments ({ASSIGNMENT_COLUMNS}) VALUES (%s, %s, %s, %s)",
                    assignment_row(assignment),
                )

        self._run_sql(insert)
        return assignment

    def list_plan_assignments(self) -> list[PlanAssignment]:
        rows = self._rows(f"SELECT {ASSIGNMENT_COLUMNS} FROM plan_assignments ORDER BY number")
        return [assignment_from_row(r) for r in rows]

    def add_commitment(self, commitment: Commitment) -> Commitment:
        def insert(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                known = conn.execute(
                    "SELECT 1 FROM tenants WHERE tenant_id = %s", (commitment.tenant_id,)
                ).fetchone()
                if known is None:
                    raise _no_tenant(commitment.tenant_id)
                conn.execute(
                    f"INSERT INTO commitments ({COMMITMENT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                    commitment_row(commitment),
                )

        self._run_sql(insert)
        return commitment

    def list_commitments(self, tenant_id: str | None = None) -> list[Commitment]:
        if tenant_id is None:
            rows = self._rows(f"SELECT {COMMITMENT_COLUMNS} FROM commitments ORDER BY number")
        else:
            rows = self._rows(
                f"SELECT {COMMITMENT_COLUMNS} FROM commitments WHERE tenant_id = %s ORDER BY number",
                (tenant_id,),
            )
        return [commitment_from_row(r) for r in rows]

    def set_rate_limits(self, subject: str, limits: Limits) -> None:
        def put(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute("DELETE FROM rate_limits WHERE subject = %s", (subject,))
                if not limits.empty:
                    conn.execute(
                        f"INSERT INTO rate_limits ({LIMIT_COLUMNS}, updated_at) VALUES (%s, %s, %s, %s, %s)",
                        limits_row(subject, limits),
                    )

        self._run_sql(put)

    def list_rate_limits(self) -> dict[str, Limits]:
        rows = self._rows(f"SELECT {LIMIT_COLUMNS} FROM rate_limits ORDER BY subject")
        return {r[0]: limits_from_row(r) for r in rows}

    # the ledger: writes -----------------------------------------------------------
    def append(self, records: Sequence[UsageRecord]) -> list[AppendResult]:
        """Append in one transaction, after everything submitted before it (queue order)."""
        if not records:
            return []
        entries = [prepare(r) for r in records]
        if threading.current_thread() is self._writer:  # from inside a callback
            return self.append_prepared(entries)
        waiter = _Waiter()
        self._put((entries, waiter))
        return waiter.wait()

    def submit(self, record: UsageRecord, callback: AppendCallback) -> None:
        """Queue ``record`` for the writer's next group commit; never waits for the database."""
        self._put(([prepare(record)], callback))

    def _put(self, item: object) -> None:
        with self._lock:
            if self._stopping:
                raise _closed()
            self._queue.put(item)

    def flush(self, timeout: float | None = None) -> None:
        if threading.current_thread() is self._writer:
            return
        done = threading.Event()
        with self._lock:
            if self._stopping:
                return  # closing: close() commits everything first
            self._queue.put(done)
        if not done.wait(timeout):
            raise Unavailable(
                f"the PostgreSQL ledger writer did not commit within {timeout} s; "
                f"check the database at {redact(self.url)}"
            )

    def _run(self) -> None:
        stop = False
        while not stop:
            items = next_group(self._queue, self.max_group)
            pending = [i for i in items if isinstance(i, tuple)]
            try:
                self._commit(pending)
            except BaseException:  # never let the writer die: callers would wait forever
                log.exception("PostgreSQL ledger writer: unexpected error on %d items", len(pending))
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()
                elif item is _STOP:
                    stop = True

    def _commit(self, pending: list[tuple[list[PreparedEntry], Any]]) -> None:
        """One transaction for the whole group; if it fails, each item alone."""
        if not pending:
            return
        try:
            results = self.append_prepared([e for entries, _ in pending for e in entries])
            self._fault = None
        except Exception as exc:
            self._fault = f"the PostgreSQL ledger could not commit: {exc}"
            if len(pending) == 1:
                _deliver(pending[0][1], exc)
                return
            log.warning("PostgreSQL group of %d failed (%r); retrying one by one", len(pending), exc)
            for entries, target in pending:
                try:
                    _deliver(target, self.append_prepared(entries))
                except Exception as one:
                    _deliver(target, one)
            return
        at = 0
        for entries, target in pending:
            _deliver(target, results[at : at + len(entries)])
            at += len(entries)

    def health(self) -> str | None:
        """None while appends commit; else why the last group commit failed."""
        return self._fault

    def probe(self) -> str | None:
        """Check that the database answers a write transaction now; set or clear ``health()``."""

        def touch(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute("SELECT size FROM ledger_head FOR UPDATE")

        try:
            self._run_sql(touch)
        except Exception as exc:
            self._fault = f"the PostgreSQL ledger does not answer: {exc}"
        else:
            self._fault = None
        return self._fault

    def append_prepared(self, entries: Sequence[PreparedEntry]) -> list[AppendResult]:
        """Append already-prepared entries in one transaction (the ingester's batch path)."""
        return self._run_sql(lambda conn: append_entries(conn, entries))

    # the ledger: reads -------------------------------------------------------------
    def in_transit(self, record_or_request_id: str) -> str | None:
        """None: an append is in the ledger when it returns (no outbox in between)."""
        return None

    def get_record(self, record_id: str) -> UsageRecord | None:
        rows = self._rows("SELECT payload FROM ledger WHERE record_id = %s", (record_id,))
        return record_from_payload(rows[0][0]) if rows else None

    def get_by_request(self, request_id: str) -> UsageRecord | None:
        rows = self._rows("SELECT payload FROM ledger WHERE request_id = %s", (request_id,))
        return record_from_payload(rows[0][0]) if rows else None

    def has_records(self, record_ids: Sequence[str]) -> set[str]:
        """Which of ``record_ids`` the ledger holds (for trimming outboxes)."""
        rows = self._rows("SELECT record_id FROM ledger WHERE record_id = ANY(%s)", (list(record_ids),))
        return {r[0] for r in rows}

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
        if limit < 1:
            raise InvalidRequest(f"limit={limit} must be at least 1", param="limit")
        where, args = ledger_filter(tenant_id, start, end, include_warmup, "%s")
        sql = f"SELECT seq, payload FROM ledger WHERE {where} AND seq > %s ORDER BY seq LIMIT %s"
        rows = self._rows(sql, [*args, -1 if after_seq is None else after_seq, limit])
        return [(seq, record_from_payload(payload)) for seq, payload in rows]

    def usage_summary(
        self,
        tenant_id: str | None,
        group_by: str,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[UsageRow]:
        """As ``SqliteStore.usage_summary``; costs are summed as exact ``numeric``."""
        column = _GROUP_KEYS.get(group_by)
        if column is None:
            raise InvalidRequest(
                f"group_by={group_by!r} is not one of {sorted(_GROUP_KEYS)}", param="group_by"
            )
        where, args = ledger_filter(tenant_id, start, end, tenant_id is not None, "%s")
        sql = (
            f"SELECT {column}, SUM((kind = 'usage')::int), SUM(prompt_tokens), SUM(completion_tokens), "
            f"SUM(device_us), SUM(ru_micros), SUM(cost::numeric) FROM ledger "
            f'WHERE {where} GROUP BY {column} ORDER BY {column} COLLATE "C"'
        )
        return [
            UsageRow(key, int(n), int(p), int(c), int(us), int(ru), Decimal(cost))
            for key, n, p, c, us, ru, cost in self._rows(sql, args)
        ]

    def spent(self, tenant_id: str) -> Decimal:
        rows = self._rows("SELECT SUM(cost::numeric) FROM ledger WHERE tenant_id = %s", (tenant_id,))
        return Decimal(0) if rows[0][0] is None else Decimal(rows[0][0])

    def ledger_size(self) -> int:
        return int(self._rows("SELECT size FROM ledger_head WHERE id = 0")[0][0])

    def leaf_hashes(self, size: int | None = None) -> list[bytes]:
        """The leaf hashes of the first ``size`` entries (all when None), as ``SqliteStore``'s."""
        rows = self._rows("SELECT leaf_hash FROM ledger ORDER BY seq LIMIT %s", (size,))
        return [bytes.fromhex(h) for (h,) in rows]

    def verify(self) -> VerifyReport:
        """Re-hash and re-check the whole ledger in one snapshot, streamed (server-side cursor)."""
        conn = connect(self.url)
        try:
            conn.autocommit = False
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                row = conn.execute("SELECT size, head FROM ledger_head WHERE id = 0").fetchone()
                head = None if row is None else LedgerHead(int(row[0]), row[1])
                cursor = conn.cursor(name="infermeter_verify")
                cursor.itersize = _STREAM_ROWS
                cursor.execute(f"SELECT {', '.join(COLUMNS)} FROM ledger ORDER BY seq")
                return verify_entries(_ledger_rows(cursor), head)
        finally:
            conn.close()

    def close(self) -> None:
        """Commit everything submitted, stop the writer, close every connection. Idempotent."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._queue.put(_STOP)
        if threading.current_thread() is not self._writer:
            self._writer.join()
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    def __enter__(self) -> PgStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Waiter:
    """A one-shot slot an ``append`` caller blocks on until the writer fills it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: list[AppendResult] | BaseException = []

    def wait(self) -> list[AppendResult]:
        self.done.wait()
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def _deliver(target: Any, result: list[AppendResult] | BaseException) -> None:
    if isinstance(target, _Waiter):
        target.result = result
        target.done.set()
        return
    try:
        target(result if isinstance(result, BaseException) else result[0])
    except Exception:
        log.exception("ledger append callback raised; the record is committed regardless")


def _ledger_rows(cursor: psycopg.Cursor[Any]) -> Iterator[LedgerRow]:
    for r in cursor:
        yield LedgerRow(*r)


def _closed() -> Unavailable:
    return Unavailable("the PostgreSQL store is closed; open a new PgStore to use it")


__all__ = ["PgStore", "append_entries", "connect", "is_postgres_url", "redact"]
