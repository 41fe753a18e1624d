"""The SQLite store's one writer thread: group commit of ledger appends, and other writes.

Everything that writes goes through one queue to one thread that owns the write
connection. The thread drains whatever is queued (up to ``max_group`` items), appends all
of it in one ``BEGIN IMMEDIATE`` transaction, commits (the one fsync the group pays), and
only then runs the callbacks and wakes the waiters. A group that fails is retried item by
item, so every callback gets its own result or its own exception and no record is lost
silently. Idempotency is decided inside the transaction: repeats of a request id (or record
id) already in the ledger, or earlier in the same group, return the first entry. A group
is first inserted without looking its ids up (the unique indexes refuse a repeat); only if
they do is it rolled back and appended again after a look-up, in a new transaction.

Other writers of the same file (signed checkpoints, window meters) hand their transaction
to this thread as a ``CALL`` (``SqliteStore.write``); it commits on its own, after the
appends queued before it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import chain
from queue import Empty, SimpleQueue
from typing import Any, Generic, TypeVar

from infermeter.billing.ledger import COLUMNS, PreparedEntry, chain_rows, record_from_payload
from infermeter.billing.store import AppendCallback, AppendResult
from infermeter.core.errors import Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

SUBMIT, APPEND, CALL, FLUSH, STOP = range(5)
_ROW = f"({', '.join('?' * len(COLUMNS))})"


def next_group(queue: SimpleQueue[Any], cap: int) -> list[Any]:
    """One group commit's items: block for the first, then take what is queued, up to ``cap``.

    Every group-committing writer (this one, the outbox, the PostgreSQL store) drains its
    queue this way.
    """
    items = [queue.get()]
    try:
        while len(items) < cap:
            items.append(queue.get_nowait())
    except Empty:
        pass
    return items


class Waiter(Generic[T]):
    """A one-shot result slot a caller blocks on until the writer fills it."""

    __slots__ = ("_done", "_error", "_result")

    def __init__(self) -> None:
        self._done = threading.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    def set(self, result: T | None = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._done.set()

    def wait(self) -> T:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]  # set() without error sets a T


class WalCheckpointer:
    """Copies the WAL back into the database on its own thread and connection.

    With SQLite's automatic checkpoints, the commit that crosses the threshold also copies
    megabytes into the database file and fsyncs it, and every append in that group waits for
    it. Here a group commit pays only for its WAL fsync; the copy runs beside the writer.
    """

    def __init__(self, conn: sqlite3.Connection, every_rows: int = 2048, idle_s: float = 2.0):
        self.conn = conn
        self.every_rows = every_rows
        self.idle_s = idle_s
        self._rows = 0
        self._wake = threading.Event()
        self._stop = False
        self.thread = threading.Thread(target=self._run, name="infermeter-wal-checkpoint")
        self.thread.daemon = True
        self.thread.start()

    def committed(self, rows: int) -> None:
        """Called by the writer after each commit; wakes the thread every ``every_rows`` rows."""
        self._rows += rows
        if self._rows >= self.every_rows:
            self._rows = 0
            self._wake.set()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self.idle_s)
            self._wake.clear()
            try:
                # PASSIVE never blocks the writer or readers; what it cannot copy now, it copies
                # next time. The WAL restarts from its beginning once a copy has caught up.
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # e.g. SQLITE_BUSY from another process's checkpoint
                log.warning("ledger checkpoint failed (%r); will retry", exc)
        self.conn.close()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self.thread.join()


class Writer:
    """Owns ``conn`` on its own thread. ``put`` callers must stop putting after ``STOP``."""

    def __init__(
        self, conn: sqlite3.Connection, max_group: int, wal_checkpointer: WalCheckpointer | None = None
    ) -> None:
        self.conn = conn
        self.max_group = max_group
        self.wal_checkpointer = wal_checkpointer
        self.queue: SimpleQueue[tuple[Any, ...]] = SimpleQueue()
        self.fault: str | None = None  # health hook: why the last ledger commit failed, if it did
        self.thread = threading.Thread(target=self._run, name="infermeter-ledger-writer")
        self.thread.daemon = True
        self.thread.start()

    def on_thread(self) -> bool:
        return threading.get_ident() == self.thread.ident

    # the loop -------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            items = next_group(self.queue, self.max_group)
            try:
                stop = self._process(items)
            except BaseException:  # never let the writer die: callers would hang forever
                log.exception("ledger writer: unexpected error processing %d items", len(items))
        self.conn.close()
        if self.wal_checkpointer is not None:
            self.wal_checkpointer.close()

    def _process(self, items: list[tuple[Any, ...]]) -> bool:
        pending: list[tuple[Any, ...]] = []
        flushes: list[threading.Event] = []
        stop = False
        for item in items:
            tag = item[0]
            if tag <= APPEND:
                pending.append(item)
            elif tag == CALL:
                self._commit(pending)  # keep queue order: earlier appends commit first
                pending = []
                self._call(item[1], item[2])
            elif tag == FLUSH:
                flushes.append(item[1])
            else:
                stop = True
        self._commit(pending)
        for event in flushes:
            event.set()
        return stop

    def _call(self, fn: Callable[[sqlite3.Connection], Any], waiter: Waiter[Any]) -> None:
        try:
            result = self.transaction(fn)
        except BaseException as exc:
            waiter.set(error=exc)
        else:
            waiter.set(result)

    def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one ``BEGIN IMMEDIATE`` transaction (writer thread only)."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    # appends --------------------------------------------------------------
    def append_now(self, entries: Sequence[PreparedEntry]) -> list[AppendResult]:
        """Append ``entries`` in one transaction of their own (writer thread only).

        First optimistically, relying on the unique indexes on request and record id; if an
        id is already in the ledger (a retried request) that transaction rolls back whole and
        a second one looks the repeats up first. Either way the check and the append are in
        one transaction (invariant: one entry per request id).
        """
        try:
            return self.transaction(lambda conn: append_entries(conn, entries, optimistic=True))
        except _Repeats:
            return self.transaction(lambda conn: append_entries(conn, entries))

    def _commit(self, pending: list[tuple[Any, ...]]) -> None:
        """Commit ``pending`` appends as one group; the one place a group commit succeeds or fails."""
        if not pending:
            return
        entries: list[PreparedEntry] = []
        for tag, payload, _ in pending:
            if tag == SUBMIT:
                entries.append(payload)
            else:
                entries.extend(payload)
        try:
            results = self.append_now(entries)
            if self.wal_checkpointer is not None:
                self.wal_checkpointer.committed(len(entries))
            self.fault = None
        except Exception as exc:
            self.fault = fault_of(exc) or self.fault
            if len(pending) == 1:
                _deliver(pending[0], None, exc)
                return
            log.warning("ledger group of %d failed (%r); retrying one by one", len(entries), exc)
            for item in pending:
                batch = [item[1]] if item[0] == SUBMIT else item[1]
                try:
                    one = self.append_now(batch)
                except Exception as item_exc:
                    self.fault = fault_of(item_exc) or self.fault
                    _deliver(item, None, item_exc)
                else:
                    self.fault = None
                    _deliver(item, one, None)
            return
        _deliver_all(pending, results)


class _Repeats(Exception):
    """The optimistic append met a request or record id already present; take the checked path."""


def _deliver_all(pending: list[tuple[Any, ...]], results: list[AppendResult]) -> None:
    at = 0
    for item in pending:
        tag, payload, target = item
        if tag == SUBMIT:
            try:
                target(results[at])
            except Exception:
                log.exception("ledger append callback raised; the record is committed regardless")
            at += 1
        else:
            n = len(payload)
            target.set(results[at : at + n], None)
            at += n


def _deliver(item: tuple[Any, ...], results: list[AppendResult] | None, exc: Exception | None) -> None:
    tag, _, target = item
    if tag == APPEND:
        target.set(results, exc)
        return
    callback: AppendCallback = target
    try:
        callback(exc if exc is not None else results[0])  # type: ignore[index]
    except Exception:
        log.exception("ledger append callback raised; the record is committed regardless")


def append_entries(
    conn: sqlite3.Connection, entries: Sequence[PreparedEntry], *, optimistic: bool = False
) -> list[AppendResult]:
    """Append inside the caller's transaction: dedupe, chain from the stored head, insert.

    With ``optimistic``, skip the look-up of ids already stored and raise ``_Repeats`` (the
    caller must roll back) if the insert meets one, or if ``entries`` repeat an id.
    """
    size, head = conn.execute("SELECT size, head FROM ledger_head WHERE id = 0").fetchone()
    if optimistic:
        n = len(entries)
        if len({e.columns[1] for e in entries}) != n or len({e.columns[0] for e in entries}) != n:
            raise _Repeats
        rows, last = chain_rows(entries, size, bytes.fromhex(head))
        try:
            _insert(conn, rows)
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise
            raise _Repeats from exc
        conn.execute("UPDATE ledger_head SET size = ?, head = ? WHERE id = 0", (size + n, last.hex()))
        return [AppendResult(e.record, row[0], row[-1], True) for e, row in zip(entries, rows, strict=True)]
    by_request, by_record = _existing(conn, entries)
    fresh: list[PreparedEntry] = []
    slots: list[int | AppendResult] = []  # index into fresh, or the stored first result
    first_request: dict[str, int] = {}
    first_record: dict[str, int] = {}
    for entry in entries:
        record_id, request_id = entry.columns[0], entry.columns[1]
        hit = by_request.get(request_id) or by_record.get(record_id)
        if hit is not None:
            slots.append(hit)
            continue
        index = first_request.get(request_id, first_record.get(record_id, -1))
        if index < 0:
            index = first_request[request_id] = first_record[record_id] = len(fresh)
            fresh.append(entry)
        slots.append(index)
    rows = []
    if fresh:
        rows, last = chain_rows(fresh, size, bytes.fromhex(head))
        _insert(conn, rows)
        conn.execute("UPDATE ledger_head SET size = ?, head = ? WHERE id = 0", (size + len(rows), last.hex()))
    created = [False] * len(fresh)
    out: list[AppendResult] = []
    for slot in slots:
        if isinstance(slot, AppendResult):
            out.append(slot)
            continue
        row = rows[slot]
        out.append(AppendResult(fresh[slot].record, row[0], row[-1], not created[slot]))
        created[slot] = True  # later repeats within this group return the first entry
    return out


def _insert(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert with a few multi-row statements of a few fixed sizes.

    Few statements: each step releases the GIL once, for a whole chunk; ``executemany``
    would release and re-acquire it per row, and while other threads run Python each
    re-acquire can wait a switch interval (5 ms), which would throttle the writer to a few
    hundred rows a second. Fixed sizes (powers of two, the last chunk padded with rows of
    NULLs that the statement filters out): compiling a statement of n rows costs ~30 µs a
    row, so it must come from the connection's statement cache, not be compiled per group.
    """
    top = _chunk_rows(conn)
    for start in range(0, len(rows), top):
        chunk = rows[start : start + top]
        size = _padded(len(chunk))
        params = list(chain.from_iterable(chunk))
        if size > len(chunk):
            params.extend(_nulls(size - len(chunk)))
        conn.execute(_insert_sql(size), params)


