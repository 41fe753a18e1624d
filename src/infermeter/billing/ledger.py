"""The ledger's pure core: entry encoding, RFC 9162 leaf hashes, the hash chain, verification.

An entry is the canonical JSON of ``{"event": record.to_cloudevent(), "kind": ..., "seq": n}``
(``core.records.canonical_json``: sorted keys, no spaces, UTF-8). Its hashes:

    leaf_hash  = SHA-256(0x00 || entry)                       RFC 9162 §2.1.1 leaf
    entry_hash = SHA-256(0x02 || prev_entry_hash || leaf_hash)  the linear chain
    prev_entry_hash of entry 0 = GENESIS_HASH (32 zero bytes)

The chain tag is 0x02, not RFC 9162's node tag 0x01: with 0x01 a chain link would be
byte-for-byte a Merkle node over (prev, leaf), and the two hash families must not be
confusable (RFC 9162 §2.1 separates leaf and node hashes the same way). The Merkle
tree (``billing.merkle``) is built over the same leaf hashes.

Stores keep, beside the payload, denormalized columns that queries read (tenant, cost, day…).
``verify_entries`` recomputes every hash and checks every such column against its payload,
so editing the cost column alone is as visible as editing the payload.

Limits, stated plainly: an unkeyed chain detects accidents and careless edits, not an
adversary who rewrites every later hash and the head row; removal of entries from the end
is visible only against the head row. Signed checkpoints published outside the database
close both gaps.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring  # C-accelerated
from typing import Any, NamedTuple

from infermeter.billing.entry_encoding import encode_event
from infermeter.billing.store import VerifyReport
from infermeter.core.records import UsageRecord

GENESIS_HASH = bytes(32)
LEAF_PREFIX = b"\x00"
CHAIN_PREFIX = b"\x02"

# The store's ledger columns, in row order. Every one but the hashes is derivable from the
# payload; ``derived_columns`` is the one place that says how.
COLUMNS: tuple[str, ...] = (
    "seq", "record_id", "request_id", "tenant_id", "kind", "event_time", "day", "model",
    "service_tier", "warmup", "prompt_tokens", "completion_tokens", "device_us", "ru_micros",
    "cost", "currency", "payload", "leaf_hash", "entry_hash",
)  # fmt: skip
_DERIVED = COLUMNS[1:16]

_sha256 = hashlib.sha256


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 leaf hash of one canonical entry."""
    return _sha256(LEAF_PREFIX + entry).digest()


def chain_hash(prev: bytes, leaf: bytes) -> bytes:
    """The chain link: commits to every entry before this one and to this one."""
    return _sha256(CHAIN_PREFIX + prev + leaf).digest()


def encode_entry(seq: int, record: UsageRecord) -> bytes:
    """The canonical entry bytes, byte-identical to canonical_json({"seq","kind","event"})."""
    return prepare(record).entry_prefix.encode() + f"{seq}}}".encode()


class PreparedEntry(NamedTuple):
    """Everything about an entry that does not depend on its position (computed off the writer).

    ``entry_prefix`` + ``str(seq)`` + ``"}"`` is the canonical entry; ``columns`` are the
    denormalized columns ``record_id`` … ``currency`` in ``COLUMNS`` order.
    """

    record: UsageRecord
    entry_prefix: str
    columns: tuple[Any, ...]


def prepare(record: UsageRecord) -> PreparedEntry:
    """Encode a record once; the writer only adds the seq and the hashes."""
    event, time, cost = encode_event(record)
    tier = record.service_tier
    prefix = f'{{"event":{event},"kind":{encode_basestring(record.kind)},"seq":'
    columns = (
        record.record_id, record.request_id, record.tenant_id, record.kind, time, time[:10],
        record.model, getattr(tier, "value", tier), 1 if record.warmup else 0,
        record.prompt_tokens, record.completion_tokens, record.device_us, record.ru_micros,
        cost, record.currency,
    )  # fmt: skip
    return PreparedEntry(record, prefix, columns)


