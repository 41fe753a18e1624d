"""A C2SP witness (c2sp.org/tlog-witness): cosigns a log's checkpoints only as the log grows.

The log sends ``add-checkpoint`` requests::

    old <tree size the witness last cosigned for this origin, 0 if none>\\n
    <base64 consistency proof hash>\\n …     RFC 6962 proof from that size to the new one (≤ 63)
    \\n
    <the new checkpoint, a signed note>

and the witness answers, checking in this order:

- 400 the request is malformed, or ``old`` is larger than the checkpoint's size;
- 404 the checkpoint's origin is not a log this witness is configured for;
- 403 no signature on it verifies with that log's keys, or one by a known key fails;
- 409 ``old`` is not the size the witness last cosigned (body: that size in decimal and a
  newline, content type ``text/x.tlog.size``);
- 422 a checkpoint of size 0 whose root is not the empty tree's; a proof when ``old`` is 0; a
  consistency proof that does not prove the new tree extends the cosigned one; or the same
  size as the cosigned one with another root;
- 200 the cosignature line(s): tlog-cosignature/v1 (``billing.signed_note.cosign``).

So a witness never cosigns two trees that are not one the prefix of the other: a log that
was rolled back or forked cannot get a cosignature again until it is consistent with what
this witness saw. ``checkpoint(origin_hash)`` is the monitoring view (``GET
<prefix>/<hex SHA-256 of the origin>/checkpoint``): the newest checkpoint it cosigned, with
the log's verified signatures and its own cosignature. State lives in ``<dir>/witness.db``
(one row per origin, updated in one transaction with the check); the key in
``<dir>/witness.pem`` (0600), made on first start.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infermeter.billing import signed_note
from infermeter.billing.merkle import EMPTY_ROOT, verify_consistency
from infermeter.billing.signed_note import (
    COSIGNATURE_V1,
    ED25519,
    Note,
    NoteError,
    NoteSignature,
    VerifierKey,
)
from infermeter.billing.tlog_checkpoint import parse_checkpoint
from infermeter.core.errors import ConfigError

SIZE_TYPE = "text/x.tlog.size"
MAX_PROOF = 63  # tlog-witness: a client MUST NOT send more


@dataclass(frozen=True, slots=True)
class AddCheckpoint:
    old: int
    proof: tuple[bytes, ...]
    checkpoint: bytes

    def encode(self) -> bytes:
        lines = [f"old {self.old}", *(base64.b64encode(p).decode() for p in self.proof)]
        return ("".join(f"{line}\n" for line in lines) + "\n").encode() + self.checkpoint


def parse_request(body: bytes) -> AddCheckpoint:
    """An add-checkpoint body's parts; NoteError naming what is wrong."""
    head, sep, checkpoint = body.partition(b"\n\n")
    if not sep:
        raise NoteError(
            "an add-checkpoint body is 'old N', the proof lines, a blank line, then the checkpoint"
        )
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise NoteError("the old line and proof lines are ASCII") from None
    size_text = lines[0].removeprefix("old ")
    if lines[0] == size_text or not size_text.isdigit() or (size_text[0] == "0" and size_text != "0"):
        raise NoteError(f"the first line {lines[0]!r} is not 'old <decimal tree size>'")
    proof: list[bytes] = []
    for line in lines[1:]:
        h = signed_note.b64(line, f"consistency proof line {line[:60]!r}")
        if len(h) != 32:
            raise NoteError(f"consistency proof line {line[:60]!r} is not a base64 32-byte hash")
        proof.append(h)
    if len(proof) > MAX_PROOF:
        raise NoteError(f"a consistency proof has at most {MAX_PROOF} hashes")
    return AddCheckpoint(int(size_text), tuple(proof), checkpoint)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The witness key at ``path`` (PKCS#8 PEM, owner-only), made on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return key
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path} is readable by others; a witness key must be owner-only: chmod 600 {path}")
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key; move it away to make a new one")
    return loaded


