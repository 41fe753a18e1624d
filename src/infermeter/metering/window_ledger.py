"""Window-derived meters, written as windows close, joined to usage records by request id.

A usage record is acknowledged once its own durable write (the ledger) is done. Window
values (energy, SM-weighted and DRAM-weighted device time) arrive later, every ~100 ms, on
the sampler thread, and go to two append-only side tables in the service's SQLite file:

    window_usage  one row per (request, window): its energy (mJ) and device / weighted ns
    window_pool   one row per window: energy, idle, unattributed pool, activities, guards

Writes go through ``write`` when one is given: the service passes the store's writer
(``SqliteStore.write``), so one thread and one connection write the file, each window in a
transaction of its own, committed as durably as the store's records. Without one (tests,
tools) the ledger writes on a connection of its own with ``synchronous=NORMAL``; a lock
serializes this object's writers on that connection, and no reader ever waits on it.

Neither table is ever updated or deleted from. A crash between a record and its windows
loses nothing acknowledged: the record is intact, and its window values are simply missing
or partial (``WindowMeters.windows`` says how many were joined). Weighted times are stored
as integer nanoseconds (the attribution rounds to 10^-6 ms = 1 ns), so sums are exact.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Protocol, TypeVar

from infermeter.metering.sampler import ClosedWindow

T = TypeVar("T")


class Transact(Protocol):
    """Runs ``fn(conn)`` in one write transaction and returns its result (``SqliteStore.write``)."""

    def __call__(self, fn: Callable[[sqlite3.Connection], T], /) -> T: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS window_usage (
    request_id TEXT NOT NULL,
    window_start_ns INTEGER NOT NULL,
    window_end_ns INTEGER NOT NULL,
    source TEXT NOT NULL,
    energy_mj INTEGER NOT NULL,
    device_ns INTEGER NOT NULL,
    weighted_device_ns INTEGER,  -- device time x SM activity; NULL: activity rejected
    dram_weighted_ns INTEGER,    -- device time x DRAM activity; NULL: activity rejected
    PRIMARY KEY (request_id, source, window_start_ns)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS window_pool (
    id INTEGER PRIMARY KEY,
    window_start_ns INTEGER NOT NULL,
    window_end_ns INTEGER NOT NULL,
    source TEXT NOT NULL,
    energy_mj INTEGER NOT NULL,
    idle_mj INTEGER NOT NULL,
    attributed_energy_mj INTEGER NOT NULL,
    unattributed_energy_mj INTEGER NOT NULL,
    sm_activity REAL,
    tensor_activity REAL,
    dram_activity REAL,
    memory_used_mb INTEGER,
    steps INTEGER NOT NULL,
    valid INTEGER NOT NULL,
    reason TEXT,
    recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS window_pool_start ON window_pool (window_start_ns);
"""


@dataclass(frozen=True, slots=True)
class WindowMeters:
    """A request's window-derived totals so far (partial if windows are still to come)."""

    request_id: str
    windows: int  # windows joined
    weighted_windows: int  # of which had valid activity
    energy_mj: int
    device_ms: Decimal
    weighted_device_ms: Decimal | None  # Σ device ms x SM activity over valid windows
    dram_score: Decimal | None  # Σ device ms x DRAM activity over valid windows


@dataclass(frozen=True, slots=True)
class PoolTotals:
    """The operator's view: energy metered, attributed and left in the unattributed pool."""

    windows: int
    valid: int
    rejected: int
    energy_mj: int
    idle_mj: int
    attributed_energy_mj: int
    unattributed_energy_mj: int


def _ns(ms: Decimal) -> int:
    return int(ms.scaleb(6).to_integral_value())


def _ms(ns: int) -> Decimal:
    return Decimal(ns).scaleb(-6)


