"""The store protocol: group commit, idempotency, durability, append-only, queries, keys.

Tests taking ``store`` run on SQLite and on PostgreSQL (``any_store``); the rest are SQLite's own.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infermeter.billing.migrations import MIGRATIONS
from infermeter.billing.sqlite_store import SqliteStore
from infermeter.billing.store import AppendResult, Store
from infermeter.core.errors import ConfigError, InvalidRequest, NotFound, Unavailable
from infermeter.core.records import UsageRecord
from infermeter.core.types import ServiceTier

from .ledger_records import T0, make_record


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "im.db")
    yield s
    s.close()


def stored_key_rows(store: Store) -> str:
    """Every api_keys row as the database holds it, as text."""
    if isinstance(store, SqliteStore):
        return str(list(sqlite3.connect(store.path).execute("SELECT * FROM api_keys")))
    import psycopg

    with psycopg.connect(store.url) as conn:  # type: ignore[attr-defined]
        return str(conn.execute("SELECT * FROM api_keys").fetchall())


class Results:
    """Collects callback outcomes, thread-safely."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: list[AppendResult | BaseException] = []

    def __call__(self, result: AppendResult | BaseException) -> None:
        with self.lock:
            self.got.append(result)


class Gate:
    """A callback that holds the writer thread until released, so later submits form one group."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, result: AppendResult | BaseException) -> None:
        self.entered.set()
        assert self.release.wait(10)


def hold_writer(store: Store) -> Gate:
    gate = Gate()
    store.submit(make_record(900), gate)
    assert gate.entered.wait(10)
    return gate


# idempotency ---------------------------------------------------------------
def test_a_repeated_append_returns_the_first_record(store: Store) -> None:
    """Appending one request id twice stores one entry; the repeat returns the first, created=False."""
    first = store.append([make_record(1)])[0]
    again = store.append([make_record(1, record_id="rec_other", cost=Decimal("9"))])[0]
    assert first.created and not again.created
    assert again.record == first.record and (again.seq, again.entry_hash) == (0, first.entry_hash)
    assert store.ledger_size() == 1 and store.get_record("rec_other") is None


def test_a_repeat_within_one_append_call_is_not_stored_twice(store: Store) -> None:
    """Two records with one request id in a single append: one entry, the second is a repeat."""
    a, b = store.append([make_record(1), make_record(2, request_id="req_t000001")])
    assert a.created and not b.created and b.record.record_id == "rec_t000001"
    assert b.seq == a.seq == 0 and store.ledger_size() == 1


def test_a_repeated_record_id_is_also_a_repeat(store: Store) -> None:
    """Reusing a record id under another request id returns the stored record."""
    store.append([make_record(1)])
    again = store.append([make_record(2, record_id="rec_t000001")])[0]
    assert not again.created and again.record.request_id == "req_t000001"


def test_repeats_in_the_same_group_commit_return_the_first(store: Store) -> None:
    """Submits of one request id committed in one group: the first is created, the rest repeat it."""
    gate, results = hold_writer(store), Results()
    for i in range(3):
        store.submit(make_record(5, record_id=f"rec_dup{i}"), results)
    gate.release.set()
    store.flush(10)
    assert [r.created for r in results.got] == [True, False, False]  # type: ignore[union-attr]
    assert {r.record.record_id for r in results.got} == {"rec_dup0"}  # type: ignore[union-attr]
    assert store.ledger_size() == 2 and store.verify().ok


def test_a_group_mixing_new_and_stored_request_ids_appends_only_the_new(store: SqliteStore) -> None:
    """A group where one request id is already stored: the new ones are appended, in order, once."""
    first = store.append([make_record(2)])[0]
    results = store.append([make_record(1), make_record(2, record_id="rec_again"), make_record(3)])
    assert [r.created for r in results] == [True, False, True]
    assert results[1] == dataclasses.replace(first, created=False)
    assert [r.seq for r in results] == [1, 0, 2]
    assert store.ledger_size() == 3 and store.verify().ok


@pytest.mark.parametrize("n", [1, 17, 2048 + 37])
def test_appends_of_any_size_store_every_entry_once_in_order(tmp_path: Path, n: int) -> None:
    """Groups that fill a whole number of insert statements or leave a partial one all verify."""
    with SqliteStore(tmp_path / "im.db") as store:
        results = store.append([make_record(i) for i in range(n)])
        assert [r.seq for r in results] == list(range(n)) and all(r.created for r in results)
        assert store.ledger_size() == n and store.verify().ok
        assert store.get_by_request(f"req_t{n - 1:06d}") == make_record(n - 1)


# group commit ----------------------------------------------------------------
def test_group_commit_from_four_threads(store: Store) -> None:
    """5,000 submits from 4 threads: every callback fires once, seqs are 0..4999, verify ok."""
    results = Results()

    def produce(t: int) -> None:
        for i in range(1250):
            store.submit(make_record(t * 1250 + i, tenant_id=f"ten_{t}"), results)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.flush(60)
    assert len(results.got) == 5000
    assert all(isinstance(r, AppendResult) and r.created for r in results.got)
    seqs = sorted(r.seq for r in results.got)  # type: ignore[union-attr]
    assert seqs == list(range(5000)) and store.ledger_size() == 5000
    listed = [seq for seq, _ in store.list_records(None, limit=10_000)]
    assert listed == list(range(5000))
    assert store.verify().ok


def test_a_failing_record_fails_alone(store: Store) -> None:
    """A record that cannot be stored gets its own exception; the rest of its group commits."""
    gate, results = hold_writer(store), Results()
    store.submit(make_record(1), results)
    store.submit(make_record(2, model="bad\udc80"), results)  # a lone surrogate: not UTF-8
    store.submit(make_record(3), results)
    gate.release.set()
    store.flush(10)
    outcomes = {type(r).__name__ for r in results.got}
    assert outcomes == {"AppendResult", "UnicodeEncodeError"} and len(results.got) == 3
    assert isinstance(results.got[1], UnicodeEncodeError)
    assert store.ledger_size() == 3 and store.verify().ok


def test_a_raising_callback_does_not_stop_the_writer(store: Store) -> None:
    """A callback that raises is logged; later appends still commit."""

    def boom(result: AppendResult | BaseException) -> None:
        raise RuntimeError("callback bug")

    store.submit(make_record(1), boom)
    assert store.append([make_record(2)])[0].seq == 1


def test_append_from_inside_a_callback(store: Store) -> None:
    """A callback may append synchronously (it runs on the writer thread) without deadlock."""
    done: list[AppendResult] = []
    store.submit(make_record(1), lambda r: done.extend(store.append([make_record(2)])))
    store.flush(10)
    assert [r.seq for r in done] == [1]


# durability and the schema -----------------------------------------------------
def test_appends_survive_close_and_reopen(open_any: Callable[[], Store]) -> None:
    """Appended and submitted records are there after reopening, and the chain continues."""
    first = open_any()
    first.append([make_record(i) for i in range(3)])
    first.submit(make_record(3), lambda r: None)
    first.close()
    again = open_any()
    with closing(again):
        assert again.ledger_size() == 4 and again.get_record("rec_t000003") == make_record(3)
        assert again.append([make_record(4)])[0].seq == 4
        report = again.verify()
        assert report.ok and report.entries == 5


def test_migrations_are_recorded_and_not_rerun(tmp_path: Path) -> None:
    """Each named migration is applied once and recorded; reopening applies nothing."""
    path = tmp_path / "im.db"
    SqliteStore(path).close()
    SqliteStore(path).close()
    names = [r[0] for r in sqlite3.connect(path).execute("SELECT name FROM migrations")]
    assert names == [m.name for m in MIGRATIONS]


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    """A migration this version does not know means a newer infermeter wrote the file."""
    path = tmp_path / "im.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO migrations VALUES ('9999_future', 'now')")
    with pytest.raises(ConfigError, match="9999_future"):
        SqliteStore(path)


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    """An unknown synchronous mode or an in-memory path is a ConfigError naming the fix."""
    with pytest.raises(ConfigError, match="FULL"):
        SqliteStore(tmp_path / "a.db", synchronous="SOMETIMES")
    with pytest.raises(ConfigError, match="file path"):
        SqliteStore(":memory:")


def test_the_ledger_refuses_update_and_delete(sqlite_store: SqliteStore) -> None:
    """UPDATE and DELETE on ledger rows raise: the table is append-only."""
    store = sqlite_store
    store.append([make_record(1)])
    db = sqlite3.connect(store.path)
    for sql in ("UPDATE ledger SET cost = '0'", "DELETE FROM ledger"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(sql)
    db.close()
    assert store.verify().ok


def test_a_closed_store_refuses_writes(open_any: Callable[[], Store]) -> None:
    """After close, submit raises Unavailable; flush and close return at once."""
    store = open_any()
    store.close()
    with pytest.raises(Unavailable, match="closed"):
        store.submit(make_record(1), lambda r: None)
    store.flush(1)
    store.close()


# queries ---------------------------------------------------------------------
def test_tenant_queries_never_see_another_tenant(store: Store) -> None:
    """list_records, usage_summary and spent for tenant A return only A's entries."""
    store.append([make_record(i, tenant_id="ten_a" if i % 2 else "ten_b") for i in range(10)])
    a_records = [r for _, r in store.list_records("ten_a", limit=100)]
    assert len(a_records) == 5 and {r.tenant_id for r in a_records} == {"ten_a"}
    summary = store.usage_summary("ten_a", "model")
    assert sum(row.requests for row in summary) == 5
    assert store.spent("ten_a") == sum((r.cost for r in a_records), Decimal(0))
    assert store.spent("ten_nobody") == 0 and store.list_records("ten_nobody") == []
    got = store.get_record("rec_t000002")
    assert got is not None and got.tenant_id == "ten_b"  # callers compare it to the caller's


