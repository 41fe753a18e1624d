"""Tampering with the SQLite file by hand, as a person with the sqlite3 shell would, is caught.

Each example copies a small, verified ledger, drops the append-only triggers (the first thing
such a person would do), makes one edit, and checks that ``verify`` names the right entry.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.billing.checkpoint_log import CheckpointLog
from infermeter.billing.checkpoints import CheckpointReport
from infermeter.billing.ledger import GENESIS_HASH, chain_hash, chain_rows, leaf_hash, prepare
from infermeter.billing.merkle import merkle_root
from infermeter.billing.signing import LedgerKeys
from infermeter.billing.sqlite_store import SqliteStore
from infermeter.billing.store import VerifyReport
from infermeter.core.records import canonical_json

from .ledger_records import make_record

N = 8
RECORD_IDS = [f"rec_t{i:06d}" for i in range(N)]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tamper") / "ledger.db"
    with SqliteStore(path) as store:
        store.append([make_record(i, tenant_id=f"ten_{i % 3}") for i in range(N)])
        assert store.verify().ok
    return path


def tampered(template: Path, edit: Callable[[sqlite3.Connection], object]) -> VerifyReport:
    """Copy the ledger, apply ``edit`` through sqlite3 with the triggers dropped, verify it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.db"
        shutil.copy(template, path)
        db = sqlite3.connect(path)
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            db.execute(f"DROP TRIGGER {name}")
        edit(db)
        db.commit()
        db.close()
        with SqliteStore(path) as store:
            return store.verify()


def renumber(db: sqlite3.Connection, from_seq: int, by: int) -> None:
    """Shift seq >= from_seq by ``by`` (via a detour, since seq is the primary key)."""
    db.execute("UPDATE ledger SET seq = seq + 1000000 WHERE seq >= ?", (from_seq,))
    db.execute("UPDATE ledger SET seq = seq - 1000000 + ? WHERE seq >= 1000000", (by,))


def forge_at(db: sqlite3.Connection, seq: int, **overrides: object) -> str:
    """Insert a forged entry at ``seq`` whose hashes chain correctly from entry seq - 1."""
    (prev,) = db.execute("SELECT entry_hash FROM ledger WHERE seq = ?", (seq - 1,)).fetchone()
    record = make_record(50, **overrides)
    rows, _ = chain_rows([prepare(record)], seq, bytes.fromhex(prev))
    db.execute(f"INSERT INTO ledger VALUES ({', '.join('?' * len(rows[0]))})", rows[0])
    return record.record_id


@settings(max_examples=40, deadline=None)
@given(k=st.integers(min_value=0, max_value=N - 1), field=st.sampled_from(
    ["prompt_tokens", "cost", "tenant_id", "service_tier", "ended_at"]))  # fmt: skip
def test_a_changed_payload_field_is_named(template: Path, k: int, field: str) -> None:
    """Editing any field inside an entry's payload names that entry."""

    def edit(db: sqlite3.Connection) -> None:
        (payload,) = db.execute("SELECT payload FROM ledger WHERE seq = ?", (k,)).fetchone()
        entry = json.loads(payload)
        data = entry["event"]["data"]
        data[field] = data[field] + 1 if isinstance(data[field], int) else data[field][:-1] + "9"
        db.execute("UPDATE ledger SET payload = ? WHERE seq = ?",
                   (canonical_json(entry).decode(), k))  # fmt: skip

    report = tampered(template, edit)
    assert (report.ok, report.first_bad_seq, report.first_bad_record_id) == (False, k, RECORD_IDS[k])
    assert "payload does not match its hash" in report.message


@settings(max_examples=40, deadline=None)
@given(k=st.integers(min_value=0, max_value=N - 1), column=st.sampled_from(
    ["cost", "tenant_id", "day", "prompt_tokens", "ru_micros", "warmup", "request_id"]))  # fmt: skip
def test_a_changed_column_alone_is_named(template: Path, k: int, column: str) -> None:
    """Editing only a column that queries read (the payload untouched) names that entry."""
    value = "'0'" if column in ("cost", "tenant_id", "day", "request_id") else "77"
    report = tampered(template, lambda db: db.execute(
        f"UPDATE ledger SET {column} = {value} WHERE seq = ?", (k,)))  # fmt: skip
    assert (report.ok, report.first_bad_seq, report.first_bad_record_id) == (False, k, RECORD_IDS[k])
    assert f"column {column}" in report.message


