"""The verifiable log over the SQLite ledger: checkpoints made, stored and proved against.

``CheckpointLog`` keeps the ledger's Merkle tree in memory (``TreeCache``), extends it from
the database as the ledger grows, signs checkpoints (``billing.checkpoints``) with the
active key (``billing.signing``) and stores them in the ``checkpoints`` table (migration
``0003_checkpoints``; append-only by trigger, like the ledger). ``CheckpointScheduler`` is
the background thread that makes one every ``interval_s`` when the ledger has grown.

Before a leaf enters the tree its payload is re-hashed and compared with the stored leaf
hash, and before a new checkpoint is signed the tree is checked against the newest stored
one; either failing raises LedgerIntegrityError instead of signing over a changed ledger.

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

from infermeter.billing.checkpoints import Checkpoint, CheckpointReport, sign_checkpoint, verify_checkpoints
from infermeter.billing.ledger import leaf_hash
from infermeter.billing.migrations import migrate
from infermeter.billing.signing import LedgerKeys
from infermeter.billing.store import VerifyReport
from infermeter.billing.tree_cache import TreeCache
from infermeter.core.errors import LedgerIntegrityError, NotFound
from infermeter.core.records import utc_now

log = logging.getLogger(__name__)

_CP_COLS = "number, origin, tree_size, root_hash, timestamp, key_id, signature"
_CHUNK = 4096  # rows fetched per step while filling the cache


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One stored entry as the log serves it: its position, tenant and canonical payload."""

    seq: int
    record_id: str
    tenant_id: str
    payload: str


class CheckpointLog:
    """Checkpoints and proofs over one SQLite ledger. Thread-safe; ``close`` when done."""

    def __init__(
        self,
        db_path: Path | str,
        keys: LedgerKeys,
        *,
        clock: Callable[[], datetime] = utc_now,
        tile: int = 16,
    ) -> None:
        self.path = Path(db_path)
        self.keys = keys
        self._clock = clock
        self._lock = threading.RLock()
        self._cache = TreeCache(tile)
        self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        migrate(self._conn)
        self.origin: str = self._conn.execute("SELECT origin FROM ledger_log WHERE id = 0").fetchone()[0]

    # the tree ------------------------------------------------------------------------------
    def sync(self) -> int:
        """Extend the tree with entries committed since the last call; return its size."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                (size,) = conn.execute("SELECT size FROM ledger_head WHERE id = 0").fetchone()
                start = self._cache.size
                cursor = conn.execute(
                    "SELECT seq, record_id, payload, leaf_hash FROM ledger WHERE seq >= ? AND seq < ? "
                    "ORDER BY seq",
                    (start, size),
                )
                expected = start
                while rows := cursor.fetchmany(_CHUNK):
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
                if expected != size:
                    raise LedgerIntegrityError(
                        f"the ledger head records {size} entries but entries {expected}..{size - 1} are "
                        "missing; run `infermeter ledger verify`",
                        seq=expected,
                    )
            finally:
                conn.execute("COMMIT")
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
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._conn.execute(
                    "INSERT INTO checkpoints (origin, tree_size, root_hash, timestamp, key_id, signature) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (cp.origin, cp.tree_size, cp.root_hash, cp.timestamp, cp.key_id, cp.signature),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # a failed COMMIT (disk full) has rolled back already
                    self._conn.execute("ROLLBACK")
                raise
            number = cursor.lastrowid
            assert number is not None
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
        return self._one(f"SELECT {_CP_COLS} FROM checkpoints ORDER BY tree_size DESC, number DESC LIMIT 1")

    def at_size(self, tree_size: int) -> Checkpoint | None:
        """The newest checkpoint of exactly ``tree_size`` entries."""
        return self._one(
            f"SELECT {_CP_COLS} FROM checkpoints WHERE tree_size = ? ORDER BY number DESC LIMIT 1", tree_size
        )

    def page(self, *, after: int = 0, limit: int = 100) -> list[Checkpoint]:
        """Checkpoints in the order they were made, numbered after ``after``."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_CP_COLS} FROM checkpoints WHERE number > ? ORDER BY number LIMIT ?", (after, limit)
            ).fetchall()
        return [Checkpoint(*r) for r in rows]

    def _one(self, sql: str, *args: object) -> Checkpoint | None:
        with self._lock:
            row = self._conn.execute(sql, args).fetchone()
        return None if row is None else Checkpoint(*row)

    # entries -------------------------------------------------------------------------------
    def entry(self, record_or_request_id: str) -> LedgerEntry | None:
        """The entry of a record id (or request id), as stored."""
        with self._lock:
            row = self._conn.execute(
                "SELECT seq, record_id, tenant_id, payload FROM ledger WHERE record_id = ? "
                "UNION ALL SELECT seq, record_id, tenant_id, payload FROM ledger WHERE request_id = ? "
                "LIMIT 1",
                (record_or_request_id, record_or_request_id),
            ).fetchone()
        return None if row is None else LedgerEntry(*row)

    # verification --------------------------------------------------------------------------
    def verify(self) -> CheckpointReport:
        """Every stored checkpoint against a tree rebuilt from the payloads (not the cache)."""
        with self._lock:
            tree = TreeCache(self._cache.tile)
            self._conn.execute("BEGIN")
            try:
                cursor = self._conn.execute("SELECT payload FROM ledger ORDER BY seq")
                while rows := cursor.fetchmany(_CHUNK):
                    tree.extend(leaf_hash(p.encode()) for (p,) in rows)
                checkpoints = [
                    Checkpoint(*r)
                    for r in self._conn.execute(f"SELECT {_CP_COLS} FROM checkpoints ORDER BY number")
                ]
            finally:
                self._conn.execute("COMMIT")
        return verify_checkpoints(checkpoints, tree.size, tree.root, self.keys.public_keys(), self.origin)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


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


__all__ = ["CheckpointLog", "CheckpointScheduler", "LedgerEntry", "StartupCheck", "verify_at_start"]