def test_list_records_pages_filters_and_hides_warmup(store: Store) -> None:
    """Pages by after_seq and limit, filters by event time [start, end), warmup only on request."""
    records = [make_record(i) for i in range(6)]
    records.append(make_record(6, tenant_id="ten_a", warmup=True, cost=Decimal(0)))
    store.append(records)
    page1 = store.list_records("ten_a", limit=2)
    page2 = store.list_records("ten_a", limit=2, after_seq=page1[-1][0])
    assert [s for s, _ in page1 + page2] == [0, 1, 2, 3]
    window = store.list_records("ten_a", start=T0 + timedelta(minutes=1),
                                end=T0 + timedelta(minutes=3))  # fmt: skip
    assert [r.record_id for _, r in window] == ["rec_t000001", "rec_t000002"]
    assert len(store.list_records("ten_a", limit=100)) == 6
    assert len(store.list_records("ten_a", limit=100, include_warmup=True)) == 7
    with pytest.raises(InvalidRequest, match="time zone"):
        store.list_records("ten_a", start=datetime(2026, 1, 1))


def test_usage_summary_groups_by_day_model_and_tier(store: Store) -> None:
    """Each grouping sums tokens, device time, RU and cost per key; bad keys are refused."""
    flex = {"service_tier": ServiceTier.FLEX, "model": "other"}
    records = [make_record(i, **(flex if i % 3 == 0 else {})) for i in range(9)]
    store.append(records)
    tiers = {row.key: row for row in store.usage_summary("ten_a", "tier")}
    assert set(tiers) == {"default", "flex"} and tiers["flex"].requests == 3
    assert tiers["flex"].prompt_tokens == sum(r.prompt_tokens for r in records[::3])
    assert [row.key for row in store.usage_summary("ten_a", "model")] == ["other", "tiny-gpt"]
    days = store.usage_summary("ten_a", "day")
    assert [row.key for row in days] == ["2026-11-03"] and days[0].device_us == sum(
        r.device_us for r in records
    )
    with pytest.raises(InvalidRequest, match="group_by"):
        store.usage_summary("ten_a", "hour")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.decimals(min_value=-1000, max_value=10**9, places=12, allow_nan=False),
                min_size=1, max_size=30))  # fmt: skip