@settings(max_examples=30, deadline=None)
@given(k=st.integers(min_value=0, max_value=N - 1), column=st.sampled_from(["leaf_hash", "entry_hash"]))
def test_a_changed_stored_hash_is_named(template: Path, k: int, column: str) -> None:
    """Overwriting a stored hash names that entry."""
    report = tampered(template, lambda db: db.execute(
        f"UPDATE ledger SET {column} = ? WHERE seq = ?", ("5a" * 32, k)))  # fmt: skip
    assert (report.ok, report.first_bad_seq) == (False, k)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(min_value=0, max_value=N - 1), close_gap=st.booleans())
def test_a_deleted_entry_is_named(template: Path, k: int, close_gap: bool) -> None:
    """Deleting entry k (and perhaps renumbering the rest) names position k."""

    def edit(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM ledger WHERE seq = ?", (k,))
        if close_gap:
            renumber(db, k + 1, -1)

    report = tampered(template, edit)
    assert (report.ok, report.first_bad_seq) == (False, k)
    assert report.first_bad_record_id == (RECORD_IDS[k + 1] if k + 1 < N else None)


@settings(max_examples=30, deadline=None)
@given(pair=st.lists(st.integers(min_value=0, max_value=N - 1), min_size=2, max_size=2,
                     unique=True).map(sorted))  # fmt: skip
def test_swapped_entries_are_named(template: Path, pair: list[int]) -> None:
    """Swapping two entries' places names the earlier position and says they were reordered."""
    i, j = pair

    def edit(db: sqlite3.Connection) -> None:
        db.execute("UPDATE ledger SET seq = -1 WHERE seq = ?", (i,))
        db.execute("UPDATE ledger SET seq = ? WHERE seq = ?", (i, j))
        db.execute("UPDATE ledger SET seq = ? WHERE seq = -1", (j,))

    report = tampered(template, edit)
    assert (report.ok, report.first_bad_seq, report.first_bad_record_id) == (False, i, RECORD_IDS[j])
    assert "reordered" in report.message


@settings(max_examples=30, deadline=None)
@given(k=st.integers(min_value=1, max_value=N))
def test_an_inserted_forged_entry_is_named(template: Path, k: int) -> None:
    """A forged entry with correctly chained hashes, inserted at k, is named as the first bad one."""
    forged: list[str] = []

    def edit(db: sqlite3.Connection) -> None:
        renumber(db, k, +1)
        forged.append(forge_at(db, k))

    report = tampered(template, edit)
    assert (report.ok, report.first_bad_seq, report.first_bad_record_id) == (False, k, forged[0])


def test_a_forged_repeat_of_a_request_is_named(template: Path) -> None:
    """A well-chained forged entry that re-bills an existing request id is still caught."""

    def edit(db: sqlite3.Connection) -> None:
        db.execute("DROP INDEX ledger_request_id")
        forge_at(db, N, request_id="req_t000003")
        (last,) = db.execute("SELECT entry_hash FROM ledger WHERE seq = ?", (N,)).fetchone()
        db.execute("UPDATE ledger_head SET size = ?, head = ?", (N + 1, last))

    report = tampered(template, edit)
    assert (report.ok, report.first_bad_seq, report.first_bad_record_id) == (False, N, "rec_t000050")
    assert "repeats request id req_t000003" in report.message


# Checkpoints: what the chain alone cannot see ------------------------------------------------
# Both edits below leave a self-consistent chain and head, so ``store.verify`` passes; only
# the signed checkpoints (made at sizes 4 and N before the edit) catch them.


@pytest.fixture(scope="module")
def signed_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A verified ledger of N entries with checkpoints at sizes 4 and N, and its key directory."""
    home = tmp_path_factory.mktemp("signed")
    path, keys = home / "ledger.db", home / "keys"
    with SqliteStore(path) as store:
        log = CheckpointLog(path, LedgerKeys(keys), tile=2)
        store.append([make_record(i, tenant_id=f"ten_{i % 3}") for i in range(4)])
        log.checkpoint()
        store.append([make_record(i, tenant_id=f"ten_{i % 3}") for i in range(4, N)])
        log.checkpoint()
        log.close()
    return path, keys


def signed_tampered(
    signed: tuple[Path, Path], edit: Callable[[sqlite3.Connection], object]
) -> tuple[VerifyReport, CheckpointReport]:
    """Copy the signed ledger, edit it with the triggers dropped, verify chain and checkpoints."""
    template, keys = signed
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.db"
        shutil.copy(template, path)
        db = sqlite3.connect(path)
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            db.execute(f"DROP TRIGGER {name}")
        edit(db)
        db.commit()
        db.close()
        with SqliteStore(path) as store:
            chain = store.verify()
        log = CheckpointLog(path, LedgerKeys(keys, create=False))
        try:
            return chain, log.verify()
        finally:
            log.close()


def rechain(db: sqlite3.Connection, from_seq: int) -> None:
    """Recompute every leaf and entry hash from ``from_seq`` on, and the head: a clean forgery."""
    prev = (
        GENESIS_HASH
        if from_seq == 0
        else bytes.fromhex(
            db.execute("SELECT entry_hash FROM ledger WHERE seq = ?", (from_seq - 1,)).fetchone()[0]
        )
    )
    rows = db.execute("SELECT seq, payload FROM ledger WHERE seq >= ? ORDER BY seq", (from_seq,)).fetchall()
    for seq, payload in rows:
        leaf = leaf_hash(payload.encode())
        prev = chain_hash(prev, leaf)
        db.execute(
            "UPDATE ledger SET leaf_hash = ?, entry_hash = ? WHERE seq = ?", (leaf.hex(), prev.hex(), seq)
        )
    size = db.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]
    db.execute("UPDATE ledger_head SET size = ?, head = ?", (size, prev.hex()))


@settings(max_examples=20, deadline=None)
@given(k=st.integers(min_value=1, max_value=N - 1))
def test_a_truncated_tail_is_caught_by_the_latest_checkpoint(
    signed_template: tuple[Path, Path], k: int
) -> None:
    """Entries k.. removed and the head row rewritten: the chain passes, the checkpoint names k."""

    def edit(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM ledger WHERE seq >= ?", (k,))
        (last,) = db.execute("SELECT entry_hash FROM ledger WHERE seq = ?", (k - 1,)).fetchone()
        db.execute("UPDATE ledger_head SET size = ?, head = ?", (k, last))

    chain, checkpoints = signed_tampered(signed_template, edit)
    assert chain.ok
    assert (checkpoints.ok, checkpoints.first_bad_seq) == (False, k)
    assert checkpoints.first_bad_checkpoint == (1 if k < 4 else 2)
    assert f"entries {k}.." in checkpoints.message and "removed after it was signed" in checkpoints.message


@settings(max_examples=20, deadline=None)
@given(k=st.integers(min_value=0, max_value=N - 1), resign_root=st.booleans())
def test_a_rewritten_history_is_caught_by_the_signed_root(
    signed_template: tuple[Path, Path], k: int, resign_root: bool
) -> None:
    """Entry k changed and every later hash recomputed: the chain passes, the checkpoints do not.

    Rewriting the checkpoints' roots to match as well breaks their signatures instead.
    """

    def edit(db: sqlite3.Connection) -> None:
        (payload,) = db.execute("SELECT payload FROM ledger WHERE seq = ?", (k,)).fetchone()
        entry = json.loads(payload)
        entry["event"]["data"]["cost"] = "0"
        db.execute(
            "UPDATE ledger SET payload = ?, cost = '0' WHERE seq = ?", (canonical_json(entry).decode(), k)
        )
        rechain(db, k)
        if resign_root:
            leaves = [leaf_hash(p.encode()) for (p,) in db.execute("SELECT payload FROM ledger ORDER BY seq")]
            for number, size in db.execute("SELECT number, tree_size FROM checkpoints").fetchall():
                db.execute(
                    "UPDATE checkpoints SET root_hash = ? WHERE number = ?",
                    (merkle_root(leaves[:size]).hex(), number),
                )

    chain, checkpoints = signed_tampered(signed_template, edit)
    assert chain.ok
    assert (checkpoints.ok, checkpoints.first_bad_checkpoint) == (False, 1 if k < 4 else 2)
    if resign_root:
        assert "signature does not verify" in checkpoints.message
    else:
        low = 0 if k < 4 else 4
        assert f"an entry in {low}..{3 if k < 4 else N - 1} was changed" in checkpoints.message
