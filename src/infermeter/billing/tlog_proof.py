"""Receipts as c2sp.org/tlog-proof@v1 text: an entry's inclusion proof with its checkpoint.

    c2sp.org/tlog-proof@v1\\n
    extra <base64(salt ‖ entry)>\\n          the 32-byte salt, then the canonical ledger entry
    index <leaf index, decimal>\\n
    <base64 hash>\\n …                      RFC 9162 inclusion path, from the leaf upwards
    \\n
    <the checkpoint: a signed note, with the log's signature and any witness cosignatures>

The spec makes the ``extra`` line optional (omitted when there is no extra data) and names
no media type; files are ``.tlog-proof``. Receipts here always carry one, since the
record and salt are what make the leaf.

The leaf is SHA-256(0x00 ‖ commitment(salt, entry)) (``billing.commitments``). ``verify``
needs only the text, the log's verifier key(s) and, to require witnesses, theirs. Pure.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass

from infermeter.billing import signed_note
from infermeter.billing.commitments import SALT_BYTES, public_leaf
from infermeter.billing.merkle import verify_inclusion
from infermeter.billing.signed_note import COSIGNATURE_V1, ED25519, Note, NoteError, VerifierKey
from infermeter.billing.tlog_checkpoint import TreeHead, parse_checkpoint
from infermeter.core.records import canonical_json

HEADER = "c2sp.org/tlog-proof@v1"
MAX_PATH = 64


@dataclass(frozen=True, slots=True)
class TlogProof:
    extra: bytes
    index: int
    path: tuple[bytes, ...]
    checkpoint: Note

    def text(self) -> str:
        lines = [HEADER]
        if self.extra:  # tlog-proof: "If no extra data is present, this line is omitted."
            lines.append(f"extra {base64.b64encode(self.extra).decode()}")
        lines.append(f"index {self.index}")
        lines += [base64.b64encode(h).decode() for h in self.path]
        return "".join(f"{line}\n" for line in lines) + "\n" + self.checkpoint.encode().decode()


def build(salt: bytes, entry: bytes, index: int, path: Sequence[bytes], checkpoint: Note) -> str:
    return TlogProof(salt + entry, index, tuple(path), checkpoint).text()


def parse(data: str | bytes) -> TlogProof:
    """The proof's parts; NoteError naming the first line that is wrong."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise NoteError("a tlog-proof is its header lines, a blank line, then the checkpoint")
    lines = head.split("\n")
    if lines[0] != HEADER:
        raise NoteError(f"the first line is {lines[0][:60]!r}, not {HEADER!r}")
    at = 1
    extra = b""
    if at < len(lines) and lines[at].startswith("extra "):
        extra = signed_note.b64(lines[at][6:], "the extra line")
        at += 1
    if at >= len(lines) or not lines[at].startswith("index "):
        raise NoteError("a tlog-proof states 'index <N>' after its header (and extra) line")
    index_text = lines[at][6:]
    if not index_text.isdigit() or not index_text.isascii() or (index_text[0] == "0" and index_text != "0"):
        raise NoteError(f"index {index_text!r} is not a decimal without leading zeros")
    path: list[bytes] = []
    for line in lines[at + 1 :]:
        h = signed_note.b64(line, f"inclusion proof line {line[:60]!r}")
        if len(h) != 32:
            raise NoteError(f"inclusion proof line {line[:60]!r} is not a 32-byte hash")
        path.append(h)
    if len(path) > MAX_PATH:
        raise NoteError(f"an inclusion path has at most {MAX_PATH} hashes, this one {len(path)}")
    return TlogProof(extra, int(index_text), tuple(path), signed_note.parse(note))


@dataclass(frozen=True, slots=True)
class ProofVerdict:
    ok: bool
    message: str
    record_id: str | None = None
    index: int | None = None
    tree_size: int | None = None
    origin: str | None = None
    cosigned_by: tuple[str, ...] = ()


def verify(
    data: str | bytes,
    log_keys: Sequence[VerifierKey],
    witnesses: Sequence[VerifierKey] = (),
    required: int = 0,
) -> ProofVerdict:
    """Check a tlog-proof receipt: entry → leaf → root → log signature → k of n cosignatures.

    In order: the format; the extra is a salt and a canonical ledger entry whose ``seq`` is the
    index; the inclusion path leads from that entry's leaf to the checkpoint's root; the
    checkpoint is signed by one of ``log_keys`` named as its origin; at least ``required`` of
    ``witnesses`` cosigned it. The first failure is the message.
    """
    try:
        proof = parse(data)
        head: TreeHead = parse_checkpoint(proof.checkpoint.text)
    except NoteError as exc:
        return ProofVerdict(False, f"the receipt is malformed: {exc}")
    salt, entry_bytes = proof.extra[:SALT_BYTES], proof.extra[SALT_BYTES:]
    try:
        entry = json.loads(entry_bytes)
        record_id = entry["event"]["id"]
        seq = entry["seq"]
    except (ValueError, TypeError, KeyError):
        return ProofVerdict(False, "the extra line is not a 32-byte salt followed by a ledger entry")
    at = (record_id, proof.index, head.size, head.origin)
    if len(salt) != SALT_BYTES or canonical_json(entry) != entry_bytes:
        return ProofVerdict(False, "the entry in the extra line is not in canonical form", *at)
    if seq != proof.index:
        return ProofVerdict(
            False, f"the entry says it is entry {seq!r} but the proof is for leaf {proof.index}", *at
        )
    leaf = public_leaf(salt, entry_bytes)
    if not verify_inclusion(leaf, proof.index, head.size, proof.path, head.root):
        return ProofVerdict(
            False,
            f"the record does not hash to leaf {proof.index} of the checkpoint's tree ({head.size} "
            "entries): the record, its salt, the proof or the checkpoint was changed",
            *at,
        )
    own = [k for k in log_keys if k.key_type == ED25519 and k.name == head.origin]
    try:
        signers = signed_note.verified_by(proof.checkpoint, own)
        cosigners = signed_note.verified_by(
            proof.checkpoint, [w for w in witnesses if w.key_type == COSIGNATURE_V1]
        )
    except NoteError as exc:
        return ProofVerdict(False, f"the checkpoint is not valid: {exc}", *at)
    if not signers:
        given = ", ".join(k.text() for k in log_keys) or "none"
        return ProofVerdict(
            False,
            f"the checkpoint of {head.origin} is not signed by any log key given ({given}); "
            "pass the verifier key of GET /v1/ledger/key with --key",
            *at,
        )
    names = tuple(w.name for w in cosigners)
    if len(cosigners) < required:
        return ProofVerdict(
            False,
            f"the checkpoint has {len(cosigners)} valid cosignature(s) of the {len(witnesses)} "
            f"witnesses given ({', '.join(names) or 'none'}); {required} are required",
            *at,
            names,
        )
    witnessed = f", cosigned by {', '.join(names)}" if names else ""
    return ProofVerdict(
        True,
        f"receipt valid: record {record_id} is entry {proof.index} of {head.origin} "
        f"({head.size} entries){witnessed}",
        *at,
        names,
    )


__all__ = ["HEADER", "ProofVerdict", "TlogProof", "build", "parse", "verify"]