def test_money_sums_are_exact(store: Store, costs: list[Decimal]) -> None:
    """usage_summary and spent equal the exact Decimal sum of the records' costs."""
    run = uuid.uuid4().hex[:12]  # one store for every example: a tenant of its own each
    tenant = f"ten_{run}"
    store.append([make_record(i, cost=c, tenant_id=tenant, request_id=f"req_{run}_{i}",
                              record_id=f"rec_{run}_{i}") for i, c in enumerate(costs)])  # fmt: skip
    expected = sum(costs, Decimal(0))
    assert store.spent(tenant) == expected
    assert sum((row.cost for row in store.usage_summary(tenant, "day")), Decimal(0)) == expected


# tenants and keys ------------------------------------------------------------
def test_tenants_are_created_found_and_budgeted(store: Store) -> None:
    """A tenant is found by id or name; names are unique; budgets are exact and never floats."""
    acme = store.create_tenant("acme", Decimal("100.50"))
    assert store.get_tenant(acme.tenant_id) == acme == store.find_tenant("acme")
    assert store.find_tenant(acme.tenant_id) == acme and store.list_tenants() == [acme]
    with pytest.raises(InvalidRequest, match="taken"):
        store.create_tenant("acme")
    assert store.set_budget(acme.tenant_id, None).budget is None
    assert store.set_budget(acme.tenant_id, Decimal("0.1")).budget == Decimal("0.1")
    with pytest.raises(TypeError, match="float"):
        store.set_budget(acme.tenant_id, 0.1)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match=">= 0"):
        store.set_budget(acme.tenant_id, Decimal(-1))
    with pytest.raises(NotFound):
        store.set_budget("ten_missing", None)


