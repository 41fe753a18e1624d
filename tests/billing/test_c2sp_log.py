"""The public log over a real SQLite ledger: salted entries, tiles, tlog-proofs, witnesses, audit."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infermeter.billing import signed_note, tlog_proof
from infermeter.billing.log_audit import audit
from infermeter.billing.merkle import EMPTY_ROOT
from infermeter.billing.public_log import PublicLog
from infermeter.billing.signing import LedgerKeys
from infermeter.billing.sqlite_store import SqliteStore
from infermeter.billing.tiles import TileRef, decode_entry_bundle
from infermeter.billing.tlog_checkpoint import TreeHead
from infermeter.billing.witness import AddCheckpoint, Witness
from infermeter.core.errors import LedgerIntegrityError
from tests import independent_tlog as ind

from .ledger_records import make_record


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "im.db") as s:
        yield s


@pytest.fixture
def plog(store: SqliteStore, tmp_path: Path) -> Iterator[PublicLog]:
    log = PublicLog(store.path, LedgerKeys(tmp_path / "keys"))
    yield log
    log.close()


def get_tile(plog: PublicLog, size: int) -> object:
    from infermeter.billing.tiles import parse_tile_path

    def get(path: str) -> bytes:
        data = plog.tile(parse_tile_path(path), size)
        assert data is not None, path
        return data

    return get


def truncate(path: Path, keep: int) -> None:
    """What the issue's attacker does after a kill -9: delete the newest entries, fix the head."""
    db = sqlite3.connect(path)
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    (head,) = db.execute("SELECT entry_hash FROM ledger WHERE seq = ?", (keep - 1,)).fetchone()
    db.execute("DELETE FROM ledger WHERE seq >= ?", (keep,))
    db.execute("UPDATE ledger_head SET size = ?, head = ? WHERE id = 0", (keep, head))
    db.commit()
    db.close()


def test_the_signed_checkpoint_is_the_root_an_independent_client_rebuilds_from_tiles(
    store: SqliteStore, plog: PublicLog
) -> None:
    """600 entries: the note verifies, and the root of the tiles' leaves is its root."""
    store.append([make_record(i) for i in range(600)])
    cp, created = plog.publish()
    assert created and cp.tree_size == 600
    vkey = plog.active_verifier_key().text()
    text, signed = ind.open_note(cp.note.encode(), [vkey])
    origin, size, root = ind.parse_checkpoint(text)
    assert signed == [plog.origin] == [origin] and size == 600
    leaves = ind.fetch_tree(size, get_tile(plog, size))  # type: ignore[arg-type]
    assert ind.mth(leaves) == root


def test_the_tlog_tiles_example_of_70000_entries_is_served_level_by_level(
    store: SqliteStore, plog: PublicLog
) -> None:
    """tlog-tiles' example: 273 full level-0 tiles and one of 112, one full level-1 tile and one
    of 17, one level-2 tile of 1; the independent client checks every hash of every level."""
    for start in range(0, 70_000, 10_000):
        store.append([make_record(i) for i in range(start, start + 10_000)])
    cp, _ = plog.publish()
    assert cp.tree_size == 70_000
    expected = [
        (0, 272, 256), (0, 273, 112), (1, 0, 256), (1, 1, 17), (2, 0, 1), (None, 273, 112)
    ]  # fmt: skip
    for level, index, width in expected:
        data = plog.tile(TileRef(level, index, width), 70_000)
        assert data is not None and len(data) == (32 if level is not None else 34) * width
    for level, index, width in [(0, 274, 1), (1, 1, 18), (2, 0, 2), (3, 0, 1), (1, 2, 1)]:
        assert plog.tile(TileRef(level, index, width), 70_000) is None
    _, size, root = ind.parse_checkpoint(signed_note.parse(cp.note).text)
    leaves = ind.fetch_tree(size, get_tile(plog, size))  # type: ignore[arg-type]
    assert ind.mth(leaves) == root


