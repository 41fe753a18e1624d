"""The optional ``stopped_by`` field: on the ledger when set, absent (old hashes kept) when not."""

from __future__ import annotations

import json

from infermeter.billing.entry_encoding import encode_event, reference_event
from infermeter.core.records import UsageRecord
from tests.billing.ledger_records import make_record


def test_a_record_without_stopped_by_encodes_as_before() -> None:
    """No stopped_by key at all, so entries written before the field existed hash the same."""
    record = make_record(3)
    assert "stopped_by" not in record.to_cloudevent()["data"]
    assert encode_event(record) == reference_event(record)


def test_stopped_by_is_encoded_and_read_back_when_set() -> None:
    """A budget-stopped record carries stopped_by on the ledger and round-trips it."""
    record = make_record(4, stopped_by="budget")
    text, _time, _cost = encode_event(record)
    assert text == reference_event(record)[0]
    assert json.loads(text)["data"]["stopped_by"] == "budget"
    assert UsageRecord.from_cloudevent(json.loads(text)) == record
