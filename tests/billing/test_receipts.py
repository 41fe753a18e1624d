"""Receipts verify offline with only the public keys; any change to one is rejected."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.billing.checkpoint_log import CheckpointLog
from infermeter.billing.receipts import build_receipt, verify_receipt
from infermeter.billing.signing import LedgerKeys
from infermeter.billing.sqlite_store import SqliteStore
from infermeter.core.records import UsageRecord

from .ledger_records import make_record, records

N = 13
Signed = tuple[list[dict[str, Any]], dict[str, bytes]]


def receipt_for(log: CheckpointLog, record_id: str) -> dict[str, Any]:
    entry = log.entry(record_id)
    assert entry is not None
    cp = log.covering(entry.seq)
    return build_receipt(entry.payload, entry.seq, log.inclusion(entry.seq, cp.tree_size), cp)


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    """Receipts for every entry of a small ledger (two checkpoints), and the public keys."""
    home = tmp_path_factory.mktemp("receipts")
    with SqliteStore(home / "im.db") as store:
        log = CheckpointLog(store.path, LedgerKeys(home / "keys"), tile=4)
        store.append([make_record(i) for i in range(5)])
        early = [receipt_for(log, f"rec_t{i:06d}") for i in range(5)]
        store.append([make_record(i) for i in range(5, N)])
        late = [receipt_for(log, f"rec_t{i:06d}") for i in range(5, N)]
        keys = log.keys.public_keys()
        log.close()
    yield early + late, keys


def test_every_receipt_verifies_offline(signed: Signed) -> None:
    """Each entry's receipt, saved as JSON and read back, verifies with the public keys alone."""
    receipts, keys = signed
    for i, receipt in enumerate(receipts):
        verdict = verify_receipt(json.loads(json.dumps(receipt)), keys)
        assert verdict.ok, verdict.message
        assert (verdict.record_id, verdict.leaf_index) == (f"rec_t{i:06d}", i)
    assert {r["checkpoint"]["tree_size"] for r in receipts} == {5, N}


def _flip_hex(text: str) -> str:
    return text[:-1] + ("0" if text[-1] != "0" else "1")


def _flip_b64(text: str) -> str:
    """Change the first character (a fixed "A" left a signature that began with "A" unchanged)."""
    return ("B" if text[0] == "A" else "A") + text[1:]


MUTATIONS = {
    "cost": lambda r: r["entry"]["event"]["data"].__setitem__("cost", "0"),
    "tenant": lambda r: r["entry"]["event"]["data"].__setitem__("tenant_id", "ten_other"),
    "tokens": lambda r: r["entry"]["event"]["data"].__setitem__(
        "completion_tokens", r["entry"]["event"]["data"]["completion_tokens"] + 1
    ),
    "time": lambda r: r["entry"]["event"].__setitem__("time", "2020-01-01T00:00:00.000000Z"),
    "kind": lambda r: r["entry"].__setitem__("kind", "credit"),
    "seq": lambda r: r["entry"].__setitem__("seq", r["entry"]["seq"] + 1),
    "leaf_index": lambda r: r.__setitem__("leaf_index", r["leaf_index"] + 1),
    "leaf_hash": lambda r: r.__setitem__("leaf_hash", _flip_hex(r["leaf_hash"])),
    "proof": lambda r: r["inclusion_proof"].__setitem__(0, _flip_hex(r["inclusion_proof"][0])),
    "proof_dropped": lambda r: r["inclusion_proof"].pop(),
    "root": lambda r: r["checkpoint"].__setitem__("root_hash", _flip_hex(r["checkpoint"]["root_hash"])),
    "tree_size": lambda r: r["checkpoint"].__setitem__("tree_size", r["checkpoint"]["tree_size"] + 1),
    "timestamp": lambda r: r["checkpoint"].__setitem__("timestamp", "2020-01-01T00:00:00.000000Z"),
    "origin": lambda r: r["checkpoint"].__setitem__("origin", "infermeter/elsewhere"),
    "signature": lambda r: r["checkpoint"].__setitem__("signature", _flip_b64(r["checkpoint"]["signature"])),
}