def chain_rows(
    entries: Sequence[PreparedEntry], first_seq: int, prev: bytes
) -> tuple[list[tuple[Any, ...]], bytes]:
    """Rows (in ``COLUMNS`` order) for ``entries`` placed at ``first_seq``…, and the new head."""
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    sha = _sha256
    seq = first_seq
    for entry in entries:
        payload = f"{entry.entry_prefix}{seq}}}"
        leaf = sha(b"\x00" + payload.encode()).digest()
        prev = sha(b"\x02" + prev + leaf).digest()
        append((seq, *entry.columns, payload, leaf.hex(), prev.hex()))
        seq += 1
    return rows, prev


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One stored ledger row, as read back (hashes as lowercase hex)."""

    seq: int
    record_id: str
    request_id: str
    tenant_id: str
    kind: str
    event_time: str
    day: str
    model: str
    service_tier: str
    warmup: int
    prompt_tokens: int
    completion_tokens: int
    device_us: int
    ru_micros: int
    cost: str
    currency: str
    payload: str
    leaf_hash: str
    entry_hash: str


@dataclass(frozen=True, slots=True)
class LedgerHead:
    """The store's record of how long the ledger is and its last entry hash (hex)."""

    size: int
    head: str


def derived_columns(entry: dict[str, Any]) -> tuple[Any, ...]:
    """The denormalized columns ``record_id`` … ``currency`` as the payload states them."""
    event = entry["event"]
    data = event["data"]
    time = event["time"]
    return (
        data["record_id"], data["request_id"], data["tenant_id"], entry["kind"], time,
        time[:10], data["model"], data["service_tier"], 1 if data["warmup"] else 0,
        data["prompt_tokens"], data["completion_tokens"], data["device_us"], data["ru_micros"],
        data["cost"], data["currency"],
    )  # fmt: skip


def _stored_columns(row: LedgerRow) -> tuple[Any, ...]:
    return (
        row.record_id, row.request_id, row.tenant_id, row.kind, row.event_time, row.day,
        row.model, row.service_tier, row.warmup, row.prompt_tokens, row.completion_tokens,
        row.device_us, row.ru_micros, row.cost, row.currency,
    )  # fmt: skip


def record_from_payload(payload: str | bytes) -> UsageRecord:
    """The usage record an entry holds."""
    return UsageRecord.from_cloudevent(json.loads(payload)["event"])


def _bad(entries: int, seq: int, record_id: str | None, message: str) -> VerifyReport:
    return VerifyReport(False, entries, seq, record_id, message)


def _links(prev: bytes, leaf_hex: object, entry_hex: object) -> bool:
    """Whether the stored leaf hash chains from ``prev`` to the stored entry hash."""
    try:
        return chain_hash(prev, bytes.fromhex(str(leaf_hex))).hex() == entry_hex
    except ValueError:
        return False


def _payload_seq(row: LedgerRow) -> int | None:
    try:
        seq = json.loads(row.payload)["seq"]
    except (ValueError, TypeError, KeyError):
        return None
    return seq if isinstance(seq, int) else None


def _misplaced(p: int, s: int, row: LedgerRow, ids: list[str], rest: Iterator[LedgerRow]) -> str:
    """Explain an entry at position ``p`` whose payload says it was written as entry ``s``."""
    here = f"entry {p} ({row.record_id}) was written as entry {s}"
    if s < p:
        return f"{here}: entries {s}..{p - 1} were inserted before it ({ids[s]} is not genuine)"
    for q, other in enumerate(rest, start=p + 1):
        if _payload_seq(other) == p:
            return (
                f"{here} and entry {q} ({other.record_id}) was written as entry {p}: "
                "the entries were reordered"
            )
    return f"{here}: entries {p}..{s - 1} were removed and the later ones renumbered"


