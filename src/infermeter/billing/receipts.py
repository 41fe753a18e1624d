"""Receipts: a usage record with the proof that the signed ledger holds it, checkable offline.

A receipt is one JSON document a tenant can save:

    {"format": "infermeter.receipt.v1",
     "record_id": "rec_…",
     "entry": {"event": <the record's CloudEvent>, "kind": "usage", "seq": 17},
     "leaf_index": 17, "leaf_hash": "<hex>",
     "inclusion_proof": ["<hex>", …],               RFC 9162 §2.1.3 PATH, leaf upwards
     "checkpoint": {"format": "infermeter.checkpoint.v1", "origin", "tree_size",
                    "root_hash", "timestamp", "key_id", "signature", "number"}}

``entry`` is the ledger entry itself; its canonical JSON is the exact byte string the
ledger hashed. ``verify_receipt`` needs nothing but the receipt and the log's public keys:
it re-encodes the entry, hashes it into the leaf, climbs the proof to a root, and checks
that the checkpoint carrying that root is signed by the key it names. Both functions here
are pure.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infermeter.billing.checkpoints import Checkpoint, signature_problem
from infermeter.billing.ledger import leaf_hash
from infermeter.billing.merkle import verify_inclusion
from infermeter.core.errors import LedgerIntegrityError
from infermeter.core.records import canonical_json

RECEIPT_FORMAT = "infermeter.receipt.v1"


def build_receipt(payload: str, seq: int, proof: Sequence[bytes], checkpoint: Checkpoint) -> dict[str, Any]:
    """The receipt of the entry stored as ``payload`` at ``seq``, proved against ``checkpoint``.

    Raises LedgerIntegrityError if the payload is not in canonical form (its re-encoding would
    not hash to the stored leaf, so the receipt could never verify).
    """
    entry = json.loads(payload)
    if canonical_json(entry) != payload.encode():
        raise LedgerIntegrityError(
            f"ledger entry {seq} is not canonical JSON; no receipt can prove it: "
            "run `infermeter ledger verify`",
            seq=seq,
        )
    return {
        "object": "ledger.receipt",
        "format": RECEIPT_FORMAT,
        "record_id": entry["event"]["id"],
        "entry": entry,
        "leaf_index": seq,
        "leaf_hash": leaf_hash(payload.encode()).hex(),
        "inclusion_proof": [p.hex() for p in proof],
        "checkpoint": checkpoint.to_json(),
    }


@dataclass(frozen=True, slots=True)
class ReceiptVerdict:
    """Whether a receipt verifies, and why not. The other fields are as the receipt states them."""

    ok: bool
    message: str
    record_id: str | None = None
    leaf_index: int | None = None
    tree_size: int | None = None
    key_id: str | None = None
    signed_at: str | None = None


def _hex(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} is {value!r}, not a hex string")
    try:
        return bytes.fromhex(value)
    except (ValueError, binascii.Error):
        raise ValueError(f"{what} {value!r} is not hex") from None


def verify_receipt(receipt: Any, public_keys: Mapping[str, bytes]) -> ReceiptVerdict:
    """Check a saved receipt offline with only the log's public keys (key id → raw Ed25519 key).

    In order: the document's shape; the ``record_id`` it names is its entry's event id; the
    entry's position equals ``leaf_index``; the entry
    hashes to ``leaf_hash``; the proof leads from that leaf to the checkpoint's root; the
    checkpoint's signature verifies with the key it names. The first failure is the message.
    """
    if not isinstance(receipt, dict) or receipt.get("format") != RECEIPT_FORMAT:
        got = receipt.get("format") if isinstance(receipt, dict) else type(receipt).__name__
        return ReceiptVerdict(
            False, f"not an infermeter receipt (format {got!r}, expected {RECEIPT_FORMAT!r})"
        )
    entry = receipt.get("entry")
    event = entry.get("event") if isinstance(entry, dict) else None
    record_id = event.get("id") if isinstance(event, dict) else None
    index = receipt.get("leaf_index")
    if (
        not isinstance(entry, dict)
        or not isinstance(event, dict)
        or not isinstance(index, int)
        or isinstance(index, bool)
    ):
        return ReceiptVerdict(
            False,
            "the receipt lacks its entry (an object with an event) or its integer leaf_index",
            record_id,
        )
    stated_id = receipt.get("record_id")
    if stated_id != record_id:
        return ReceiptVerdict(
            False,
            f"the receipt names record {stated_id!r} but its entry is the record {record_id!r}: "
            "the receipt does not prove the record it names",
            record_id,
            index,
        )
    try:
        checkpoint = Checkpoint.from_json(receipt.get("checkpoint"))
        listed = receipt.get("inclusion_proof")
        if not isinstance(listed, list):
            raise ValueError(f"inclusion_proof is {listed!r}, not a list of hex hashes")
        proof = [_hex(p, "an inclusion proof hash") for p in listed]
        root = _hex(checkpoint.root_hash, "the checkpoint's root_hash")
        stated = _hex(receipt.get("leaf_hash", ""), "leaf_hash")
    except ValueError as exc:
        return ReceiptVerdict(False, f"the receipt is malformed: {exc}", record_id, index)
    head = (record_id, index, checkpoint.tree_size, checkpoint.key_id, checkpoint.timestamp)
    if entry.get("seq") != index:
        return ReceiptVerdict(
            False,
            f"the entry says it is entry {entry.get('seq')!r} of the ledger "
            f"but the receipt places it at leaf {index}",
            *head,
        )
    leaf = leaf_hash(canonical_json(entry))
    if stated and leaf != stated:
        return ReceiptVerdict(
            False,
            f"the record does not hash to the receipt's leaf hash ({leaf.hex()} "
            f"!= {stated.hex()}): the record was changed after the receipt was issued",
            *head,
        )
    if not verify_inclusion(leaf, index, checkpoint.tree_size, proof, root):
        return ReceiptVerdict(
            False,
            f"the inclusion proof does not lead from leaf {index} to the root of "
            f"checkpoint {checkpoint.number} ({checkpoint.tree_size} entries): the record, "
            "the proof or the checkpoint was changed",
            *head,
        )
    problem = signature_problem(checkpoint, public_keys)
    if problem is not None:
        return ReceiptVerdict(False, f"checkpoint {checkpoint.number} is not valid: {problem}", *head)
    return ReceiptVerdict(
        True,
        f"receipt valid: record {record_id} is entry {index} of the ledger "
        f"{checkpoint.origin} as signed at {checkpoint.timestamp} by key "
        f"{checkpoint.key_id} ({checkpoint.tree_size} entries)",
        *head,
    )


__all__ = ["RECEIPT_FORMAT", "ReceiptVerdict", "build_receipt", "verify_receipt"]
