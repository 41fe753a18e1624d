"""The fast canonical encoder writes exactly the bytes that earlier ledgers were hashed over."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.billing.entry_encoding import encode_event, reference_event
from infermeter.billing.ledger import encode_entry, leaf_hash
from infermeter.core.records import UsageRecord, canonical_json

from .ledger_records import T0, make_record

# Any exponent, not only the 12 places the shared strategy uses: exercises plain and
# exponent notation (1E+3, 1.2E-7, 0E-12, -0.000) on the way to the canonical text.
_decimals = st.builds(
    lambda digits, exp, neg: Decimal((neg, tuple(int(d) for d in str(digits)), exp)),
    st.integers(min_value=0, max_value=10**20),
    st.integers(min_value=-20, max_value=6),
    st.booleans(),
)
_zones = st.sampled_from(
    [UTC, timezone(timedelta(0), "GMT"), timezone(timedelta(hours=-3)), timezone(timedelta(hours=9))]
)
_times = st.builds(
    lambda base, us, zone: base.replace(microsecond=us, tzinfo=UTC).astimezone(zone),
    st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2099, 1, 1)),
    st.sampled_from([0, 1, 999_999, 37_000]) | st.integers(min_value=0, max_value=999_999),
    _zones,
)


@settings(max_examples=400, deadline=None)
@given(
    cost=_decimals,
    kv=_decimals,
    weighted=st.none() | _decimals,
    dram=st.none() | _decimals,
    started=_times,
    ended=_times,
    i=st.integers(min_value=0, max_value=10**6),
)
def test_decimals_and_timestamps_encode_as_the_reference_does(
    cost: Decimal,
    kv: Decimal,
    weighted: Decimal | None,
    dram: Decimal | None,
    started: datetime,
    ended: datetime,
    i: int,
) -> None:
    """For any decimal exponent and any zone or fraction, the fast bytes equal canonical_json's."""
    record = make_record(
        i, cost=cost, kv_mb_s=kv, weighted_device_ms=weighted, dram_score=dram,
        started_at=started, ended_at=ended,
    )  # fmt: skip
    assert encode_event(record) == reference_event(record)
    assert encode_event(record)[0].encode() == canonical_json(record.to_cloudevent())


def test_entries_hash_as_they_did_before_the_fast_encoder() -> None:
    """Entry bytes and leaf hashes of fixed records equal those the previous encoder wrote."""
    plain = make_record(
        1, started_at=T0 + timedelta(microseconds=123456), ended_at=T0 + timedelta(seconds=1, microseconds=5)
    )
    unusual = make_record(
        3, cost=Decimal("1.2300E-7"), kv_mb_s=Decimal("5E+2"), dram_score=Decimal("-0.000"),
        weighted_device_ms=Decimal("12.5000"), energy_mj=42,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        ended_at=datetime(2026, 1, 1, 5, 30, 0, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        reason='café "x"', corrects="rec_t000001", kind="adjustment",
    )  # fmt: skip
    assert leaf_hash(encode_entry(0, plain)).hex() == (
        "1dc7a91af5250e8eabe4df1986d7fe7238dd69e76ee4c3854e74174cac7a4490"
    )
    entry = encode_entry(7, unusual)
    assert b'"cost":"0.000000123"' in entry and b'"kv_mb_s":"500"' in entry
    assert b'"dram_score":"0"' in entry and b'"ended_at":"2026-01-01T00:00:00.000001Z"' in entry
    assert b'"started_at":"2026-01-01T00:00:00.000000Z"' in entry
    assert leaf_hash(entry).hex() == "b09ebd2cad46fa3a29182df980c1de599e05614623cc8c60a71b688bb2d941e6"


def test_an_int_subclass_takes_the_reference_path() -> None:
    """A bool where an int belongs is written as json.dumps writes it (true), not as 1."""
    record = dataclasses.replace(make_record(2), cached_tokens=True)
    event, _, _ = encode_event(record)
    assert '"cached_tokens":true' in event
    assert event.encode() == canonical_json(UsageRecord.to_cloudevent(record))