def verify_entries(rows: Iterable[LedgerRow], head: LedgerHead | None = None) -> VerifyReport:
    """Walk ``rows`` in seq order and report the first position that does not verify.

    ``first_bad_seq`` is the first ledger position whose entry is missing, changed, misplaced
    or forged (every entry before it verifies); ``first_bad_record_id`` is the record id of
    the row found there (``None`` when there is none). Checked, in this order, per row: the
    seq is the next one; the payload re-hashes to the stored leaf hash; the payload's own seq
    is its position; the chain link recomputes to the stored entry hash; every denormalized
    column equals the payload; request and record ids are not repeated. Then the count and
    last hash are compared with ``head`` when one is given. ``entries`` counts every row.
    """
    it = iter(rows)
    ids: list[str] = []  # record id by position
    requests: dict[str, int] = {}
    records: set[str] = set()
    prev = GENESIS_HASH
    bad: VerifyReport | None = None
    for p, row in enumerate(it):
        if row.seq != p:
            missing = f"entries {p}..{row.seq - 1} are" if row.seq > p + 1 else f"entry {p} is"
            bad = _bad(0, p, row.record_id, f"{missing} missing: the next entry is {row.seq} "
                       f"({row.record_id}); entries were removed from the ledger")  # fmt: skip
            break
        where = f"entry {p} ({row.record_id})"
        payload = row.payload.encode() if isinstance(row.payload, str) else bytes(row.payload)
        leaf = leaf_hash(payload)
        link = chain_hash(prev, leaf)
        if leaf.hex() != row.leaf_hash:
            if _links(prev, row.leaf_hash, row.entry_hash):
                why = "payload does not match its hash: the record was changed after it was written"
            elif link.hex() == row.entry_hash:
                why = "stored leaf hash was changed: the payload still matches the chain"
            else:
                why = "payload matches neither stored hash: the entry was changed or forged"
            bad = _bad(0, p, row.record_id, f"{where} {why}")
            break
        try:
            entry = json.loads(payload)
            s = entry["seq"]
            derived = derived_columns(entry)
        except (ValueError, TypeError, KeyError) as exc:
            bad = _bad(0, p, row.record_id, f"{where} payload is not a ledger entry ({exc!r})")
            break
        if s != p:
            if isinstance(s, int) and 0 <= s < p:
                bad = _bad(0, s, ids[s], _misplaced(p, s, row, ids, it))
            else:
                bad = _bad(0, p, row.record_id, _misplaced(p, s, row, ids, it))
            break
        if link.hex() != row.entry_hash:
            bad = _bad(0, p, row.record_id, f"{where} does not link to entry {p - 1}: its stored "
                       f"entry hash was changed, or entry {p - 1} was replaced")  # fmt: skip
            break
        stored = _stored_columns(row)
        if stored != derived:
            name, have, want = next(
                (n, a, b) for n, a, b in zip(_DERIVED, stored, derived, strict=True) if a != b
            )
            why = f"column {name} is {have!r} but its payload says {want!r}"
            bad = _bad(0, p, row.record_id, f"{where} {why}: the column was edited after the "
                       "entry was written")  # fmt: skip
            break
        first = requests.setdefault(row.request_id, p)
        if first != p or row.record_id in records:
            dup = f"request id {row.request_id}" if first != p else f"record id {row.record_id}"
            bad = _bad(0, p, row.record_id, f"{where} repeats {dup} already in the ledger: "
                       "one request must be recorded (and billed) once")  # fmt: skip
            break
        ids.append(row.record_id)
        records.add(row.record_id)
        prev = link
    if bad is not None:
        total = len(ids) + 1 + sum(1 for _ in it)
        return VerifyReport(False, total, bad.first_bad_seq, bad.first_bad_record_id, bad.message)
    return _check_head(ids, prev, head)


def _check_head(ids: list[str], last: bytes, head: LedgerHead | None) -> VerifyReport:
    n = len(ids)
    if head is not None and head.size != n:
        if n < head.size:
            gone = f"entries {n}..{head.size - 1}"
            return _bad(n, n, None, f"the ledger has {n} entries but its head records "
                        f"{head.size}: {gone} were removed from the end")  # fmt: skip
        return _bad(n, head.size, ids[head.size], f"the ledger has {n} entries but its head "
                    f"records {head.size}: entries {head.size}..{n - 1} were added outside "
                    "the store")  # fmt: skip
    if head is not None and head.head != last.hex():
        return _bad(n, n - 1, ids[-1] if ids else None, "the ledger head's hash does not match "
                    "its last entry: the head row or the last entry was replaced")  # fmt: skip
    return VerifyReport(True, n, None, None, f"ledger verified: {n} entries, head {last.hex()}")
