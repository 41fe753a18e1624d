"""Signed tree heads: their body, their signature, and checking a list of them against a ledger."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.billing.checkpoints import (
    Checkpoint,
    checkpoint_body,
    sign_checkpoint,
    signature_problem,
    verify_checkpoints,
)
from infermeter.billing.ledger import leaf_hash
from infermeter.billing.merkle import merkle_root
from infermeter.billing.signing import LedgerKeys

WHEN = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
LEAVES = [leaf_hash(f"entry {i}".encode()) for i in range(20)]
ORIGIN = "infermeter/test"


@pytest.fixture
def keys(tmp_path: Path) -> LedgerKeys:
    return LedgerKeys(tmp_path / "keys")


def signed(keys: LedgerKeys, size: int, number: int = 1) -> Checkpoint:
    key_id, key = keys.active()
    cp = sign_checkpoint(key_id, key, ORIGIN, size, merkle_root(LEAVES[:size]), WHEN)
    return replace(cp, number=number)


def test_body_is_canonical_json_of_the_signed_fields(keys: LedgerKeys) -> None:
    """The signed bytes are sorted, spaceless JSON of format, origin, size, root, time and key."""
    cp = signed(keys, 5)
    body = json.loads(cp.body())
    assert body == {
        "format": "infermeter.checkpoint.v1",
        "origin": ORIGIN,
        "tree_size": 5,
        "root_hash": merkle_root(LEAVES[:5]).hex(),
        "timestamp": "2026-11-03T12:00:00.000000Z",
        "key_id": keys.active_id(),
    }
    assert cp.body() == checkpoint_body(ORIGIN, 5, cp.root_hash, cp.timestamp, cp.key_id)
    assert b" " not in cp.body()


def test_a_signed_checkpoint_verifies_and_round_trips(keys: LedgerKeys) -> None:
    """A fresh checkpoint verifies with the public keys, also after to_json/from_json."""
    cp = signed(keys, 7)
    assert signature_problem(cp, keys.public_keys()) is None
    assert Checkpoint.from_json(json.loads(json.dumps(cp.to_json()))) == cp


@settings(max_examples=60, deadline=None)
@given(
    field=st.sampled_from(["origin", "tree_size", "root_hash", "timestamp", "key_id", "signature"]),
    data=st.data(),
)
def test_any_changed_field_breaks_the_signature(
    tmp_path_factory: pytest.TempPathFactory, field: str, data: st.DataObject
) -> None:
    """Changing any signed field, or the signature, makes the checkpoint invalid."""
    keys = LedgerKeys(tmp_path_factory.mktemp("k") / "keys")
    cp = signed(keys, 9)
    value = getattr(cp, field)
    if field == "tree_size":
        new: Any = data.draw(st.integers(min_value=0, max_value=100).filter(lambda v: v != value))
    elif field == "signature":
        raw = bytearray(base64.b64decode(value))
        raw[data.draw(st.integers(0, 63))] ^= 1 << data.draw(st.integers(0, 7))
        new = base64.b64encode(bytes(raw)).decode()
    else:
        new = value[:-1] + ("0" if value[-1] != "0" else "1")
    problem = signature_problem(replace(cp, **{field: new}), keys.public_keys())
    assert problem is not None


def test_unknown_key_is_named(keys: LedgerKeys) -> None:
    """A checkpoint by a key not among those given says which key it needs."""
    cp = signed(keys, 3)
    problem = signature_problem(cp, {})
    assert problem is not None and cp.key_id in problem and "/v1/ledger/key" in problem


def test_rotation_keeps_old_checkpoints_verifiable(keys: LedgerKeys) -> None:
    """A checkpoint signed before a rotation still verifies with the rotated key list."""
    old = signed(keys, 4, number=1)
    keys.rotate()
    new = signed(keys, 6, number=2)
    assert old.key_id != new.key_id
    report = verify_checkpoints([old, new], 20, lambda n: merkle_root(LEAVES[:n]), keys.public_keys(), ORIGIN)
    assert report.ok and report.checked == 2


def test_a_truncated_ledger_is_named_against_the_checkpoint(keys: LedgerKeys) -> None:
    """A ledger shorter than a checkpoint fails, naming the first missing entry."""
    cps = [signed(keys, 5, 1), signed(keys, 12, 2)]
    report = verify_checkpoints(cps, 10, lambda n: merkle_root(LEAVES[:n]), keys.public_keys(), ORIGIN)
    assert (report.ok, report.first_bad_checkpoint, report.first_bad_seq) == (False, 2, 10)
    assert "entries 10..11 were removed" in report.message


def test_a_changed_history_is_narrowed_to_a_range(keys: LedgerKeys) -> None:
    """An entry changed between two checkpoints fails the later one, naming the range."""
    cps = [signed(keys, 5, 1), signed(keys, 12, 2)]
    changed = [*LEAVES[:7], leaf_hash(b"forged"), *LEAVES[8:]]
    report = verify_checkpoints(cps, 20, lambda n: merkle_root(changed[:n]), keys.public_keys(), ORIGIN)
    assert (report.ok, report.first_bad_checkpoint) == (False, 2)
    assert "an entry in 5..11 was changed" in report.message


def test_another_logs_checkpoint_is_refused(keys: LedgerKeys) -> None:
    """A validly signed checkpoint of another origin is not accepted for this log."""
    report = verify_checkpoints(
        [signed(keys, 5)], 20, lambda n: merkle_root(LEAVES[:n]), keys.public_keys(), "infermeter/other"
    )
    assert not report.ok and "not this log" in report.message


def test_from_json_names_the_bad_field() -> None:
    """Parsing a malformed checkpoint names the field that is wrong."""
    with pytest.raises(ValueError, match="tree_size"):
        Checkpoint.from_json(
            {"origin": "o", "tree_size": "5", "root_hash": "", "timestamp": "", "key_id": "", "signature": ""}
        )
    with pytest.raises(ValueError, match="format"):
        Checkpoint.from_json({"format": "other"})
