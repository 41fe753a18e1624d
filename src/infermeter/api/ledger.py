"""The verifiable log over HTTP: public keys, checkpoints, proofs, receipts and corrections.

GET  /v1/ledger/key                          public keys (active and previous); no key needed
GET  /v1/ledger/checkpoints?after=&limit=    signed checkpoints, oldest first (any API key)
GET  /v1/ledger/consistency?first=M&second=N proof that checkpoint M is a prefix of N (any key)
GET  /v1/receipts/{record_id}                a record with its inclusion proof and checkpoint:
                                             a tenant key gets only its own records (404 else)
POST /v1/admin/checkpoints                   sign a checkpoint now (admin key)
POST /v1/admin/corrections                   credit or reverse a record (admin key)
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from infermeter.api.admin import admin_key
from infermeter.api.completions import api_key
from infermeter.api.records import record_view
from infermeter.api.service import service_of
from infermeter.api.tlog_receipts import TLOG_PROOF_TYPE, tlog_receipt
from infermeter.api.usage import INT64_MAX
from infermeter.billing.checkpoint_log import CheckpointLog
from infermeter.billing.corrections import issue_correction
from infermeter.billing.ledger import leaf_hash
from infermeter.billing.receipts import build_receipt
from infermeter.billing.signing import key_document
from infermeter.billing.store import ApiKey, Store
from infermeter.core.errors import InvalidRequest, LedgerIntegrityError, NotFound, NotYet
from infermeter.core.money import format_decimal, micros_to_decimal

router = APIRouter()

MAX_PAGE = 1000


def _log(request: Request) -> CheckpointLog:
    log: CheckpointLog = service_of(request).checkpoints
    return log


@router.get("/v1/ledger/key")
def ledger_key(request: Request) -> dict[str, Any]:
    """The log's public keys: verify receipts and checkpoints offline with these."""
    log = _log(request)
    public = service_of(request).public_log
    doc: dict[str, Any] = {**key_document(log.keys.list()), "origin": log.origin}
    if public is not None:
        # C2SP signed-note verifier keys (name+id+base64) for /log/checkpoint and .tlog-proof receipts
        doc["verifier_key"] = public.active_verifier_key().text()
        doc["verifier_keys"] = [k.text() for k in public.verifier_keys()]
    return doc


@router.get("/v1/ledger/checkpoints")
def checkpoints(
    request: Request,
    key: ApiKey = Depends(api_key),
    after: int = Query(
        0, ge=0, le=INT64_MAX, description="number of the last checkpoint of the previous page"
    ),
    limit: int = Query(100, ge=1, le=MAX_PAGE),
) -> dict[str, Any]:
    log = _log(request)
    rows = log.page(after=after, limit=limit + 1)
    page = rows[:limit]
    latest = log.latest()
    return {
        "object": "list",
        "origin": log.origin,
        "data": [c.to_json() for c in page],
        "has_more": len(rows) > limit,
        "next_after": page[-1].number if page else None,
        "latest": latest.to_json() if latest else None,
    }


@router.get("/v1/ledger/consistency")
def consistency(
    request: Request,
    first: int = Query(..., ge=0, le=INT64_MAX, description="tree size of the older checkpoint"),
    second: int = Query(..., ge=0, le=INT64_MAX, description="tree size of the newer checkpoint"),
    key: ApiKey = Depends(api_key),
) -> dict[str, Any]:
    """RFC 9162 consistency proof between the checkpoints of sizes ``first`` <= ``second``."""
    if first > second:
        raise InvalidRequest(
            f"first={first} is larger than second={second}; a consistency proof goes "
            "from the older, smaller tree to the newer one",
            param="first",
        )
    log = _log(request)
    found = []
    for name, size in (("first", first), ("second", second)):
        cp = log.at_size(size)
        if cp is None:
            raise NotFound(
                f"no checkpoint of tree size {size} ({name}); list the checkpointed sizes at "
                "/v1/ledger/checkpoints",
                param=name,
            )
        found.append(cp)
    proof = log.consistency(first, second)
    return {
        "object": "ledger.consistency",
        "first": found[0].to_json(),
        "second": found[1].to_json(),
        "proof": [p.hex() for p in proof],
    }


