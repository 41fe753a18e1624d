"""The verifiable log over the ledger: checkpoints made, stored and proved against.

The database side is a ``LogDb``: ``SqliteLogDb`` here, ``pg_checkpoints.PgLogDb`` for PostgreSQL.

``CheckpointLog`` keeps the ledger's Merkle tree in memory (``TreeCache``), extends it from
the database as the ledger grows, signs checkpoints (``billing.checkpoints``) with the
active key (``billing.signing``) and stores them in the ``checkpoints`` table (migration
``0003_checkpoints``; append-only by trigger, like the ledger). ``CheckpointScheduler`` is
the background thread that makes one every ``interval_s`` when the ledger has grown.

Before a leaf enters the tree its payload is re-hashed and compared with the stored leaf
hash, and before a new checkpoint is signed the tree is checked against the newest stored
one; either failing raises LedgerIntegrityError instead of signing over a changed ledger.

Writes: a checkpoint row is inserted through ``write`` when one is given (the service passes
``SqliteStore.write``, so the store's one writer thread and connection make every write to
the file). Without one (the CLI, a process of its own) the log inserts on its own
connection, and SQLite's busy timeout (30 s) bounds how long it waits for another
process's writer, whose transactions last one group commit.

Cost, for a ledger of 1M entries: the cache holds 32 MB of leaf hashes plus ~2 MB of tile
roots; filling it at start reads every row once (seconds); after that a checkpoint, an
inclusion proof or a consistency proof is a few hundred hashes (well under a millisecond).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, TypeVar

from infermeter.billing.checkpoints import Checkpoint, CheckpointReport, sign_checkpoint, verify_checkpoints
from infermeter.billing.ledger import leaf_hash
from infermeter.billing.migrations import migrate
from infermeter.billing.signing import LedgerKeys
from infermeter.billing.store import VerifyReport
from infermeter.billing.tree_cache import TreeCache
from infermeter.core.errors import LedgerIntegrityError, NotFound
from infermeter.core.records import utc_now

log = logging.getLogger(__name__)
T = TypeVar("T")


class Transact(Protocol):
    """Runs ``fn(conn)`` in one write transaction and returns its result (``SqliteStore.write``)."""

    def __call__(self, fn: Callable[[sqlite3.Connection], T], /) -> T: ...


_CP_COLS = "number, origin, tree_size, root_hash, timestamp, key_id, signature"
_CHUNK = 4096  # rows fetched per step while filling the cache


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One stored entry as the log serves it: its position, tenant and canonical payload."""

    seq: int
    record_id: str
    tenant_id: str
    payload: str


LeafRow = tuple[int, str, str, str]  # seq, record_id, payload, stored leaf hash (hex)


class LogDb(Protocol):
    """What ``CheckpointLog`` needs from a database: SQLite here, PostgreSQL in ``pg_checkpoints``."""

    origin: str

    def scan_tail(self, start: int, on_rows: Callable[[list[LeafRow]], None]) -> int:
        """In one snapshot: the head's size, and every entry from ``start`` below it, in chunks."""
        ...

    def scan_all(self, on_payloads: Callable[[list[str]], None]) -> list[Checkpoint]:
        """In one snapshot: every payload in seq order, in chunks; then every checkpoint by number."""
        ...

    def insert(self, cp: Checkpoint) -> int:
        """Store a signed checkpoint; return the number it got."""
        ...

    def latest(self) -> Checkpoint | None: ...

    def at_size(self, tree_size: int) -> Checkpoint | None: ...

    def page(self, after: int, limit: int) -> list[Checkpoint]: ...

    def entry(self, record_or_request_id: str) -> LedgerEntry | None: ...

    def close(self) -> None: ...


