"""The pure ledger: canonical entries, RFC 9162 leaf hashes, the chain, and verification."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.billing.entry_encoding import encode_event, reference_event
from infermeter.billing.ledger import (
    COLUMNS,
    GENESIS_HASH,
    LedgerHead,
    LedgerRow,
    chain_rows,
    derived_columns,
    encode_entry,
    prepare,
    record_from_payload,
    verify_entries,
)
from infermeter.core.records import UsageRecord, canonical_json

from .ledger_records import make_record, records


def ledger(n: int, **overrides: Any) -> list[LedgerRow]:
    """n well-formed rows, as a store would hold them."""
    rows, _ = chain_rows([prepare(make_record(i, **overrides)) for i in range(n)], 0, GENESIS_HASH)
    return [LedgerRow(*row) for row in rows]


def head_of(rows: list[LedgerRow]) -> LedgerHead:
    return LedgerHead(len(rows), rows[-1].entry_hash if rows else GENESIS_HASH.hex())


def rechain(rows: list[LedgerRow]) -> list[LedgerRow]:
    """Recompute every hash from the payloads, the way a careful forger would."""
    out, prev = [], GENESIS_HASH
    for row in rows:
        leaf = hashlib.sha256(b"\x00" + row.payload.encode()).digest()
        prev = hashlib.sha256(b"\x02" + prev + leaf).digest()
        out.append(dataclasses.replace(row, leaf_hash=leaf.hex(), entry_hash=prev.hex()))
    return out


def forge(record: UsageRecord, seq: int, after: LedgerRow) -> LedgerRow:
    """A forged entry at ``seq`` whose hashes chain correctly from ``after``."""
    rows, _ = chain_rows([prepare(record)], seq, bytes.fromhex(after.entry_hash))
    return LedgerRow(*rows[0])


@settings(max_examples=300, deadline=None)
@given(records())
def test_fast_event_encoding_is_byte_identical_to_canonical_json(record: UsageRecord) -> None:
    """encode_event writes exactly canonical_json(to_cloudevent()), for any valid record."""
    assert encode_event(record) == reference_event(record)
    assert encode_event(record)[0].encode() == canonical_json(record.to_cloudevent())


@settings(max_examples=100, deadline=None)
@given(records(), st.integers(min_value=0, max_value=10**12))
def test_entry_is_canonical_json_of_seq_kind_event(record: UsageRecord, seq: int) -> None:
    """An entry is canonical_json({"seq", "kind", "event"}) and its columns match its payload."""
    expected = {"seq": seq, "kind": record.kind, "event": record.to_cloudevent()}
    assert encode_entry(seq, record) == canonical_json(expected)
    row = LedgerRow(*chain_rows([prepare(record)], seq, GENESIS_HASH)[0][0])
    assert row.payload.encode() == canonical_json(expected)
    assert derived_columns(json.loads(row.payload)) == dataclasses.astuple(row)[1:16]
    assert record_from_payload(row.payload) == record


def test_hashes_follow_rfc9162_leaves_and_a_distinct_chain_tag() -> None:
    """leaf = SHA-256(0x00‖entry); link = SHA-256(0x02‖prev‖leaf), from 32 zero bytes."""
    records_ = [make_record(0), make_record(1)]
    rows, head = chain_rows([prepare(r) for r in records_], 0, GENESIS_HASH)
    prev = bytes(32)
    for seq, (row, record) in enumerate(zip(rows, records_, strict=True)):
        entry = encode_entry(seq, record)
        leaf = hashlib.sha256(b"\x00" + entry).digest()
        prev = hashlib.sha256(b"\x02" + prev + leaf).digest()
        assert row[0] == seq and row[COLUMNS.index("leaf_hash")] == leaf.hex()
        assert row[-1] == prev.hex()
    assert head == prev


@given(st.integers(min_value=0, max_value=12))
def test_an_untouched_ledger_verifies(n: int) -> None:
    """Rows written by chain_rows verify, with or without the head."""
    rows = ledger(n)
    for head in (None, head_of(rows)):
        report = verify_entries(rows, head)
        assert report.ok and report.entries == n and report.first_bad_seq is None
        assert "verified" in report.message


def test_a_changed_payload_is_named() -> None:
    """Editing a payload field (not its hash) names that entry and says it was changed."""
    rows = ledger(6)
    rows[3] = dataclasses.replace(rows[3], payload=rows[3].payload.replace('"prompt_tokens":13',
                                                                          '"prompt_tokens":3'))  # fmt: skip
    report = verify_entries(rows)
    assert (report.ok, report.first_bad_seq, report.first_bad_record_id) == (False, 3, "rec_t000003")
    assert "payload does not match its hash" in report.message and report.entries == 6


@given(st.sampled_from(COLUMNS[1:16]), st.integers(min_value=0, max_value=4))
def test_every_denormalized_column_is_checked_against_the_payload(column: str, k: int) -> None:
    """Changing any column that queries read (cost, tenant, day...) names that entry."""
    rows = ledger(5)
    value = getattr(rows[k], column)
    changed: Any = value + 1 if isinstance(value, int) else value + "0"
    rows[k] = dataclasses.replace(rows[k], **{column: changed})
    report = verify_entries(rows)
    assert not report.ok and report.first_bad_seq == k
    assert f"column {column}" in report.message


def test_a_changed_leaf_or_entry_hash_is_named() -> None:
    """A stored hash that was overwritten is named, and which one."""
    for field, words in (("leaf_hash", "leaf hash was changed"), ("entry_hash", "does not link")):
        rows = ledger(5)
        rows[2] = dataclasses.replace(rows[2], **{field: "ab" * 32})  # type: ignore[arg-type]
        report = verify_entries(rows)
        assert (report.first_bad_seq, report.first_bad_record_id) == (2, "rec_t000002")
        assert words in report.message


def test_a_removed_entry_is_named_by_its_position() -> None:
    """Deleting entry k leaves a seq gap: position k is reported, with the entry found there."""
    rows = ledger(6)
    del rows[2]
    report = verify_entries(rows)
    assert (report.first_bad_seq, report.first_bad_record_id) == (2, "rec_t000003")
    assert "entry 2 is missing" in report.message and report.entries == 5


def test_a_removed_and_renumbered_entry_is_named() -> None:
    """Deleting entry k and renumbering the rest is caught by the payload's own seq."""
    rows = ledger(6)
    rows = rows[:2] + [dataclasses.replace(r, seq=r.seq - 1) for r in rows[3:]]
    report = verify_entries(rows)
    assert (report.first_bad_seq, report.first_bad_record_id) == (2, "rec_t000003")
    assert "removed" in report.message