RECEIPT_RETRY_S = 1  # a record usually reaches the ledger well within a second of its response


def _not_yet(store: Store, record_id: str, key: ApiKey) -> None:
    """Raise NotYet (404 + Retry-After) for a record of this tenant still on its way."""
    tenant = store.in_transit(record_id)
    if tenant is not None and (key.admin or tenant == key.tenant_id):
        raise NotYet(
            f"usage record {record_id!r} is billed and durable on the worker that served it but "
            f"not in the ledger yet, so it has no receipt; retry in {RECEIPT_RETRY_S} s",
            retry_after_s=RECEIPT_RETRY_S,
        )


@router.get("/v1/receipts/{record_id}", response_model=None)
def receipt(
    request: Request,
    record_id: str,
    key: ApiKey = Depends(api_key),
    format: Literal["json", "tlog-proof"] | None = Query(
        None, description="tlog-proof: c2sp.org/tlog-proof@v1 text"
    ),
) -> dict[str, Any] | Response:
    """The record, its leaf index, its inclusion proof and a signed checkpoint that covers it."""
    log = _log(request)
    entry = log.entry(record_id)
    if entry is None:
        _not_yet(service_of(request).store, record_id, key)
    if entry is None or (not key.admin and entry.tenant_id != key.tenant_id):
        raise NotFound(f"no usage record {record_id!r} for this tenant; list yours at /v1/usage/records")
    if format == "tlog-proof" or (format is None and "tlog-proof" in request.headers.get("accept", "")):
        publisher = service_of(request).log_publisher
        if publisher is None:
            raise NotFound("tlog-proof receipts need the public C2SP log, served with the SQLite store only")
        text = tlog_receipt(publisher, entry.seq, entry.payload)
        disposition = f'attachment; filename="{entry.record_id}.tlog-proof"'
        return Response(text, media_type=TLOG_PROOF_TYPE, headers={"Content-Disposition": disposition})
    cp = log.covering(entry.seq)
    if log.leaf(entry.seq) != leaf_hash(entry.payload.encode()):
        raise LedgerIntegrityError(
            f"ledger entry {entry.seq} ({entry.record_id}) changed after it was "
            "added to the tree; run `infermeter ledger verify`",
            seq=entry.seq,
        )
    return build_receipt(entry.payload, entry.seq, log.inclusion(entry.seq, cp.tree_size), cp)


@router.post("/v1/admin/checkpoints")
def make_checkpoint(request: Request, key: ApiKey = Depends(admin_key)) -> dict[str, Any]:
    """Sign the ledger now (returns the newest one, created=false, if nothing changed)."""
    cp, created = _log(request).checkpoint()
    return {"object": "ledger.checkpoint", "created": created, **cp.to_json()}


class CorrectionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    record_id: str = Field(min_length=1)
    kind: Literal["credit", "reversal"]
    amount: str | None = Field(None, description='credit only: a decimal string, e.g. "0.50"')
    reason: str


@router.post("/v1/admin/corrections")
def correct(request: Request, body: CorrectionBody, key: ApiKey = Depends(admin_key)) -> dict[str, Any]:
    """Append a credit or reversal naming ``record_id``; the original entry stays as it is."""
    svc = service_of(request)
    done = issue_correction(svc.store, body.record_id, body.kind, body.reason, body.amount)
    svc.budgets.adjust(done.record.tenant_id, done.record.cost)  # the delta, under the budgets lock
    return {
        "object": "ledger.correction",
        "correction": record_view(done.record, done.seq),
        "corrects": done.original.record_id,
        "currency": done.record.currency,
        "remaining": {
            "cost": format_decimal(done.remaining.cost),
            "ru": format_decimal(micros_to_decimal(done.remaining.ru_micros), 6),
        },
    }
