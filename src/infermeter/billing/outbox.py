"""A worker's durable outbox: usage records on local disk until the central ledger holds them.

In cluster mode a finished request's record is committed here (SQLite, WAL,
``synchronous=FULL``: it survives a crash or power loss of the worker) before its response
goes out; the relay (``billing.relay``) publishes it to the usage stream later and the row
is deleted only once the PostgreSQL ledger is seen to hold its record id. Writes go through
one thread that group-commits whatever is queued, so many requests share one fsync.

Repeats: a request id already in the outbox returns the first record (``created`` False),
as the ledger would; a repeat of a record already trimmed is dropped by the ledger itself.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from infermeter.billing.entry_encoding import encode_event
from infermeter.billing.sqlite_writer import next_group
from infermeter.billing.store import AppendCallback, AppendResult
from infermeter.core.errors import Unavailable
from infermeter.core.records import UsageRecord

log = logging.getLogger(__name__)

NOT_IN_LEDGER = -1  # AppendResult.seq of a record that is in the outbox, not yet in the ledger
_STOP = object()
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS outbox (
        n INTEGER PRIMARY KEY AUTOINCREMENT,
        record_id TEXT NOT NULL UNIQUE,
        request_id TEXT NOT NULL UNIQUE,
        event TEXT NOT NULL,
        published INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_published ON outbox (published, n)",
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    n: int  # local order
    record_id: str
    event: str  # the record's canonical CloudEvent JSON: what is published


class Outbox:
    """The SQLite outbox. ``submit`` is the hot path; the relay reads, marks and trims."""

    def __init__(self, path: Path | str, *, max_group: int = 4096) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_group = max_group
        conn = self._connect()
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        for statement in _SCHEMA:
            conn.execute(statement)
        self._conn = conn
        # rows here (published or not), kept without a COUNT(*): readiness asks per request
        self.rows = int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        self._read_lock = threading.Lock()
        self._reader = self._connect()
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._lock = threading.Lock()
        self._stopping = False
        self.fault: str | None = None  # why the last group commit failed; None once one succeeds
        self._thread = threading.Thread(target=self._run, name="infermeter-outbox", daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)

    # the hot path --------------------------------------------------------------------
    def submit(self, record: UsageRecord, callback: AppendCallback) -> None:
        """Queue ``record``; ``callback`` runs once it is on disk (or with the exception)."""
        with self._lock:
            if self._stopping:
                raise Unavailable("the outbox is closed; restart the worker")
            self._queue.put((record, callback))

    def flush(self, timeout: float | None = None) -> None:
        done = threading.Event()
        with self._lock:
            if self._stopping:
                return
            self._queue.put(done)
        if not done.wait(timeout):
            raise Unavailable(f"the outbox at {self.path} did not commit within {timeout} s; check its disk")

    def _run(self) -> None:
        stop = False
        while not stop:
            items = next_group(self._queue, self.max_group)
            pending = [i for i in items if isinstance(i, tuple)]
            if pending:
                self._commit(pending)
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()
                elif item is _STOP:
                    stop = True
        self._conn.close()

    def _commit(self, pending: list[tuple[UsageRecord, AppendCallback]]) -> None:
        try:
            results: list[AppendResult | BaseException] = list(self._insert([r for r, _ in pending]))
            self.fault = None
        except Exception as exc:
            self.fault = f"the outbox {self.path} could not commit: {exc}"
            log.warning("outbox group of %d failed (%r); retrying one by one", len(pending), exc)
            results = []
            for record, _ in pending:
                try:
                    results.append(self._insert([record])[0])
                except Exception as one:
                    results.append(one)
        for (_, callback), result in zip(pending, results, strict=True):
            try:
                callback(result)
            except Exception:
                log.exception("outbox callback raised; the record is on disk regardless")

    def _insert(self, records: Sequence[UsageRecord]) -> list[AppendResult]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            out: list[AppendResult] = []
            for record in records:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO outbox (record_id, request_id, event) VALUES (?, ?, ?)",
                    (record.record_id, record.request_id, encode_event(record)[0]),
                )
                if cursor.rowcount == 1:
                    out.append(AppendResult(record, NOT_IN_LEDGER, "", True))
                    continue
                (event,) = conn.execute(
                    "SELECT event FROM outbox WHERE request_id = ? OR record_id = ?",
                    (record.request_id, record.record_id),
                ).fetchone()
                first = UsageRecord.from_cloudevent(_json(event))
                out.append(AppendResult(first, NOT_IN_LEDGER, "", False))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.rows += sum(r.created for r in out)
        return out

    # the relay's side ------------------------------------------------------------------
    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    def _write(self, sql: str, args: Sequence[Any]) -> int:
        with self._read_lock:
            return int(self._reader.execute(sql, args).rowcount)

    def unpublished(self, limit: int) -> list[OutboxRow]:
        """The oldest rows not yet acknowledged by the stream."""
        rows = self._read(
            "SELECT n, record_id, event FROM outbox WHERE published = 0 ORDER BY n LIMIT ?", (limit,)
        )
        return [OutboxRow(*r) for r in rows]

    def published(self, limit: int) -> list[OutboxRow]:
        """Rows the stream acknowledged that are still here (the ledger has not been seen to hold them)."""
        rows = self._read(
            "SELECT n, record_id, event FROM outbox WHERE published = 1 ORDER BY n LIMIT ?", (limit,)
        )
        return [OutboxRow(*r) for r in rows]

    def mark_published(self, ns: Sequence[int]) -> None:
        if ns:
            marks = ",".join("?" * len(ns))
            self._write(f"UPDATE outbox SET published = 1 WHERE n IN ({marks})", list(ns))

    def mark_unpublished(self, ns: Sequence[int]) -> None:
        """Publish these again (same record id, so the stream or the ledger drops a repeat)."""
        if ns:
            marks = ",".join("?" * len(ns))
            self._write(f"UPDATE outbox SET published = 0 WHERE n IN ({marks})", list(ns))

    def trim(self, record_ids: Sequence[str]) -> None:
        """Delete rows whose records the ledger holds."""
        if record_ids:
            marks = ",".join("?" * len(record_ids))
            gone = self._write(f"DELETE FROM outbox WHERE record_id IN ({marks})", list(record_ids))
            with self._lock:
                self.rows -= gone

    def tenant_of(self, record_or_request_id: str) -> str | None:
        """The tenant of a record still here (by record or request id), else None."""
        rows = self._read(
            "SELECT event FROM outbox WHERE record_id = ? OR request_id = ? LIMIT 1",
            (record_or_request_id, record_or_request_id),
        )
        return str(_json(rows[0][0])["subject"]) if rows else None

    def oldest_end(self) -> float | None:
        """Unix time at which the oldest record here ended (its event time); None if empty."""
        rows = self._read("SELECT event FROM outbox ORDER BY n LIMIT 1")
        if not rows:
            return None
        from datetime import datetime

        return datetime.fromisoformat(str(_json(rows[0][0])["time"])).timestamp()

    def depth(self) -> int:
        """Rows not yet confirmed in the ledger (published or not)."""
        return int(self._read("SELECT COUNT(*) FROM outbox")[0][0])

    def close(self) -> None:
        """Commit what is queued, stop the writer. Rows stay on disk for the next start."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._queue.put(_STOP)
        self._thread.join()
        with self._read_lock:
            self._reader.close()


def _json(text: str) -> dict[str, Any]:
    import json

    value: dict[str, Any] = json.loads(text)
    return value


__all__ = ["NOT_IN_LEDGER", "Outbox", "OutboxRow"]
