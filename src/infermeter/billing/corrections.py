"""Corrections: credits and reversals appended as new ledger entries; the original stays.

A correction is a ``UsageRecord`` of kind ``credit`` or ``reversal`` that names the record it
corrects (``corrects``), carries a ``reason``, and keeps the original's tenant, model, tier,
engine and versions. It is billed when it is issued: it lands on the invoice of the month
of its own time, as a line of its kind with a negative amount.

- A **reversal** brings what remains of the original to zero: cost and RU both negated
  (after earlier credits, only what they left). Tokens and device time stay as they were
  measured; a reversal un-bills them, it does not un-happen them.
- A **credit** refunds a given positive amount (a negative cost, no RU), at most what
  remains uncorrected of the original's cost.

Request ids are ``correction:<record_id>:<n>`` (n = 1, 2, …), so the corrections of a record
are found through the store's request-id index, and two admins correcting the same record at
once cannot both pass the over-credit check: the second append hits the first's request id,
gets its record back, and is retried against the new remainder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation

from infermeter.billing.store import Store
from infermeter.core import ids
from infermeter.core.errors import InvalidRequest, NotFound
from infermeter.core.money import format_decimal
from infermeter.core.records import UsageRecord, utc_now
from infermeter.core.types import Status

KINDS = ("credit", "reversal")
MAX_REASON = 500
_RETRIES = 8


def correction_request_id(record_id: str, n: int) -> str:
    return f"correction:{record_id}:{n}"


@dataclass(frozen=True, slots=True)
class Remaining:
    """What is left of a record after its corrections: exact cost and micro-RU."""

    cost: Decimal
    ru_micros: int


def remaining(original: UsageRecord, prior: list[UsageRecord]) -> Remaining:
    return Remaining(
        original.cost + sum((c.cost for c in prior), Decimal(0)),
        original.ru_micros + sum(c.ru_micros for c in prior),
    )


def parse_amount(text: str | Decimal, currency: str) -> Decimal:
    """A credit amount: a positive, finite decimal (never a float)."""
    if isinstance(text, float | bool):
        raise InvalidRequest(
            f'amount {text!r} must be a decimal string such as "0.50", not a number', param="amount"
        )
    try:
        value = Decimal(text)
    except (InvalidOperation, TypeError, ValueError):
        raise InvalidRequest(
            f'amount {text!r} is not a decimal amount; pass e.g. "0.50" ({currency})', param="amount"
        ) from None
    if not value.is_finite() or value <= 0:
        raise InvalidRequest(
            f"amount {text} must be a positive amount of {currency}; to undo the whole record use a reversal",
            param="amount",
        )
    return value


def plan_correction(
    original: UsageRecord,
    prior: list[UsageRecord],
    kind: str,
    amount: Decimal | None,
    reason: str,
    now: datetime,
    record_id: str,
) -> UsageRecord:
    """The correction entry to append (pure). Raises InvalidRequest naming the amounts."""
    if kind not in KINDS:
        raise InvalidRequest(
            f"kind {kind!r} is not a correction kind; use one of {', '.join(KINDS)}", param="kind"
        )
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON:
        raise InvalidRequest(
            f"reason has {len(reason)} characters; give a reason of 1 to {MAX_REASON}", param="reason"
        )
    if original.kind != "usage" or original.warmup:
        what = "a warm-up record" if original.warmup else f"a {original.kind} entry"
        raise InvalidRequest(
            f"record {original.record_id} is {what}; only billed usage records can be "
            "corrected (correct the original usage record instead)",
            param="record_id",
        )
    left = remaining(original, prior)
    cur = original.currency
    spent = f"record {original.record_id} cost {format_decimal(original.cost)} {cur}"
    if prior:
        spent += f" and has been corrected by {format_decimal(left.cost - original.cost)} {cur}"
    if kind == "reversal":
        if amount is not None:
            raise InvalidRequest(
                "a reversal takes no amount (it undoes what remains); for part of it issue a credit",
                param="amount",
            )
        if left.cost == 0 and left.ru_micros == 0:
            raise InvalidRequest(f"{spent}; nothing remains to reverse", param="record_id")
        cost, ru = -left.cost if left.cost else Decimal(0), -left.ru_micros
    else:
        if amount is None:
            raise InvalidRequest('a credit needs an amount, e.g. "0.50"', param="amount")
        if amount > left.cost:
            raise InvalidRequest(
                f"a credit of {format_decimal(amount)} {cur} exceeds the {format_decimal(left.cost)} {cur} "
                f"that remains uncorrected ({spent}); credit at most {format_decimal(left.cost)}",
                param="amount",
            )
        cost, ru = -amount, 0
    return replace(
        original, record_id=record_id, request_id=correction_request_id(original.record_id, len(prior) + 1),
        status=Status.COMPLETED, prompt_tokens=0, completion_tokens=0, cached_tokens=0, device_us=0,
        prefill_us=0, decode_us=0, kv_mb_s=Decimal(0), ru_micros=ru, cost=cost, queue_ms=0,
        latency_ms=0, started_at=now, ended_at=now, warmup=False, kind=kind,
        corrects=original.record_id, reason=reason, weighted_device_ms=None, dram_score=None,
        energy_mj=None,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Correction:
    record: UsageRecord  # the correction entry
    seq: int
    original: UsageRecord
    remaining: Remaining  # after this correction


def corrections_of(store: Store, record_id: str) -> list[UsageRecord]:
    """The record's corrections, oldest first (one indexed lookup each, plus one)."""
    found: list[UsageRecord] = []
    while (r := store.get_by_request(correction_request_id(record_id, len(found) + 1))) is not None:
        found.append(r)
    return found


def issue_correction(
    store: Store,
    record_id: str,
    kind: str,
    reason: str,
    amount: str | Decimal | None = None,
    *,
    clock: Callable[[], datetime] = utc_now,
) -> Correction:
    """Append a credit or reversal for ``record_id``; the original entry is never touched."""
    original = store.get_record(record_id)
    if original is None:
        raise NotFound(
            f"no usage record {record_id!r}; find record ids in GET /v1/usage/records or "
            "GET /v1/admin/export/usage.jsonl",
            param="record_id",
        )
    value = None if amount is None else parse_amount(amount, original.currency)
    for _ in range(_RETRIES):
        prior = corrections_of(store, record_id)
        planned = plan_correction(original, prior, kind, value, reason, clock(), ids.record_id())
        (result,) = store.append([planned])
        if result.record.record_id == planned.record_id:
            return Correction(result.record, result.seq, original, remaining(original, [*prior, planned]))
        # another correction took this number meanwhile: re-read and re-check the remainder
    raise InvalidRequest(
        f"record {record_id} is being corrected by others at the same time; try again", param="record_id"
    )


__all__ = [
    "KINDS",
    "Correction",
    "Remaining",
    "correction_request_id",
    "corrections_of",
    "issue_correction",
    "parse_amount",
    "plan_correction",
    "remaining",
]