def test_tile_entries_are_commitments_that_reveal_no_usage(store: SqliteStore, plog: PublicLog) -> None:
    """An entry bundle holds 32-byte hashes; no tenant id, record id or cost appears in it."""
    store.append([make_record(i) for i in range(3)])
    plog.publish()
    bundle = plog.tile(TileRef(None, 0, 3), 3)
    assert bundle is not None
    entries = decode_entry_bundle(bundle)
    assert [len(e) for e in entries] == [32, 32, 32]
    assert b"ten_a" not in bundle and b"rec_t" not in bundle


def test_salts_survive_a_restart_so_the_tree_stays_the_same(store: SqliteStore, tmp_path: Path) -> None:
    """Reopening the log rebuilds the identical root: salts are stored, not redrawn."""
    store.append([make_record(i) for i in range(5)])
    first = PublicLog(store.path, LedgerKeys(tmp_path / "keys"))
    root = first.root(first.sync())
    first.close()
    again = PublicLog(store.path, LedgerKeys(tmp_path / "keys"))
    assert again.root(again.sync()) == root
    again.close()


def test_the_log_refuses_to_sign_after_its_newest_entries_were_deleted(
    store: SqliteStore, tmp_path: Path
) -> None:
    """After a truncation the next start will not sign the shorter tree."""
    store.append([make_record(i) for i in range(5)])
    log = PublicLog(store.path, LedgerKeys(tmp_path / "keys"))
    log.publish()
    log.close()
    truncate(store.path, 3)
    again = PublicLog(store.path, LedgerKeys(tmp_path / "keys"))
    with pytest.raises(LedgerIntegrityError, match="no longer matches public checkpoint 1"):
        again.publish()
    again.close()


def tlog_receipt(plog: PublicLog, seq: int) -> str:
    cp = plog.latest()
    assert cp is not None
    payload = plog._conn.execute("SELECT payload FROM ledger WHERE seq = ?", (seq,)).fetchone()[0]
    return tlog_proof.build(
        plog.salt(seq), payload.encode(), seq, plog.inclusion(seq, cp.tree_size), plog.cosigned(cp)
    )


def test_a_tlog_proof_receipt_verifies_here_and_independently(store: SqliteStore, plog: PublicLog) -> None:
    """Both verifiers accept it, and the entry it carries is the ledger entry itself."""
    store.append([make_record(i) for i in range(9)])
    plog.publish()
    text = tlog_receipt(plog, 4)
    vkey = plog.active_verifier_key()
    verdict = tlog_proof.verify(text, [vkey])
    assert verdict.ok and verdict.record_id == "rec_t000004" and verdict.index == 4, verdict.message
    entry, _ = ind.verify_tlog_proof(text.encode(), vkey.text(), [])
    assert json.loads(entry)["event"]["id"] == "rec_t000004"


def test_a_receipt_whose_record_was_changed_does_not_verify(store: SqliteStore, plog: PublicLog) -> None:
    """Changing the cost in the receipt's entry (re-encoded canonically) breaks the leaf."""
    store.append([make_record(i) for i in range(4)])
    plog.publish()
    proof = tlog_proof.parse(tlog_receipt(plog, 2))
    entry = json.loads(proof.extra[32:])
    entry["event"]["data"]["cost"] = "0"
    from infermeter.core.records import canonical_json

    forged = tlog_proof.build(proof.extra[:32], canonical_json(entry), 2, proof.path, proof.checkpoint)
    verdict = tlog_proof.verify(forged, [plog.active_verifier_key()])
    assert not verdict.ok and "does not hash to leaf 2" in verdict.message


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_changed_byte_of_a_tlog_proof_is_caught(
    store: SqliteStore, plog: PublicLog, data: st.DataObject
) -> None:
    """Flip one byte of a receipt anywhere: it no longer verifies."""
    if plog.sync() == 0:
        store.append([make_record(i) for i in range(6)])
        plog.publish()
    raw = bytearray(tlog_receipt(plog, 3).encode())
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    assert not tlog_proof.verify(bytes(raw), [plog.active_verifier_key()]).ok


