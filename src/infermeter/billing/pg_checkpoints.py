"""The checkpoint log's database side on PostgreSQL (``checkpoint_log.LogDb``).

Same tables as SQLite's (``pg_migrations`` 0003): ``ledger_log`` holds the log's origin and
``checkpoints`` the signed tree heads, append-only by trigger. A checkpoint's number is the
next one after the largest, taken under a lock on the ``ledger_log`` row, so two processes
signing at once get 1, 2, … with no gap. Scans run in one REPEATABLE READ snapshot through
a server-side cursor, so a million-entry ledger is never held in memory at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg

from infermeter.billing.checkpoint_log import LeafRow, LedgerEntry
from infermeter.billing.checkpoints import Checkpoint
from infermeter.billing.pg_migrations import pg_migrate
from infermeter.billing.pg_store import connect

_CP_COLS = "number, origin, tree_size, root_hash, timestamp, key_id, signature"
_CHUNK = 4096


class PgLogDb:
    """``LogDb`` on a PostgreSQL database, with its own connection (guarded by a lock)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._conn = connect(url)
        pg_migrate(self._conn)
        row = self._conn.execute("SELECT origin FROM ledger_log WHERE id = 0").fetchone()
        assert row is not None
        self.origin: str = row[0]

    def _c(self) -> psycopg.Connection[Any]:
        if self._conn.closed or self._conn.broken:
            self._conn = connect(self.url)
        return self._conn

    def _snapshot(self) -> psycopg.Connection[Any]:
        conn = connect(self.url)
        conn.autocommit = False
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        return conn

    def scan_tail(self, start: int, on_rows: Callable[[list[LeafRow]], None]) -> int:
        conn = self._snapshot()
        try:
            with conn.transaction():
                row = conn.execute("SELECT size FROM ledger_head WHERE id = 0").fetchone()
                assert row is not None
                size = int(row[0])
                cursor = conn.cursor(name="infermeter_tail")
                cursor.execute(
                    "SELECT seq, record_id, payload, leaf_hash FROM ledger WHERE seq >= %s AND seq < %s "
                    "ORDER BY seq",
                    (start, size),
                )
                while rows := cursor.fetchmany(_CHUNK):
                    on_rows(rows)
                cursor.close()
            return size
        finally:
            conn.close()

    def scan_all(self, on_payloads: Callable[[list[str]], None]) -> list[Checkpoint]:
        conn = self._snapshot()
        try:
            with conn.transaction():
                cursor = conn.cursor(name="infermeter_payloads")
                cursor.execute("SELECT payload FROM ledger ORDER BY seq")
                while rows := cursor.fetchmany(_CHUNK):
                    on_payloads([p for (p,) in rows])
                cursor.close()
                found = conn.execute(f"SELECT {_CP_COLS} FROM checkpoints ORDER BY number").fetchall()
            return [Checkpoint(*r) for r in found]
        finally:
            conn.close()

    def insert(self, cp: Checkpoint) -> int:
        with self._lock:
            conn = self._c()
            with conn.transaction():
                conn.execute("SELECT 1 FROM ledger_log WHERE id = 0 FOR UPDATE")
                row = conn.execute(
                    "INSERT INTO checkpoints (number, origin, tree_size, root_hash, timestamp, key_id, "
                    "signature) "
                    "SELECT COALESCE(MAX(number), 0) + 1, %s, %s, %s, %s, %s, %s FROM checkpoints "
                    "RETURNING number",
                    (cp.origin, cp.tree_size, cp.root_hash, cp.timestamp, cp.key_id, cp.signature),
                ).fetchone()
            assert row is not None
            return int(row[0])

    def _one(self, sql: str, *args: object) -> Checkpoint | None:
        with self._lock:
            row = self._c().execute(sql, args).fetchone()
        return None if row is None else Checkpoint(*row)

    def latest(self) -> Checkpoint | None:
        return self._one(f"SELECT {_CP_COLS} FROM checkpoints ORDER BY tree_size DESC, number DESC LIMIT 1")

    def at_size(self, tree_size: int) -> Checkpoint | None:
        return self._one(
            f"SELECT {_CP_COLS} FROM checkpoints WHERE tree_size = %s ORDER BY number DESC LIMIT 1", tree_size
        )

    def page(self, after: int, limit: int) -> list[Checkpoint]:
        with self._lock:
            rows = (
                self._c()
                .execute(
                    f"SELECT {_CP_COLS} FROM checkpoints WHERE number > %s ORDER BY number LIMIT %s",
                    (after, limit),
                )
                .fetchall()
            )
        return [Checkpoint(*r) for r in rows]

    def entry(self, record_or_request_id: str) -> LedgerEntry | None:
        with self._lock:
            row = (
                self._c()
                .execute(
                    "SELECT seq, record_id, tenant_id, payload FROM ledger WHERE record_id = %s "
                    "UNION ALL SELECT seq, record_id, tenant_id, payload FROM ledger WHERE request_id = %s "
                    "LIMIT 1",
                    (record_or_request_id, record_or_request_id),
                )
                .fetchone()
            )
        return None if row is None else LedgerEntry(int(row[0]), row[1], row[2], row[3])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


__all__ = ["PgLogDb"]
