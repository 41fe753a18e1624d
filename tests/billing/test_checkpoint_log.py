"""The checkpoint log over a real SQLite or PostgreSQL ledger: signing, proving, refusing changes."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar, cast

import pytest

from infermeter.billing.checkpoint_log import CheckpointLog, CheckpointScheduler
from infermeter.billing.checkpoints import signature_problem
from infermeter.billing.ledger import leaf_hash
from infermeter.billing.merkle import merkle_root, verify_consistency, verify_inclusion
from infermeter.billing.signing import LedgerKeys
from infermeter.billing.sqlite_store import SqliteStore
from infermeter.billing.store import Store
from infermeter.config import load_settings
from infermeter.core.errors import ConfigError, LedgerIntegrityError, NotFound
from tests.pgtools import checkpoint_log_for, raw_edit, raw_query

from .ledger_records import make_record

T = TypeVar("T")


class LedgerStore(Store, Protocol):
    """Both ledger stores (SQLite and PostgreSQL) list their leaf hashes too."""

    def leaf_hashes(self, size: int | None = None) -> list[bytes]: ...


@pytest.fixture
def store(any_store: Store) -> LedgerStore:
    return cast(LedgerStore, any_store)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    """The embedded store alone: the one-writer path is the SQLite file's."""
    s = SqliteStore(tmp_path / "one-writer.db")
    yield s
    s.close()


@pytest.fixture
def log(store: Store, tmp_path: Path) -> Iterator[CheckpointLog]:
    cl: CheckpointLog = checkpoint_log_for(store, LedgerKeys(tmp_path / "keys"), tile=4)  # type: ignore[assignment]
    yield cl
    cl.close()


def test_a_checkpoint_signs_the_ledgers_merkle_root(store: LedgerStore, log: CheckpointLog) -> None:
    """The checkpoint's root is MTH of the stored leaf hashes, signed by the active key."""
    store.append([make_record(i) for i in range(11)])
    cp, created = log.checkpoint()
    assert created and cp.number == 1 and cp.tree_size == 11
    assert cp.root_hash == merkle_root(store.leaf_hashes()).hex()
    assert signature_problem(cp, log.keys.public_keys()) is None
    assert cp.origin == log.origin and log.origin.startswith("infermeter/")