def test_k_of_n_cosignatures_are_required_when_asked(
    store: SqliteStore, plog: PublicLog, tmp_path: Path
) -> None:
    """A receipt cosigned by one witness passes with k=1 of 2 and fails with k=2."""
    store.append([make_record(i) for i in range(3)])
    cp, _ = plog.publish()
    w1 = Witness(tmp_path / "w1", "w1.example", [plog.active_verifier_key()])
    w2 = Witness(tmp_path / "w2", "w2.example", [plog.active_verifier_key()])
    reply = w1.add_checkpoint(AddCheckpoint(0, (), cp.note.encode()).encode())
    assert reply.status == 200
    (sig,) = signed_note.parse(signed_note.parse(cp.note).text + "\n" + reply.body).signatures
    plog.add_cosignature(cp, "w1.example", sig)
    text = tlog_receipt(plog, 1)
    keys = [plog.active_verifier_key()]
    witnesses = [w1.verifier_key, w2.verifier_key]
    assert tlog_proof.verify(text, keys, witnesses, 1).cosigned_by == ("w1.example",)
    assert not tlog_proof.verify(text, keys, witnesses, 2).ok
    assert ind.verify_tlog_proof(text.encode(), keys[0].text(), [w.text() for w in witnesses])[1] == [
        "w1.example"
    ]
    w1.close()
    w2.close()


