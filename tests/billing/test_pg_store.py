"""What the PostgreSQL store adds to the protocol: many appenders, one chain; the schema it keeps.

The protocol itself (idempotency, group commit, queries, keys, corrections, checkpoints) is
tested on both stores through ``any_store`` in the other test files.
"""

from __future__ import annotations

import threading

import psycopg
import pytest

from infermeter.billing.pg_migrations import PG_MIGRATIONS
from infermeter.billing.pg_store import PgStore
from infermeter.billing.store import AppendResult
from infermeter.core.errors import ConfigError, Unavailable

from .ledger_records import make_record


def test_four_stores_appending_at_once_make_one_gapless_chain(pg_url: str) -> None:
    """Four stores (as four processes would) append 2,000 records at once: seqs 0..1999, verified."""
    stores = [PgStore(pg_url) for _ in range(4)]
    results: list[AppendResult] = []
    lock = threading.Lock()

    def produce(t: int) -> None:
        for b in range(10):
            got = stores[t].append([make_record(t * 500 + b * 50 + i) for i in range(50)])
            with lock:
                results.extend(got)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.seq for r in results) == list(range(2000)) and all(r.created for r in results)
    report = stores[0].verify()
    assert report.ok and report.entries == 2000, report.message
    for store in stores:
        store.close()


def test_two_stores_appending_the_same_records_enter_each_once(pg_url: str) -> None:
    """The same 300 records sent by two appenders at once (two ingesters): 300 entries, no repeat."""
    a, b = PgStore(pg_url), PgStore(pg_url)
    batches = [[make_record(k * 30 + i) for i in range(30)] for k in range(10)]
    created: list[int] = []

    def send(store: PgStore) -> None:
        for batch in batches:
            created.append(sum(r.created for r in store.append(batch)))

    threads = [threading.Thread(target=send, args=(s,)) for s in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(created) == 300 and a.ledger_size() == 300 and b.verify().ok
    a.close()
    b.close()


def test_the_ledger_refuses_update_delete_and_truncate(pg_url: str) -> None:
    """UPDATE, DELETE and TRUNCATE on the ledger and the checkpoints raise: append-only."""
    with PgStore(pg_url) as store:
        store.append([make_record(1)])
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for sql in (
                "UPDATE ledger SET cost = '0'",
                "DELETE FROM ledger",
                "TRUNCATE ledger",
                "TRUNCATE checkpoints",
            ):
                with pytest.raises(psycopg.errors.RaiseException, match=r"never changed|append-only"):
                    conn.execute(sql)
        assert store.verify().ok and store.ledger_size() == 1


def test_migrations_are_recorded_once_and_a_newer_database_is_refused(pg_url: str) -> None:
    """Opening twice applies each migration once; an unknown migration means a newer version."""
    PgStore(pg_url).close()
    PgStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM migrations ORDER BY name")]
        assert names == [m.name for m in PG_MIGRATIONS]
        conn.execute("INSERT INTO migrations VALUES ('9999_future', 'now')")
    with pytest.raises(ConfigError, match="9999_future"):
        PgStore(pg_url)


def test_verify_names_an_edited_cost_column(pg_url: str) -> None:
    """An edited denormalized column (triggers disabled by an owner) is named by verify."""
    with PgStore(pg_url) as store:
        store.append([make_record(i) for i in range(5)])
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE ledger DISABLE TRIGGER USER")
            conn.execute("UPDATE ledger SET cost = '0' WHERE seq = 3")
        report = store.verify()
        assert not report.ok and report.first_bad_seq == 3 and "column cost" in report.message


def test_an_unreachable_database_is_unavailable_naming_the_fix() -> None:
    """A URL nobody answers on raises Unavailable naming host, port and --db."""
    with pytest.raises(Unavailable, match=r"127\.0\.0\.1:1/x.*--db"):
        PgStore("postgresql://postgres@127.0.0.1:1/x")


def test_a_url_that_is_not_postgresql_is_refused() -> None:
    """PgStore takes only postgresql:// URLs."""
    with pytest.raises(ConfigError, match="postgresql://"):
        PgStore("sqlite:///tmp/x.db")