def test_keys_are_stored_hashed_and_can_be_revoked(store: Store) -> None:
    """A key's secret is shown once, stored as SHA-256 only, looked up by secret, revocable."""
    tenant = store.create_tenant("acme")
    key, secret = store.create_key(tenant.tenant_id)
    assert secret.startswith("im-") and len(secret) == 43 and key.prefix == secret[:8]
    assert store.lookup_key(secret) == key and store.lookup_key(secret + "x") is None
    if isinstance(store, SqliteStore):
        with open(store.path, "rb") as f:
            assert secret.encode() not in f.read()
    assert secret not in stored_key_rows(store)
    admin, admin_secret = store.create_key(None, admin=True)
    assert admin.admin and admin.tenant_id is None and store.lookup_key(admin_secret) == admin
    assert store.list_keys(tenant.tenant_id) == [key] and len(store.list_keys()) == 2
    revoked = store.revoke_key(key.key_id)
    assert revoked.revoked_at is not None and store.lookup_key(secret) == revoked
    assert store.revoke_key(key.key_id) == revoked  # revoking twice keeps the first time
    with pytest.raises(NotFound):
        store.create_key("ten_missing")
    with pytest.raises(InvalidRequest):
        store.create_key(None)
    with pytest.raises(NotFound):
        store.revoke_key("key_missing")


def test_records_read_back_equal_what_was_appended(store: Store) -> None:
    """get_record and get_by_request return the stored record exactly."""
    record: UsageRecord = make_record(4, reason="x", corrects="rec_t000001", energy_mj=12)
    store.append([record])
    assert store.get_record(record.record_id) == record == store.get_by_request(record.request_id)
    assert store.get_by_request("req_missing") is None