class SqliteLogDb:
    """``LogDb`` on the SQLite store's file, with its own connection."""

    def __init__(self, path: Path, write: Transact | None = None) -> None:
        self._conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        migrate(self._conn)
        self._write: Transact = write if write is not None else self._own_transaction
        self.origin: str = self._conn.execute("SELECT origin FROM ledger_log WHERE id = 0").fetchone()[0]

    def scan_tail(self, start: int, on_rows: Callable[[list[LeafRow]], None]) -> int:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            (size,) = conn.execute("SELECT size FROM ledger_head WHERE id = 0").fetchone()
            cursor = conn.execute(
                "SELECT seq, record_id, payload, leaf_hash FROM ledger WHERE seq >= ? AND seq < ? "
                "ORDER BY seq",
                (start, size),
            )
            while rows := cursor.fetchmany(_CHUNK):
                on_rows(rows)
            return int(size)
        finally:
            conn.execute("COMMIT")

    def scan_all(self, on_payloads: Callable[[list[str]], None]) -> list[Checkpoint]:
        self._conn.execute("BEGIN")
        try:
            cursor = self._conn.execute("SELECT payload FROM ledger ORDER BY seq")
            while rows := cursor.fetchmany(_CHUNK):
                on_payloads([p for (p,) in rows])
            return [
                Checkpoint(*r)
                for r in self._conn.execute(f"SELECT {_CP_COLS} FROM checkpoints ORDER BY number")
            ]
        finally:
            self._conn.execute("COMMIT")

    def insert(self, cp: Checkpoint) -> int:
        row = _fields(cp)
        return self._write(lambda conn: _insert_checkpoint(conn, row))

    def _own_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """The write path without a store writer: one transaction on this connection."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self._conn)
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:  # a failed COMMIT (disk full) has rolled back already
                self._conn.execute("ROLLBACK")
            raise
        return result

    def latest(self) -> Checkpoint | None:
        return self._one(f"SELECT {_CP_COLS} FROM checkpoints ORDER BY tree_size DESC, number DESC LIMIT 1")

    def at_size(self, tree_size: int) -> Checkpoint | None:
        return self._one(
            f"SELECT {_CP_COLS} FROM checkpoints WHERE tree_size = ? ORDER BY number DESC LIMIT 1", tree_size
        )

    def page(self, after: int, limit: int) -> list[Checkpoint]:
        rows = self._conn.execute(
            f"SELECT {_CP_COLS} FROM checkpoints WHERE number > ? ORDER BY number LIMIT ?", (after, limit)
        ).fetchall()
        return [Checkpoint(*r) for r in rows]

    def _one(self, sql: str, *args: object) -> Checkpoint | None:
        row = self._conn.execute(sql, args).fetchone()
        return None if row is None else Checkpoint(*row)

    def entry(self, record_or_request_id: str) -> LedgerEntry | None:
        row = self._conn.execute(
            "SELECT seq, record_id, tenant_id, payload FROM ledger WHERE record_id = ? "
            "UNION ALL SELECT seq, record_id, tenant_id, payload FROM ledger WHERE request_id = ? "
            "LIMIT 1",
            (record_or_request_id, record_or_request_id),
        ).fetchone()
        return None if row is None else LedgerEntry(*row)

    def close(self) -> None:
        self._conn.close()


class CheckpointLog:
    """Checkpoints and proofs over one ledger. Thread-safe; ``close`` when done.

    ``db`` is the SQLite store's file, or a ``LogDb`` (e.g. ``pg_checkpoints.PgLogDb``).
    """

    def __init__(
        self,
        db: Path | str | LogDb,
        keys: LedgerKeys,
        *,
        clock: Callable[[], datetime] = utc_now,
        tile: int = 16,
        write: Transact | None = None,
    ) -> None:
        self.db: LogDb = SqliteLogDb(Path(db), write) if isinstance(db, str | Path) else db
        self.keys = keys
        self._clock = clock
        self._lock = threading.RLock()
        self._cache = TreeCache(tile)
        self.origin: str = self.db.origin

    # the tree ------------------------------------------------------------------------------
    def sync(self) -> int:
        """Extend the tree with entries committed since the last call; return its size."""
        with self._lock:
            expected = self._cache.size

            def take(rows: list[LeafRow]) -> None:
                nonlocal expected
                leaves: list[bytes] = []
                for seq, record_id, payload, stored in rows:
                    leaf = leaf_hash(payload.encode())
                    if seq != expected or leaf.hex() != stored:
                        why = (
                            f"is missing (the next row is {seq})"
                            if seq != expected
                            else "has a payload that does not match its stored leaf hash"
                        )
                        raise LedgerIntegrityError(
                            f"ledger entry {expected} ({record_id}) {why}; no checkpoint will be "
                            "signed over it: run `infermeter ledger verify`",
                            seq=expected,
                        )
                    leaves.append(leaf)
                    expected += 1
                self._cache.extend(leaves)

            size = self.db.scan_tail(self._cache.size, take)
            if expected != size:
                raise LedgerIntegrityError(
                    f"the ledger head records {size} entries but entries {expected}..{size - 1} are "
                    "missing; run `infermeter ledger verify`",
                    seq=expected,
                )
            return self._cache.size

    def root(self, size: int) -> bytes:
        with self._lock:
            self._ensure(size)
            return self._cache.root(size)

    def inclusion(self, index: int, size: int) -> list[bytes]:
        with self._lock:
            self._ensure(size)
            return self._cache.inclusion(index, size)

    def consistency(self, first: int, second: int) -> list[bytes]:
        with self._lock:
            self._ensure(second)
            return self._cache.consistency(first, second)

    def leaf(self, index: int) -> bytes:
        with self._lock:
            self._ensure(index + 1)
            return self._cache.leaf(index)

    def _ensure(self, size: int) -> None:
        if size > self._cache.size and self.sync() < size:
            raise NotFound(
                f"the ledger has {self._cache.size} entries, fewer than {size}; "
                "ask for a tree size it has reached"
            )

    # checkpoints ---------------------------------------------------------------------------
    def checkpoint(self) -> tuple[Checkpoint, bool]:
        """Sign the ledger as it is now; (checkpoint, created).

        Returns the newest checkpoint instead, with ``created`` False, when the ledger has not
        grown since and the active key signed it.
        """
        with self._lock:
            size = self.sync()
            latest = self.latest()
            key_id, key = self.keys.active()
            if latest is not None:
                if latest.tree_size > size:
                    raise LedgerIntegrityError(
                        f"checkpoint {latest.number} covers {latest.tree_size} entries but the ledger has "
                        f"{size}: entries were removed; run `infermeter ledger verify`",
                        seq=size,
                    )
                if self._cache.root(latest.tree_size).hex() != latest.root_hash:
                    raise LedgerIntegrityError(
                        f"the ledger no longer matches checkpoint {latest.number} (tree size "
                        f"{latest.tree_size}); refusing to sign over it: run `infermeter ledger verify`"
                    )
                if latest.tree_size == size and latest.key_id == key_id:
                    return latest, False
            cp = sign_checkpoint(key_id, key, self.origin, size, self._cache.root(size), self._clock())
            number = self.db.insert(cp)
            log.info("checkpoint %d: %d entries, root %s, key %s", number, size, cp.root_hash, key_id)
            return Checkpoint(number, *_fields(cp)), True

    def covering(self, seq: int) -> Checkpoint:
        """The newest checkpoint that includes entry ``seq``; made now if none does yet."""
        latest = self.latest()
        if latest is not None and latest.tree_size > seq:
            return latest
        return self.checkpoint()[0]

    def latest(self) -> Checkpoint | None:
        """The checkpoint of the largest tree (the newest of those)."""
        with self._lock:
            return self.db.latest()

    def at_size(self, tree_size: int) -> Checkpoint | None:
        """The newest checkpoint of exactly ``tree_size`` entries."""
        with self._lock:
            return self.db.at_size(tree_size)

    def page(self, *, after: int = 0, limit: int = 100) -> list[Checkpoint]:
        """Checkpoints in the order they were made, numbered after ``after``."""
        with self._lock:
            return self.db.page(after, limit)

    # entries -------------------------------------------------------------------------------
    def entry(self, record_or_request_id: str) -> LedgerEntry | None:
        """The entry of a record id (or request id), as stored."""
        with self._lock:
            return self.db.entry(record_or_request_id)

    # verification --------------------------------------------------------------------------
    def verify(self) -> CheckpointReport:
        """Every stored checkpoint against a tree rebuilt from the payloads (not the cache)."""
        with self._lock:
            tree = TreeCache(self._cache.tile)
            checkpoints = self.db.scan_all(
                lambda payloads: tree.extend(leaf_hash(p.encode()) for p in payloads)
            )
        return verify_checkpoints(checkpoints, tree.size, tree.root, self.keys.public_keys(), self.origin)

    def close(self) -> None:
        with self._lock:
            self.db.close()


def _insert_checkpoint(conn: sqlite3.Connection, row: tuple[str, int, str, str, str, str]) -> int:
    cursor = conn.execute(
        "INSERT INTO checkpoints (origin, tree_size, root_hash, timestamp, key_id, signature) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        row,
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


@dataclass(frozen=True, slots=True)
class StartupCheck:
    """What ``verify_at_start`` found: ``problem`` is None when the ledger verified."""

    entries: int
    problem: str | None
    first_bad_seq: int | None
    checkpoint: Checkpoint | None  # the checkpoint signed over the verified ledger


def verify_at_start(log_: CheckpointLog, chain: Callable[[], VerifyReport]) -> StartupCheck:
    """The check ``serve`` runs before it admits anything, then a checkpoint over what passed.

    ``chain`` is the store's ``verify`` (every entry's hashes, links and columns against the
    ledger head), so entries written after the last signed checkpoint (which no signature
    covers yet) are re-checked, and a cut or rewritten tail is named. Then the newest signed
    checkpoint's signature and root are checked against the tree rebuilt from the payloads.
    Only then is a new checkpoint signed, so the next start has a signed head covering all
    of it. Nothing is signed over a ledger that fails.
    """
    report = chain()
    if not report.ok:
        return StartupCheck(report.entries, report.message, report.first_bad_seq, None)
    try:
        size = log_.sync()
        latest = log_.latest()
        if latest is not None:
            cps = verify_checkpoints([latest], size, log_.root, log_.keys.public_keys(), log_.origin)
            if not cps.ok:
                return StartupCheck(size, cps.message, cps.first_bad_seq, None)
        if size == 0:
            return StartupCheck(0, None, None, latest)
        checkpoint, _ = log_.checkpoint()
    except LedgerIntegrityError as exc:
        return StartupCheck(report.entries, exc.message, exc.seq, None)
    return StartupCheck(size, None, None, checkpoint)


def _fields(cp: Checkpoint) -> tuple[str, int, str, str, str, str]:
    return cp.origin, cp.tree_size, cp.root_hash, cp.timestamp, cp.key_id, cp.signature


class CheckpointScheduler:
    """A daemon thread: fills the tree at start, then checkpoints every ``interval_s`` if grown."""

    def __init__(self, log_: CheckpointLog, interval_s: float) -> None:
        self.log = log_
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="infermeter-checkpoints", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _tick(self) -> None:
        try:
            size = self.log.sync()
            latest = self.log.latest()
            if size > (latest.tree_size if latest else 0):
                self.log.checkpoint()
        except Exception:  # keep the thread alive: the next tick tries again
            log.exception("scheduled ledger checkpoint failed")

    def _run(self) -> None:
        try:
            self.log.sync()
        except Exception:
            log.exception("filling the ledger's Merkle tree failed")
        while not self._stop.wait(self.interval_s):
            self._tick()

    def stop(self, *, final: bool = True) -> None:
        """Stop the thread; with ``final``, sign the ledger's last state before returning."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if final:
            self._tick()


__all__ = [
    "CheckpointLog",
    "CheckpointScheduler",
    "LedgerEntry",
    "LogDb",
    "SqliteLogDb",
    "StartupCheck",
    "Transact",
    "verify_at_start",
]