def _padded(n: int) -> int:
    """The smallest allowed statement size that holds ``n`` rows: 16, 32, 64, … (n ≥ 1)."""
    return max(16, 1 << (n - 1).bit_length())


@lru_cache(maxsize=16)
def _nulls(rows: int) -> tuple[None, ...]:
    return (None,) * (rows * len(COLUMNS))


def _chunk_rows(conn: sqlite3.Connection) -> int:
    """The largest power of two ≤ 2048 whose statement fits the bound-parameter limit."""
    fits = max(16, _param_limit(conn) // len(COLUMNS))
    return min(2048, 1 << (fits.bit_length() - 1))


@lru_cache(maxsize=16)
def _insert_sql(n: int) -> str:
    # A padding row is all NULLs; every ledger column is NOT NULL, so seq is NULL only there.
    values = ", ".join([_ROW] * n)
    return (
        f"INSERT INTO ledger ({', '.join(COLUMNS)}) SELECT * FROM (VALUES {values}) WHERE column1 IS NOT NULL"
    )


@lru_cache(maxsize=64)
def _lookup_sql(n: int) -> str:
    marks = ", ".join("?" * n)
    return (
        "SELECT seq, record_id, request_id, payload, entry_hash FROM ledger "
        f"WHERE request_id IN ({marks}) OR record_id IN ({marks})"
    )


def _param_limit(conn: sqlite3.Connection) -> int:
    return conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


def _existing(
    conn: sqlite3.Connection, entries: Sequence[PreparedEntry]
) -> tuple[dict[str, AppendResult], dict[str, AppendResult]]:
    """Entries already in the ledger with one of these request ids, or record ids."""
    found: tuple[dict[str, AppendResult], dict[str, AppendResult]] = ({}, {})
    per = max(1, min(4096, _param_limit(conn) // 2))
    for start in range(0, len(entries), per):
        chunk = entries[start : start + per]
        keys = [e.columns[1] for e in chunk] + [e.columns[0] for e in chunk]
        for seq, record_id, request_id, payload, entry_hash in conn.execute(_lookup_sql(len(chunk)), keys):
            result = AppendResult(record_from_payload(payload), seq, entry_hash, False)
            found[0][request_id] = found[1][record_id] = result
    return found


# health hook ----------------------------------------------------------------
def fault_of(exc: BaseException) -> str | None:
    """Why a ledger commit failed, for ``SqliteStore.health``; None for a bad record, not a bad disk.

    Only storage errors (``sqlite3.OperationalError``: disk full, I/O error, locked,
    read-only) make the ledger unhealthy; a record that violates a constraint fails alone.
    """
    if isinstance(exc, sqlite3.OperationalError | OSError):
        return f"{type(exc).__name__}: {exc}"
    return None


def closed_error() -> Unavailable:
    return Unavailable("the ledger store is closed; open a new SqliteStore to write to it")