class WindowLedger:
    """Append-only window tables next to the usage ledger, in the same SQLite file."""

    def __init__(self, path: Path | str, write: Transact | None = None) -> None:
        # Reads: a connection of its own; window reads never wait for the writer (WAL).
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA busy_timeout = 10000")
        self._lock = threading.Lock()  # guards self._conn (reads) only
        self._own: sqlite3.Connection | None = None
        self._own_lock = threading.Lock()
        if write is None:
            own = self._own = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            own.execute("PRAGMA busy_timeout = 10000")
            own.execute("PRAGMA journal_mode = WAL")
            # NORMAL: a power loss may drop the last windows, never an acknowledged record.
            own.execute("PRAGMA synchronous = NORMAL")
        self._write: Transact = write if write is not None else self._own_transaction
        self._write(_create_tables)
        self.written = 0

    def _own_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._own
        assert conn is not None
        with self._own_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    def write(self, window: ClosedWindow) -> None:
        """Append one closed window: its per-request rows and its pool row, in one commit."""
        a = window.attribution
        rows = []
        for rid, device_ms in a.device_ms.items():
            sm = None if a.sm_weighted_ms is None else _ns(a.sm_weighted_ms[rid])
            dram = None if a.dram_weighted_ms is None else _ns(a.dram_weighted_ms[rid])
            rows.append(
                (
                    rid,
                    a.window_start_ns,
                    a.window_end_ns,
                    window.source,
                    a.energy_shares_mj.get(rid, 0),
                    _ns(device_ms),
                    sm,
                    dram,
                )
            )
        pool = (
            a.window_start_ns,
            a.window_end_ns,
            window.source,
            a.energy_mj,
            a.idle_mj,
            a.energy_mj - a.unattributed_energy_mj,
            a.unattributed_energy_mj,
            window.sm_activity,
            window.tensor_activity,
            window.dram_activity,
            window.memory_used_mb,
            window.steps,
            int(window.valid),
            window.reason,
            datetime.now(UTC).isoformat(timespec="milliseconds"),
        )
        self._write(lambda conn: _insert_window(conn, rows, pool))
        self.written += 1

    def meters(self, request_id: str) -> WindowMeters | None:
        """The request's joined window totals; None if no window has named it (yet)."""
        return self.meters_many([request_id]).get(request_id)

    def meters_many(self, request_ids: Iterable[str]) -> dict[str, WindowMeters]:
        """Joined totals for several requests (absent ids have no window rows)."""
        ids = list(dict.fromkeys(request_ids))
        out: dict[str, WindowMeters] = {}
        for i in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._conn.execute(
                    "SELECT request_id, COUNT(*), COUNT(weighted_device_ns), SUM(energy_mj),"
                    " SUM(device_ns), SUM(weighted_device_ns), SUM(dram_weighted_ns)"
                    f" FROM window_usage WHERE request_id IN ({marks}) GROUP BY request_id",
                    chunk,
                ).fetchall()
            for rid, n, n_weighted, energy, device, weighted, dram in rows:
                out[rid] = WindowMeters(
                    rid,
                    n,
                    n_weighted,
                    int(energy),
                    _ms(device),
                    None if weighted is None else _ms(weighted),
                    None if dram is None else _ms(dram),
                )
        return out

    def pool(self) -> PoolTotals:
        """Totals over every window recorded: what was metered and what stayed unattributed."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(valid), 0),"
                " COALESCE(SUM(CASE WHEN valid = 0 AND reason != 'no_activity' THEN 1 END), 0),"
                " COALESCE(SUM(energy_mj), 0), COALESCE(SUM(idle_mj), 0),"
                " COALESCE(SUM(attributed_energy_mj), 0),"
                " COALESCE(SUM(unattributed_energy_mj), 0) FROM window_pool"
            ).fetchone()
        return PoolTotals(*(int(v) for v in row))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        if self._own is not None:
            with self._own_lock:
                self._own.close()


def _create_tables(conn: sqlite3.Connection) -> None:
    """SCHEMA, one statement at a time (``executescript`` would commit the caller's transaction)."""
    statement = ""
    for part in SCHEMA.split(";"):
        statement += part + ";"
        if sqlite3.complete_statement(statement):  # not a ";" inside a comment
            if statement.strip(" \n;"):
                conn.execute(statement)
            statement = ""


def _insert_window(
    conn: sqlite3.Connection, rows: Sequence[tuple[object, ...]], pool: tuple[object, ...]
) -> None:
    conn.executemany("INSERT OR IGNORE INTO window_usage VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute(
        "INSERT INTO window_pool (window_start_ns, window_end_ns, source, energy_mj,"
        " idle_mj, attributed_energy_mj, unattributed_energy_mj, sm_activity,"
        " tensor_activity, dram_activity, memory_used_mb, steps, valid, reason,"
        " recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        pool,
    )


__all__ = ["SCHEMA", "PoolTotals", "Transact", "WindowLedger", "WindowMeters"]
