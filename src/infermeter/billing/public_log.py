"""The public, C2SP-shaped view of the ledger: salted entries, signed-note checkpoints, tiles.

The ledger's own tree (``billing.checkpoint_log``) commits to the entries themselves, and its
checkpoints and receipts keep verifying as before. This log is a second RFC 6962 tree over
the same entries in the same order, whose leaves are salted commitments to them
(``billing.commitments``), so its tiles can be published without revealing any tenant's
usage. Each entry's salt is drawn when the entry first enters this tree and stored in
``log_salts`` (append-only, ``INSERT OR IGNORE`` so concurrent processes agree on one).

Checkpoints are C2SP signed notes (``billing.tlog_checkpoint``) signed by the ledger's active
key under the key name ``origin``; ``LogPublisher`` signs one at most once a second while
the log grows (and at once on start, over entries no checkpoint covers yet), then hands it
to the configured witnesses (``billing.witness``) and stores their cosignatures.

Before a leaf enters the tree its payload is checked against the stored leaf hash; before a
checkpoint is signed the tree is checked against the newest signed one. Either failing
raises LedgerIntegrityError and nothing is signed.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from infermeter.billing import signed_note
from infermeter.billing.commitments import commitment, new_salt
from infermeter.billing.ledger import leaf_hash
from infermeter.billing.migrations import migrate
from infermeter.billing.signed_note import ED25519, Note, NoteSignature, VerifierKey
from infermeter.billing.signing import LedgerKeys
from infermeter.billing.tiles import TileRef, encode_entry_bundle, tile_width
from infermeter.billing.tlog_checkpoint import TreeHead
from infermeter.billing.tree_cache import TreeCache
from infermeter.core.errors import LedgerIntegrityError

log = logging.getLogger(__name__)

_CHUNK = 4096


@dataclass(frozen=True, slots=True)
class LogCheckpoint:
    """A stored signed-note checkpoint (the log's signature only; see ``cosigned``)."""

    number: int
    tree_size: int
    root_hash: str
    note: str


class PublicLog:
    """The salted tree, its signed-note checkpoints, tiles and cosignatures. Thread-safe."""

    def __init__(self, db_path: Path | str, keys: LedgerKeys) -> None:
        self.path = Path(db_path)
        self.keys = keys
        self._lock = threading.RLock()
        self._cache = TreeCache(16)
        self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        migrate(self._conn)
        self.origin: str = self._conn.execute("SELECT origin FROM ledger_log WHERE id = 0").fetchone()[0]

    # keys ----------------------------------------------------------------------------------
    def verifier_keys(self) -> list[VerifierKey]:
        """Every ledger key (active and previous) as a signed-note verifier key named ``origin``."""
        return [VerifierKey(self.origin, ED25519, k.public_key) for k in self.keys.list()]

    def active_verifier_key(self) -> VerifierKey:
        _, key = self.keys.active()
        return signed_note.verifier_for(self.origin, key)

    # the tree ------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        with self._lock:
            return self._cache.size

    def sync(self) -> int:
        """Extend the tree with the entries committed since; draw their salts; return its size."""
        with self._lock:
            conn = self._conn
            (size,) = conn.execute("SELECT size FROM ledger_head WHERE id = 0").fetchone()
            start = self._cache.size
            if size > start:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(
                        "INSERT OR IGNORE INTO log_salts (seq, salt) VALUES (?, ?)",
                        ((s, new_salt()) for s in range(start, size)),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            expected = start
            cursor = conn.execute(
                "SELECT l.seq, l.record_id, l.payload, l.leaf_hash, s.salt FROM ledger l "
                "LEFT JOIN log_salts s ON s.seq = l.seq WHERE l.seq >= ? AND l.seq < ? ORDER BY l.seq",
                (start, size),
            )
            while rows := cursor.fetchmany(_CHUNK):
                leaves: list[bytes] = []
                for seq, record_id, payload, stored, salt in rows:
                    if seq != expected or salt is None or leaf_hash(payload.encode()).hex() != stored:
                        raise LedgerIntegrityError(
                            f"ledger entry {expected} ({record_id}) is missing or does not match its "
                            "stored leaf hash; nothing is signed over it: run `infermeter ledger verify`",
                            seq=expected,
                        )
                    leaves.append(_leaf(salt, payload))
                    expected += 1
                self._cache.extend(leaves)
            if expected != size:
                raise LedgerIntegrityError(
                    f"the ledger head records {size} entries but entries {expected}..{size - 1} are missing",
                    seq=expected,
                )
            return self._cache.size

    def root(self, size: int) -> bytes:
        with self._lock:
            return self._cache.root(size)

    def inclusion(self, index: int, size: int) -> list[bytes]:
        with self._lock:
            return self._cache.inclusion(index, size)

    def consistency(self, first: int, second: int) -> list[bytes]:
        with self._lock:
            return self._cache.consistency(first, second)

    def leaf(self, seq: int) -> bytes:
        with self._lock:
            if seq >= self._cache.size:
                self.sync()
            return self._cache.leaf(seq)

    def salt(self, seq: int) -> bytes:
        """The salt of entry ``seq`` (syncing first if the entry is new)."""
        with self._lock:
            if seq >= self._cache.size:
                self.sync()
            row = self._conn.execute("SELECT salt FROM log_salts WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise LedgerIntegrityError(f"ledger entry {seq} has no salt in log_salts", seq=seq)
        return bytes(row[0])

    # tiles ---------------------------------------------------------------------------------
    def tile(self, ref: TileRef, tree_size: int) -> bytes | None:
        """The tile's bytes as of a tree of ``tree_size``; None when the tree has no such tile."""
        with self._lock:
            level = 0 if ref.level is None else ref.level
            if tile_width(level, ref.index, min(tree_size, self._cache.size)) < ref.width:
                return None
            first = ref.index * 256
            if ref.level is None:
                rows = self._conn.execute(
                    "SELECT seq, salt FROM log_salts WHERE seq >= ? AND seq < ? ORDER BY seq",
                    (first, first + ref.width),
                ).fetchall()
                payloads = dict(
                    self._conn.execute(
                        "SELECT seq, payload FROM ledger WHERE seq >= ? AND seq < ?",
                        (first, first + ref.width),
                    ).fetchall()
                )
                entries = [commitment(bytes(salt), payloads[seq].encode()) for seq, salt in rows]
                return encode_entry_bundle(entries)
            # TreeCache(16) level 2L holds the roots of complete 256**L-leaf subtrees
            return b"".join(self._cache.hashes(level * 2, first, first + ref.width))

    # checkpoints ---------------------------------------------------------------------------
    def latest(self) -> LogCheckpoint | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT number, tree_size, root_hash, note FROM log_checkpoints "
                "ORDER BY tree_size DESC, number DESC LIMIT 1"
            ).fetchone()
        return None if row is None else LogCheckpoint(*row)

    def checkpoints(self) -> list[LogCheckpoint]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT number, tree_size, root_hash, note FROM log_checkpoints ORDER BY number"
            ).fetchall()
        return [LogCheckpoint(*r) for r in rows]

    def publish(self) -> tuple[LogCheckpoint, bool]:
        """Sign a checkpoint of the tree now, unless the newest already covers it; (it, created)."""
        with self._lock:
            size = self.sync()
            latest = self.latest()
            if latest is not None:
                if latest.tree_size > size or self._cache.root(latest.tree_size).hex() != latest.root_hash:
                    raise LedgerIntegrityError(
                        f"the ledger no longer matches public checkpoint {latest.number} (tree size "
                        f"{latest.tree_size}, the ledger has {size}); refusing to sign: run "
                        "`infermeter ledger verify`",
                        seq=min(size, latest.tree_size),
                    )
                if latest.tree_size == size:
                    return latest, False
            _, key = self.keys.active()
            text = TreeHead(self.origin, size, self._cache.root(size)).text()
            note = Note(text, (signed_note.sign(text, self.origin, key),)).encode().decode()
            root = self._cache.root(size).hex()
            cursor = self._conn.execute(
                "INSERT INTO log_checkpoints (tree_size, root_hash, note) VALUES (?, ?, ?)",
                (size, root, note),
            )
            assert cursor.lastrowid is not None
            log.debug("public checkpoint %d: %d entries", cursor.lastrowid, size)
            return LogCheckpoint(cursor.lastrowid, size, root, note), True

    def cosigned(self, cp: LogCheckpoint) -> Note:
        """``cp``'s note with every cosignature stored for it."""
        with self._lock:
            lines = [line for (line,) in self._conn.execute(
                "SELECT line FROM log_cosignatures WHERE number = ? ORDER BY witness", (cp.number,)
            )]  # fmt: skip
        note = signed_note.parse(cp.note)
        extra = signed_note.parse(note.text + "\n" + "".join(lines)).signatures if lines else ()
        return note.with_signatures(extra)

    def add_cosignature(self, cp: LogCheckpoint, witness: str, sig: NoteSignature) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO log_cosignatures (number, witness, line) VALUES (?, ?, ?)",
                (cp.number, witness, sig.line()),
            )

    def cosigned_size(self, witness: str) -> int:
        """The largest tree size ``witness`` has cosigned (0: none)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT MAX(c.tree_size) FROM log_cosignatures s JOIN log_checkpoints c "
                "ON c.number = s.number WHERE s.witness = ?",
                (witness,),
            ).fetchone()
        return int(row[0] or 0)

    def rebuilt(self) -> tuple[TreeCache, int]:
        """A tree rebuilt from the payloads and salts (not the cache), and the ledger's row count."""
        tree = TreeCache(16)
        with self._lock:
            rows = self._conn.execute(
                "SELECT l.payload, s.salt FROM ledger l JOIN log_salts s ON s.seq = l.seq ORDER BY l.seq"
            ).fetchall()
            (count,) = self._conn.execute("SELECT COUNT(*) FROM ledger").fetchone()
        tree.extend(_leaf(salt, payload) for payload, salt in rows)
        return tree, int(count)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _leaf(salt: bytes, payload: str) -> bytes:
    return leaf_hash(commitment(bytes(salt), payload.encode()))


__all__ = ["LogCheckpoint", "PublicLog"]