def test_swapped_entries_are_named_as_reordered() -> None:
    """Swapping two entries' contents names the first position and says they were reordered."""
    rows = ledger(6)
    rows[1], rows[4] = (dataclasses.replace(rows[4], seq=1), dataclasses.replace(rows[1], seq=4))
    report = verify_entries(rows)
    assert (report.first_bad_seq, report.first_bad_record_id) == (1, "rec_t000004")
    assert "reordered" in report.message


def test_an_inserted_consistent_forgery_is_named() -> None:
    """A forged entry with correct hashes slipped in at k is named: the next one was written at k."""
    rows = ledger(5)
    shifted = [dataclasses.replace(r, seq=r.seq + 1) for r in rows[2:]]
    tampered = [*rows[:2], forge(make_record(99), 2, rows[1]), *shifted]
    report = verify_entries(tampered)
    assert (report.first_bad_seq, report.first_bad_record_id) == (2, "rec_t000099")
    assert "inserted" in report.message


def test_a_repeated_request_id_is_named_even_with_correct_hashes() -> None:
    """Two entries for one request id are a double charge, however well their hashes chain."""
    records_ = [make_record(0), make_record(1), make_record(2, request_id="req_t000000")]
    rows, _ = chain_rows([prepare(r) for r in records_], 0, GENESIS_HASH)
    report = verify_entries([LedgerRow(*r) for r in rows])
    assert (report.first_bad_seq, report.first_bad_record_id) == (2, "rec_t000002")
    assert "repeats request id req_t000000" in report.message


def test_a_repeated_record_id_is_named() -> None:
    """Two entries with one record id are refused as well."""
    records_ = [make_record(0), make_record(1, record_id="rec_t000000")]
    rows, _ = chain_rows([prepare(r) for r in records_], 0, GENESIS_HASH)
    report = verify_entries([LedgerRow(*r) for r in rows])
    assert report.first_bad_seq == 1 and "repeats record id" in report.message


def test_the_head_catches_entries_removed_from_or_added_at_the_end() -> None:
    """Truncation and appended forgeries are visible against the head row."""
    rows = ledger(5)
    head = head_of(rows)
    short = verify_entries(rows[:3], head)
    assert (short.ok, short.first_bad_seq, short.first_bad_record_id) == (False, 3, None)
    assert "removed from the end" in short.message
    extra = [*rows, forge(make_record(77), 5, rows[-1])]
    added = verify_entries(extra, head)
    assert (added.first_bad_seq, added.first_bad_record_id) == (5, "rec_t000077")
    assert "added outside" in added.message
    moved = verify_entries(rows, LedgerHead(5, "00" * 32))
    assert moved.first_bad_seq == 4 and "head" in moved.message


def test_a_payload_that_is_not_json_is_reported() -> None:
    """A payload replaced by garbage, with matching hashes, is still not a ledger entry."""
    rows = ledger(3)
    rows[1] = dataclasses.replace(rows[1], payload="not json")
    report = verify_entries(rechain(rows))
    assert report.first_bad_seq == 1 and "not a ledger entry" in report.message