def test_a_witness_cosigns_growth_and_refuses_rollbacks_and_bad_proofs(
    store: SqliteStore, plog: PublicLog, tmp_path: Path
) -> None:
    """200 for growth; 409 (with its size) for a stale old; 422 for a bad proof; 400, 403, 404."""
    witness = Witness(tmp_path / "w", "w.example", [plog.active_verifier_key()])
    store.append([make_record(i) for i in range(5)])
    five, _ = plog.publish()
    assert witness.add_checkpoint(AddCheckpoint(0, (), five.note.encode()).encode()).status == 200
    store.append([make_record(i) for i in range(5, 9)])
    nine, _ = plog.publish()
    stale = witness.add_checkpoint(AddCheckpoint(0, (), nine.note.encode()).encode())
    assert (stale.status, stale.body, stale.content_type) == (409, "5\n", "text/x.tlog.size")
    wrong = tuple(bytes(32) for _ in plog.consistency(5, 9))
    assert witness.add_checkpoint(AddCheckpoint(5, wrong, nine.note.encode()).encode()).status == 422
    good = AddCheckpoint(5, tuple(plog.consistency(5, 9)), nine.note.encode()).encode()
    assert witness.add_checkpoint(good).status == 200
    assert witness.latest(plog.origin) == (9, bytes.fromhex(nine.root_hash))
    back = witness.add_checkpoint(AddCheckpoint(9, (), five.note.encode()).encode())
    assert back.status == 400  # old 9 > size 5: the witness never goes back
    assert witness.add_checkpoint(AddCheckpoint(5, (), five.note.encode()).encode()).status == 409
    assert witness.add_checkpoint(b"old 0\n\nnot a note").status == 400
    text = signed_note.parse(nine.note).text
    impostor = Ed25519PrivateKey.generate()
    forged = signed_note.Note(text, (signed_note.sign(text, plog.origin, impostor),)).encode()
    assert witness.add_checkpoint(AddCheckpoint(9, (), forged).encode()).status == 403
    other = Witness(tmp_path / "o", "o.example", [signed_note.VerifierKey.parse(
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")])  # fmt: skip
    assert other.add_checkpoint(AddCheckpoint(0, (), nine.note.encode()).encode()).status == 404
    witness.close()
    other.close()


def test_a_witness_answers_422_for_the_same_size_with_another_root(
    store: SqliteStore, plog: PublicLog, tmp_path: Path
) -> None:
    """tlog-witness: old = checkpoint size but a different root is 422, not 409, and not cosigned."""
    witness = Witness(tmp_path / "w", "w.example", [plog.active_verifier_key()])
    store.append([make_record(i) for i in range(3)])
    three, _ = plog.publish()
    assert witness.add_checkpoint(AddCheckpoint(0, (), three.note.encode()).encode()).status == 200
    fork = TreeHead(plog.origin, 3, bytes(32)).text()
    _, key = plog.keys.active()
    forged = signed_note.Note(fork, (signed_note.sign(fork, plog.origin, key),)).encode()
    reply = witness.add_checkpoint(AddCheckpoint(3, (), forged).encode())
    assert (reply.status, reply.content_type) == (422, "text/plain; charset=utf-8")
    assert "forks" in reply.body and witness.latest(plog.origin) == (3, bytes.fromhex(three.root_hash))
    same = witness.add_checkpoint(AddCheckpoint(3, (), three.note.encode()).encode())
    assert same.status == 200  # the same checkpoint again is consistent: cosigned anew
    witness.close()


def test_a_witness_answers_422_for_a_size_zero_checkpoint_without_the_empty_root(
    plog: PublicLog, tmp_path: Path
) -> None:
    """tlog-witness: size 0 must carry SHA-256(''); any other root is 422; the empty tree is 200."""
    witness = Witness(tmp_path / "w", "w.example", [plog.active_verifier_key()])
    _, key = plog.keys.active()

    def note(root: bytes) -> bytes:
        text = TreeHead(plog.origin, 0, root).text()
        return signed_note.Note(text, (signed_note.sign(text, plog.origin, key),)).encode()

    assert witness.add_checkpoint(AddCheckpoint(0, (), note(bytes(32))).encode()).status == 422
    assert witness.latest(plog.origin) is None
    assert witness.add_checkpoint(AddCheckpoint(0, (), note(EMPTY_ROOT)).encode()).status == 200
    witness.close()


def test_a_witness_refuses_a_proof_from_old_size_zero_and_more_than_63_proof_lines(
    store: SqliteStore, plog: PublicLog, tmp_path: Path
) -> None:
    """tlog-witness: from old 0 the proof MUST be empty (422); a client sends at most 63 lines (400)."""
    witness = Witness(tmp_path / "w", "w.example", [plog.active_verifier_key()])
    store.append([make_record(i) for i in range(3)])
    three, _ = plog.publish()
    assert witness.add_checkpoint(AddCheckpoint(0, (bytes(32),), three.note.encode()).encode()).status == 422
    many = AddCheckpoint(0, tuple(bytes(32) for _ in range(64)), three.note.encode()).encode()
    assert witness.add_checkpoint(many).status == 400
    witness.close()


def test_the_witness_monitoring_view_serves_the_cosigned_checkpoint(
    store: SqliteStore, plog: PublicLog, tmp_path: Path
) -> None:
    """tlog-witness: GET <hex SHA-256(origin)>/checkpoint has the log's signature and the cosignature."""
    witness = Witness(tmp_path / "w", "w.example", [plog.active_verifier_key()])
    origin_hash = hashlib.sha256(plog.origin.encode()).hexdigest()
    assert witness.checkpoint(origin_hash).status == 404  # never cosigned
    store.append([make_record(i) for i in range(4)])
    four, _ = plog.publish()
    cosig = witness.add_checkpoint(AddCheckpoint(0, (), four.note.encode()).encode()).body
    view = witness.checkpoint(origin_hash)
    assert view.status == 200 and view.body == four.note + cosig
    keys = [plog.active_verifier_key().text(), witness.verifier_key.text()]
    assert ind.open_note(view.body.encode(), keys)[1] == [plog.origin, "w.example"]
    assert witness.checkpoint(origin_hash.upper()).status == 404
    witness.close()


def test_the_audit_names_the_fork_a_witness_cosigned(
    store: SqliteStore, plog: PublicLog, tmp_path: Path
) -> None:
    """A cosigned checkpoint of 6 entries against a ledger cut back to 4 is a named rollback."""
    witness = Witness(tmp_path / "w", "w.example", [plog.active_verifier_key()])
    store.append([make_record(i) for i in range(6)])
    cp, _ = plog.publish()
    reply = witness.add_checkpoint(AddCheckpoint(0, (), cp.note.encode()).encode())
    note = plog.cosigned(cp).encode().decode() + reply.body
    tree, size = plog.rebuilt()
    keys = plog.verifier_keys()
    ok = audit([("held", note)], size, tree.root, plog.origin, keys, [witness.verifier_key], 1)
    assert ok.ok and ok.witnessed_size == 6, ok.message
    truncate(store.path, 4)
    tree, size = plog.rebuilt()
    bad = audit([("held", note)], size, tree.root, plog.origin, keys, [witness.verifier_key], 1)
    assert not bad.ok and bad.first_bad_seq == 4
    assert "FORK" in bad.message and "w.example" in bad.message and "entries 4..5 were removed" in bad.message
    witness.close()
