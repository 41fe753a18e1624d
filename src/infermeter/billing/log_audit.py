"""Checking signed-note checkpoints (and their witness cosignatures) against the ledger. Pure.

Every checkpoint given (those the database stores, and any a tenant or auditor kept) must be
signed by the log, and its tree must be a prefix of the ledger as it is now: a checkpoint
larger than the ledger, or whose root differs from the rebuilt tree's, proves the ledger was
rolled back or forked after it was signed, and the report names it, with the witnesses that
cosigned it. With witnesses given, at least ``required`` of them must have cosigned one
checkpoint, else the ledger has no witnessed state to trust.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from infermeter.billing import signed_note
from infermeter.billing.signed_note import COSIGNATURE_V1, ED25519, NoteError, VerifierKey, cosignature_time
from infermeter.billing.tlog_checkpoint import parse_checkpoint


@dataclass(frozen=True, slots=True)
class LogAudit:
    ok: bool
    checked: int
    message: str
    first_bad_seq: int | None = None
    witnessed_size: int = 0  # the largest tree ``required`` witnesses cosigned


def audit(
    notes: Sequence[tuple[str, str]],
    ledger_size: int,
    root_of: Callable[[int], bytes],
    origin: str,
    log_keys: Sequence[VerifierKey],
    witnesses: Sequence[VerifierKey] = (),
    required: int = 0,
) -> LogAudit:
    """Check each (where, note text) against the ledger's rebuilt tree (``root_of(n)``)."""
    own = [k for k in log_keys if k.key_type == ED25519 and k.name == origin]
    cosigning = [w for w in witnesses if w.key_type == COSIGNATURE_V1]
    witnessed = 0
    for where, text in notes:
        try:
            note = signed_note.parse(text)
            head = parse_checkpoint(note.text)
            if head.origin != origin:
                return LogAudit(False, 0, f"{where} is of log {head.origin!r}, not this log {origin!r}")
            if not signed_note.verified_by(note, own):
                return LogAudit(False, 0, f"{where} is not signed by this log's keys")
            cosigners = signed_note.verified_by(note, cosigning)
        except NoteError as exc:
            return LogAudit(False, 0, f"{where} is not a valid checkpoint: {exc}")
        by = ""
        if cosigners:
            times = [
                t for s in note.signatures for w in cosigners
                if s.name == w.name and s.key_id == w.key_id and (t := cosignature_time(s)) is not None
            ]  # fmt: skip
            when = dt.datetime.fromtimestamp(max(times), dt.UTC).isoformat() if times else "?"
            by = f", cosigned by witness {', '.join(w.name for w in cosigners)} (latest at {when})"
        label = f"{where} (tree size {head.size}{by})"
        if head.size > ledger_size:
            return LogAudit(
                False,
                0,
                f"FORK: {label} covers {head.size} entries but the ledger has {ledger_size}: entries "
                f"{ledger_size}..{head.size - 1} were removed after it was signed (a rollback)",
                ledger_size,
            )
        actual = root_of(head.size)
        if actual != head.root:
            return LogAudit(
                False,
                0,
                f"FORK: {label} does not match the ledger: its first {head.size} entries now hash to "
                f"{actual.hex()}, not the signed root {head.root.hex()}: the ledger was rewritten",
            )
        if len(cosigners) >= required:
            witnessed = max(witnessed, head.size)
    n = len(notes)
    if cosigning and required > 0 and (witnessed == 0 and ledger_size > 0):
        return LogAudit(
            False,
            n,
            f"no checkpoint has {required} cosignature(s) of the {len(cosigning)} witnesses given; "
            "the ledger's state is not witnessed",
        )
    tail = ""
    if cosigning:
        tail = f"; {required} of {len(cosigning)} witnesses cosigned the first {witnessed} entries"
        if witnessed < ledger_size:
            tail += f" (entries {witnessed}..{ledger_size - 1} are not witnessed yet)"
    return LogAudit(True, n, f"{n} public checkpoint(s) consistent with the ledger{tail}", None, witnessed)


__all__ = ["LogAudit", "audit"]
