"""Signed tree heads (checkpoints) of the ledger's Merkle tree: their format, signing, checks.

A checkpoint's signed body is the canonical JSON (sorted keys, no spaces, UTF-8) of

    {"format": "infermeter.checkpoint.v1", "origin": <log id>, "tree_size": <n>,
     "root_hash": <hex MTH of entries 0..n-1>, "timestamp": <ISO 8601 UTC>, "key_id": <id>}

signed with Ed25519 by the key ``key_id`` names (``billing.signing``); the signature travels
base64-encoded beside the body. ``origin`` names the log, so a checkpoint of one
installation is never mistaken for another's. ``number`` (the checkpoint's place in the
store) is not signed: it only helps people refer to one.

Everything here is pure: values in, values out. Storing checkpoints and making them on a
schedule is ``billing.checkpoint_log``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infermeter.billing.signing import verify_signature
from infermeter.core.records import canonical_json, iso

CHECKPOINT_FORMAT = "infermeter.checkpoint.v1"


def checkpoint_body(origin: str, tree_size: int, root_hash: str, timestamp: str, key_id: str) -> bytes:
    """The exact bytes a checkpoint's signature covers."""
    return canonical_json({
        "format": CHECKPOINT_FORMAT, "origin": origin, "tree_size": tree_size,
        "root_hash": root_hash, "timestamp": timestamp, "key_id": key_id,
    })  # fmt: skip


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed tree head. ``root_hash`` is lowercase hex; ``signature`` is base64."""

    number: int
    origin: str
    tree_size: int
    root_hash: str
    timestamp: str
    key_id: str
    signature: str

    def body(self) -> bytes:
        return checkpoint_body(self.origin, self.tree_size, self.root_hash, self.timestamp, self.key_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "number": self.number, "origin": self.origin,
            "tree_size": self.tree_size, "root_hash": self.root_hash, "timestamp": self.timestamp,
            "key_id": self.key_id, "signature": self.signature,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> Checkpoint:
        """Parse ``to_json``'s shape; ValueError naming the first bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"a checkpoint is a JSON object, got {type(data).__name__}")
        if data.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {data.get('format')!r} is not {CHECKPOINT_FORMAT!r}")
        types: dict[str, type] = {
            "origin": str,
            "tree_size": int,
            "root_hash": str,
            "timestamp": str,
            "key_id": str,
            "signature": str,
        }
        for name, kind in types.items():
            value = data.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"checkpoint field {name!r} is {value!r}; expected a {kind.__name__}")
        number = data.get("number", 0)
        return cls(
            number if isinstance(number, int) else 0,
            data["origin"],
            data["tree_size"],
            data["root_hash"],
            data["timestamp"],
            data["key_id"],
            data["signature"],
        )


def sign_checkpoint(
    key_id: str, key: Ed25519PrivateKey, origin: str, tree_size: int, root: bytes, when: datetime
) -> Checkpoint:
    """A new checkpoint (``number`` 0 until stored) signed with ``key``."""
    stamp = iso(when)
    body = checkpoint_body(origin, tree_size, root.hex(), stamp, key_id)
    signature = base64.b64encode(key.sign(body)).decode()
    return Checkpoint(0, origin, tree_size, root.hex(), stamp, key_id, signature)


def signature_problem(cp: Checkpoint, public_keys: Mapping[str, bytes]) -> str | None:
    """None when ``cp`` is signed by the key it names; otherwise why it is not."""
    key = public_keys.get(cp.key_id)
    if key is None:
        known = ", ".join(sorted(public_keys)) or "none"
        return (
            f"it names key {cp.key_id}, which is not among the public keys given ({known}); "
            "fetch every key from GET /v1/ledger/key"
        )
    try:
        signature = base64.b64decode(cp.signature, validate=True)
    except (binascii.Error, ValueError):
        return "its signature is not base64"
    if not verify_signature(key, signature, cp.body()):
        return (
            f"its signature does not verify with key {cp.key_id}: the checkpoint was altered "
            "after it was signed, or was not signed by this log"
        )
    return None


@dataclass(frozen=True, slots=True)
class CheckpointReport:
    """The outcome of checking every checkpoint against the ledger (first failure only)."""

    ok: bool
    checked: int
    first_bad_checkpoint: int | None
    first_bad_seq: int | None
    message: str


def verify_checkpoints(
    checkpoints: Sequence[Checkpoint],
    ledger_size: int,
    root_of: Callable[[int], bytes],
    public_keys: Mapping[str, bytes],
    origin: str | None = None,
) -> CheckpointReport:
    """Check, in order, each checkpoint's origin, signature, size and root against the ledger.

    ``root_of(n)`` is the recomputed MTH of the ledger's first n entries (from their payloads).
    A checkpoint larger than the ledger means entries were removed from the end: the first
    missing one is named. A root that differs means an entry below its size was changed,
    removed or reordered after it was signed: the range since the largest checkpoint that
    still matches is named.
    """
    matched: list[int] = [0]  # tree sizes that verified so far
    for cp in checkpoints:
        where = f"checkpoint {cp.number} (tree size {cp.tree_size}, signed {cp.timestamp} by key {cp.key_id})"
        if origin is not None and cp.origin != origin:
            return CheckpointReport(
                False, cp.number, cp.number, None, f"{where} is of log {cp.origin!r}, not this log {origin!r}"
            )
        problem = signature_problem(cp, public_keys)
        if problem is not None:
            return CheckpointReport(False, cp.number, cp.number, None, f"{where} is not valid: {problem}")
        if cp.tree_size > ledger_size:
            return CheckpointReport(
                False,
                cp.number,
                cp.number,
                ledger_size,
                f"{where} covers {cp.tree_size} entries but the ledger has {ledger_size}: entries "
                f"{ledger_size}..{cp.tree_size - 1} were removed after it was signed",
            )
        if root_of(cp.tree_size).hex() != cp.root_hash:
            low = max(s for s in matched if s <= cp.tree_size)
            return CheckpointReport(
                False,
                cp.number,
                cp.number,
                None,
                f"{where} does not match the ledger: entries 0..{cp.tree_size - 1} hash to "
                f"{root_of(cp.tree_size).hex()}, not its signed root {cp.root_hash}; an entry in "
                f"{low}..{cp.tree_size - 1} was changed, removed or reordered after it was signed",
            )
        matched.append(cp.tree_size)
    n = len(checkpoints)
    newest = max(matched)
    if newest < ledger_size:  # not an error: the next scheduled checkpoint will sign them
        unsigned = (
            f"entry {newest} is" if newest == ledger_size - 1 else f"entries {newest}..{ledger_size - 1} are"
        )
        last = f"; {unsigned} not signed by a checkpoint yet (`infermeter ledger checkpoint` signs them now)"
    else:
        last = f"; the newest covers all {ledger_size} entries" if checkpoints else ""
    noun = "checkpoint" if n == 1 else "checkpoints"
    return CheckpointReport(True, n, None, None, f"{n} signed {noun} verified{last}")


__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointReport",
    "checkpoint_body",
    "sign_checkpoint",
    "signature_problem",
    "verify_checkpoints",
]