class Witness:
    """One witness: its name and key, the logs it watches, and what it cosigned of each."""

    def __init__(
        self,
        directory: Path | str,
        name: str,
        logs: Sequence[VerifierKey],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._key = load_or_create_key(self.dir / "witness.pem")
        self.verifier_key = signed_note.verifier_for(name, self._key, COSIGNATURE_V1)
        (self.dir / "witness.vkey").write_text(self.verifier_key.text() + "\n")
        self.logs: dict[str, list[VerifierKey]] = {}
        for key in logs:
            if key.key_type != ED25519:
                raise ConfigError(f"log key {key.text()} is not an Ed25519 (type 0x01) checkpoint key")
            self.logs.setdefault(key.name, []).append(key)
        self._clock = clock
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.dir / "witness.db", isolation_level=None, check_same_thread=False)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS logs (origin TEXT PRIMARY KEY, tree_size INTEGER NOT NULL, "
            "root_hash BLOB NOT NULL, checkpoint TEXT NOT NULL)"
        )

    def latest(self, origin: str) -> tuple[int, bytes] | None:
        """The size and root this witness last cosigned for ``origin``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT tree_size, root_hash FROM logs WHERE origin = ?", (origin,)
            ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def add_checkpoint(self, body: bytes) -> Reply:
        """Handle one add-checkpoint request (the HTTP layer only moves bytes)."""
        try:
            req = parse_request(body)
            note = signed_note.parse(req.checkpoint)
            head = parse_checkpoint(note.text)
        except NoteError as exc:
            return Reply(400, f"malformed add-checkpoint request: {exc}\n")
        keys = self.logs.get(head.origin)
        if keys is None:
            return Reply(404, f"this witness does not watch a log with origin {head.origin!r}\n")
        try:
            signed = signed_note.verified_by(note, keys)
        except NoteError as exc:
            return Reply(403, f"{exc}\n")
        if not signed:
            return Reply(403, f"the checkpoint is not signed by a known key of {head.origin}\n")
        if req.old > head.size:
            return Reply(400, f"old size {req.old} is larger than the checkpoint's size {head.size}\n")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                ids = {(k.name, k.key_id) for k in signed}
                verified = [s for s in note.signatures if (s.name, s.key_id) in ids]
                reply = self._advance(req, note, verified, head.origin, head.size, head.root)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return reply

    def _advance(
        self,
        req: AddCheckpoint,
        note: Note,
        verified: Sequence[NoteSignature],
        origin: str,
        size: int,
        root: bytes,
    ) -> Reply:
        row = self._conn.execute(
            "SELECT tree_size, root_hash FROM logs WHERE origin = ?", (origin,)
        ).fetchone()
        have_size, have_root = (0, EMPTY_ROOT) if row is None else (int(row[0]), bytes(row[1]))
        if req.old != have_size:
            return Reply(409, f"{have_size}\n", SIZE_TYPE)
        if size == 0 and root != EMPTY_ROOT:
            return Reply(422, "a checkpoint of size 0 must have the empty tree's root, SHA-256 of ''\n")
        if req.old == 0 and req.proof:
            return Reply(422, f"from old size 0 the consistency proof is empty, not {len(req.proof)} lines\n")
        if req.old == size and root != have_root:
            return Reply(
                422, f"tree size {size} was cosigned with another root: this checkpoint forks the log\n"
            )
        if not verify_consistency(req.old, size, have_root, root, req.proof):
            return Reply(422, f"the consistency proof from tree size {req.old} to {size} does not verify\n")
        sig = signed_note.cosign(note.text, self.name, self._key, int(self._clock()))
        self._conn.execute(
            "INSERT INTO logs (origin, tree_size, root_hash, checkpoint) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (origin) DO UPDATE SET tree_size = excluded.tree_size, "
            "root_hash = excluded.root_hash, checkpoint = excluded.checkpoint",
            (origin, size, root, Note(note.text, (*verified, sig)).encode().decode()),
        )
        return Reply(200, sig.line())

    def checkpoint(self, origin_hash: str) -> Reply:
        """The monitoring view: the newest checkpoint cosigned for the origin whose SHA-256 (hex,
        lowercase) is ``origin_hash``, with the log's verified signatures and this cosignature."""
        with self._lock:
            rows = self._conn.execute("SELECT origin, checkpoint FROM logs").fetchall()
        for origin, note in rows:
            if hashlib.sha256(origin.encode()).hexdigest() == origin_hash:
                return Reply(200, note)
        return Reply(
            404, f"this witness has cosigned no checkpoint of a log whose origin hashes to {origin_hash!r}\n"
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()


__all__ = ["SIZE_TYPE", "AddCheckpoint", "Reply", "Witness", "load_or_create_key", "parse_request"]