def test_checkpoints_are_inserted_by_the_stores_writer_thread(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    """Given the store's writer, the log writes nothing itself: the checkpoint row comes from it."""
    threads: list[str] = []

    def write(fn: Callable[[sqlite3.Connection], T]) -> T:
        def on_writer(conn: sqlite3.Connection) -> T:
            threads.append(threading.current_thread().name)
            return fn(conn)

        return sqlite_store.write(on_writer)

    log = CheckpointLog(sqlite_store.path, LedgerKeys(tmp_path / "keys"), write=write)
    sqlite_store.append([make_record(i) for i in range(3)])
    cp, created = log.checkpoint()
    log.close()
    assert created and threads == ["infermeter-ledger-writer"]
    assert log_latest(sqlite_store.path) == (cp.number, 3)


def test_a_log_without_a_store_writer_inserts_on_its_own_connection(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    """The CLI's log (no store in its process) signs and stores checkpoints by itself."""
    sqlite_store.append([make_record(0)])
    log = CheckpointLog(sqlite_store.path, LedgerKeys(tmp_path / "keys"))
    cp, created = log.checkpoint()
    log.close()
    assert created and log_latest(sqlite_store.path) == (cp.number, 1)


def log_latest(path: Path) -> tuple[int, int]:
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT number, tree_size FROM checkpoints ORDER BY number DESC LIMIT 1").fetchone()
    finally:
        db.close()
    return int(row[0]), int(row[1])


def test_an_unchanged_ledger_gets_no_new_checkpoint_until_the_key_changes(
    store: Store, log: CheckpointLog
) -> None:
    """Asking again without growth returns the same checkpoint; after a rotation, a new one."""
    store.append([make_record(0)])
    first, _ = log.checkpoint()
    again, created = log.checkpoint()
    assert (again, created) == (first, False)
    log.keys.rotate()
    rotated, created = log.checkpoint()
    assert created and rotated.tree_size == first.tree_size and rotated.key_id != first.key_id
    assert log.verify().ok


def test_proofs_verify_against_stored_checkpoints(store: Store, log: CheckpointLog) -> None:
    """Inclusion proofs against an older checkpoint and consistency proofs between two verify."""
    store.append([make_record(i) for i in range(6)])
    old, _ = log.checkpoint()
    store.append([make_record(i) for i in range(6, 23)])
    new, _ = log.checkpoint()
    old_root, new_root = bytes.fromhex(old.root_hash), bytes.fromhex(new.root_hash)
    for seq in range(old.tree_size):
        proof = log.inclusion(seq, old.tree_size)
        assert verify_inclusion(log.leaf(seq), seq, old.tree_size, proof, old_root)
    proof = log.consistency(old.tree_size, new.tree_size)
    assert verify_consistency(old.tree_size, new.tree_size, old_root, new_root, proof)
    assert log.at_size(6) == old and log.latest() == new
    assert [c.number for c in log.page(after=0, limit=10)] == [1, 2]
    assert log.page(after=1, limit=10) == [new]


def test_covering_makes_a_checkpoint_only_when_needed(store: Store, log: CheckpointLog) -> None:
    """An entry past the newest checkpoint gets a new one; an older entry reuses it."""
    store.append([make_record(i) for i in range(3)])
    cp = log.covering(2)
    assert cp.tree_size == 3
    store.append([make_record(3)])
    assert log.covering(1) == cp
    assert log.covering(3).tree_size == 4


def test_entries_are_found_by_record_or_request_id(store: Store, log: CheckpointLog) -> None:
    """entry() finds a stored entry by its record id or its request id, else None."""
    store.append([make_record(i) for i in range(3)])
    by_record, by_request = log.entry("rec_t000001"), log.entry("req_t000001")
    assert by_record == by_request and by_record is not None and by_record.seq == 1
    assert log.entry("nope") is None
    with pytest.raises(NotFound, match="fewer than 9"):
        log.inclusion(0, 9)


def test_no_checkpoint_is_signed_over_a_changed_payload(store: Store, log: CheckpointLog) -> None:
    """A payload that no longer matches its leaf hash stops the log, naming the entry."""
    store.append([make_record(i) for i in range(4)])
    raw_edit(
        store,
        "UPDATE ledger SET payload = replace(payload, '\"prompt_tokens\":12', "
        "'\"prompt_tokens\":13') WHERE seq = 2",
    )
    with pytest.raises(LedgerIntegrityError, match=r"entry 2 \(rec_t000002\)"):
        log.checkpoint()


def test_no_checkpoint_is_signed_over_a_rewritten_history(store: Store, tmp_path: Path) -> None:
    """If the signed part of the tree changed since the last checkpoint, the next is refused."""
    store.append([make_record(i) for i in range(4)])
    keys = LedgerKeys(tmp_path / "keys")
    first: CheckpointLog = checkpoint_log_for(store, keys)  # type: ignore[assignment]
    first.checkpoint()
    first.close()
    ((payload,),) = raw_query(store, "SELECT payload FROM ledger WHERE seq = 1")
    assert isinstance(payload, str)
    forged = payload.replace('"prompt_tokens":11', '"prompt_tokens":1')
    raw_edit(
        store,
        "UPDATE ledger SET payload = ?, leaf_hash = ? WHERE seq = 1",
        forged,
        leaf_hash(forged.encode()).hex(),
    )  # the row is self-consistent again
    fresh: CheckpointLog = checkpoint_log_for(store, keys)  # type: ignore[assignment]
    with pytest.raises(LedgerIntegrityError, match="no longer matches checkpoint 1"):
        fresh.checkpoint()
    fresh.close()


def test_the_scheduler_signs_what_was_appended_when_it_stops(store: Store, log: CheckpointLog) -> None:
    """Stopping the scheduler signs the ledger's last state; with nothing new it signs nothing."""
    scheduler = CheckpointScheduler(log, interval_s=3600)
    scheduler.start()
    store.append([make_record(i) for i in range(5)])
    scheduler.stop(final=True)
    latest = log.latest()
    assert latest is not None and latest.tree_size == 5
    idle = CheckpointScheduler(log, interval_s=3600)
    idle.start()
    idle.stop(final=True)
    assert log.page(after=0, limit=10) == [latest]


def test_checkpoints_are_append_only(tmp_path: Path) -> None:
    """The checkpoints table refuses UPDATE and DELETE, like the ledger."""
    store = SqliteStore(tmp_path / "im.db")
    store.append([make_record(0)])
    log = CheckpointLog(store.path, LedgerKeys(tmp_path / "keys"))
    log.checkpoint()
    log.close()
    store.close()
    db = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.IntegrityError, match="never changed or removed"):
        db.execute("UPDATE checkpoints SET tree_size = 0")
    with pytest.raises(sqlite3.IntegrityError, match="never changed or removed"):
        db.execute("DELETE FROM checkpoints")
    db.close()


def test_checkpoint_interval_setting() -> None:
    """checkpoint_interval_s defaults to 60, reads INFERMETER_CHECKPOINT_INTERVAL_S, refuses < 0."""
    assert load_settings(env={}).checkpoint_interval_s == 60
    assert load_settings(env={"INFERMETER_CHECKPOINT_INTERVAL_S": "0"}).checkpoint_interval_s == 0
    with pytest.raises(ConfigError, match="checkpoint_interval_s"):
        load_settings({"checkpoint_interval_s": -1}, env={})
