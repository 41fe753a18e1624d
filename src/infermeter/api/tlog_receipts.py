"""Receipts as c2sp.org/tlog-proof@v1 text, from the public log (``billing.tlog_proof``)."""

from __future__ import annotations

from infermeter.billing import tlog_proof
from infermeter.billing.commitments import public_leaf
from infermeter.billing.log_publisher import LogPublisher
from infermeter.core.errors import LedgerIntegrityError

TLOG_PROOF_TYPE = "text/x.tlog-proof; charset=utf-8"


def tlog_receipt(publisher: LogPublisher, seq: int, payload: str) -> str:
    """Entry ``seq``'s tlog-proof against the newest checkpoint (signed now if none covers it)."""
    log = publisher.log
    cp = publisher.covering(seq)
    salt = log.salt(seq)
    if log.leaf(seq) != public_leaf(salt, payload.encode()):
        raise LedgerIntegrityError(
            f"ledger entry {seq} changed after it entered the public log; run `infermeter ledger verify`",
            seq=seq,
        )
    return tlog_proof.build(salt, payload.encode(), seq, log.inclusion(seq, cp.tree_size), log.cosigned(cp))