@settings(max_examples=120, deadline=None)
@given(index=st.integers(min_value=0, max_value=N - 1), mutation=st.sampled_from(sorted(MUTATIONS)))
def test_any_change_to_a_receipt_is_rejected(signed: Signed, index: int, mutation: str) -> None:
    """Changing the record, its position, the proof, or the checkpoint makes the receipt invalid."""
    receipts, keys = signed
    receipt = copy.deepcopy(receipts[index])
    if mutation.startswith("proof") and not receipt["inclusion_proof"]:
        return  # a one-entry tree has no proof to change
    MUTATIONS[mutation](receipt)
    verdict = verify_receipt(receipt, keys)
    assert not verdict.ok and verdict.message


def test_a_changed_record_is_reported_as_such(signed: Signed) -> None:
    """A receipt whose record was edited says the record was changed."""
    receipts, keys = signed
    receipt = copy.deepcopy(receipts[3])
    receipt["entry"]["event"]["data"]["cost"] = "0"
    assert "record was changed" in verify_receipt(receipt, keys).message


def test_the_wrong_key_is_rejected(signed: Signed, tmp_path: Path) -> None:
    """Another log's key, or the right id with another key, does not verify a receipt."""
    receipts, keys = signed
    other = LedgerKeys(tmp_path / "other").public_keys()
    assert "not among the public keys" in verify_receipt(receipts[0], other).message
    swapped = {key_id: next(iter(other.values())) for key_id in keys}
    assert "does not verify" in verify_receipt(receipts[0], swapped).message


@settings(max_examples=60, deadline=None)
@given(
    junk=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
        max_leaves=10,
    )
)
def test_malformed_documents_get_a_verdict_not_a_crash(signed: Signed, junk: object) -> None:
    """Whatever JSON is passed, or put in place of a receipt's parts, the verifier says no."""
    receipts, keys = signed
    assert not verify_receipt(junk, keys).ok
    for part in ("entry", "checkpoint", "inclusion_proof", "leaf_index", "leaf_hash"):
        receipt = copy.deepcopy(receipts[2])
        receipt[part] = junk
        verdict = verify_receipt(receipt, keys)
        assert not verdict.ok or (part == "leaf_hash" and junk == "")  # no stated leaf: recomputed


_odd_text = st.text(min_size=1, max_size=12)
_odd_records = records(unusual=False) | st.builds(
    lambda i, t, m, r: make_record(i, tenant_id=t, model=m, reason=r, kind="credit", corrects=t),
    st.integers(0, 10**6),
    _odd_text,
    _odd_text,
    _odd_text,
)


@settings(max_examples=40, deadline=None)
@given(record=_odd_records)
def test_unusual_records_get_receipts_that_verify(
    tmp_path_factory: pytest.TempPathFactory, record: UsageRecord
) -> None:
    """Any text (quotes, escapes, non-ASCII), odd decimals and zones re-encode to the hashed bytes."""
    home = tmp_path_factory.mktemp("odd")
    with SqliteStore(home / "im.db") as store:
        store.append([record])
        log = CheckpointLog(store.path, LedgerKeys(home / "keys"))
        receipt = receipt_for(log, record.record_id)
        keys = log.keys.public_keys()
        log.close()
    assert verify_receipt(json.loads(json.dumps(receipt, ensure_ascii=True)), keys).ok


def test_a_receipt_naming_another_record_is_rejected(signed: Signed) -> None:
    """A valid proof of one entry does not prove the record id written at the receipt's top."""
    receipts, keys = signed
    forged = copy.deepcopy(receipts[2])
    forged["record_id"] = receipts[3]["record_id"]
    verdict = verify_receipt(forged, keys)
    assert not verdict.ok
    assert receipts[3]["record_id"] in verdict.message and "does not prove" in verdict.message
