"""The usage queue on a real nats-server and PostgreSQL: outbox → JetStream → ledger, exactly once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

from infermeter.billing.ingest import Ingester, IngestStats
from infermeter.billing.outbox import NOT_IN_LEDGER, Outbox
from infermeter.billing.pg_store import PgStore
from infermeter.billing.relay import Relay
from infermeter.billing.store import AppendResult
from tests.billing.ledger_records import make_record

from .conftest import NatsServer


def wait_for(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def ingest_until_idle(store: PgStore, url: str, idle_s: float = 2.0, batch: int = 200) -> IngestStats:
    return asyncio.run(
        Ingester(store, url, batch=batch, fetch_timeout_s=0.5).run(asyncio.Event(), idle_exit_s=idle_s)
    )


def submit_all(outbox: Outbox, first: int, n: int) -> list[AppendResult | BaseException]:
    got: list[AppendResult | BaseException] = []
    for i in range(first, first + n):
        outbox.submit(make_record(i), got.append)
    outbox.flush(30)
    return got


def test_records_reach_the_ledger_once_and_leave_the_outbox(
    tmp_path: Path, pg_url: str, nats_server: NatsServer
) -> None:
    """500 records: committed to the outbox, relayed, ingested into a verified ledger, then trimmed."""
    store, outbox = PgStore(pg_url), Outbox(tmp_path / "outbox.db")
    relay = Relay(outbox, nats_server.url, store.has_records, "w1")
    relay.start()
    got = submit_all(outbox, 0, 500)
    assert all(isinstance(r, AppendResult) and r.created and r.seq == NOT_IN_LEDGER for r in got)
    wait_for(lambda: relay.published_total >= 500)
    stats = ingest_until_idle(store, nats_server.url)
    assert stats.created == 500 and store.ledger_size() == 500 and store.verify().ok
    wait_for(lambda: outbox.depth() == 0)
    relay.stop()
    outbox.close()
    store.close()


def test_a_request_repeated_in_the_outbox_returns_the_first_record(tmp_path: Path) -> None:
    """Submitting one request id twice keeps one outbox row; the repeat gets the first record back."""
    outbox = Outbox(tmp_path / "outbox.db")
    got: list[AppendResult | BaseException] = []
    outbox.submit(make_record(1), got.append)
    outbox.submit(make_record(1, record_id="rec_other"), got.append)
    outbox.flush(10)
    first, again = got
    assert isinstance(first, AppendResult) and isinstance(again, AppendResult)
    assert first.created and not again.created and again.record.record_id == "rec_t000001"
    assert outbox.depth() == 1
    outbox.close()


def test_two_ingesters_and_republished_records_never_double_enter(
    tmp_path: Path, pg_url: str, nats_server: NatsServer
) -> None:
    """Every record published twice (a relay retry), two ingesters at once: each record once."""
    outbox = Outbox(tmp_path / "outbox.db")
    store_a, store_b = PgStore(pg_url), PgStore(pg_url)
    relay = Relay(outbox, nats_server.url, lambda ids: set(), "w1")  # never trims: keeps rows
    relay.start()
    submit_all(outbox, 0, 400)
    wait_for(lambda: relay.published_total >= 400)
    outbox.mark_unpublished([r.n for r in outbox.published(1000)])  # publish all again, same ids
    wait_for(lambda: relay.published_total >= 800)
    relay.stop()
    results: list[IngestStats] = []
    threads = [
        threading.Thread(target=lambda s=s: results.append(ingest_until_idle(s, nats_server.url, batch=50)))
        for s in (store_a, store_b)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store_a.ledger_size() == 400 and store_a.verify().ok
    assert sum(r.created for r in results) == 400
    outbox.close()
    store_a.close()
    store_b.close()


def test_an_ingester_that_died_after_commit_before_ack_enters_nothing_twice(
    tmp_path: Path, pg_url: str, nats_server: NatsServer
) -> None:
    """Records already in the ledger (committed, never acknowledged) are delivered again and dropped."""
    store, outbox = PgStore(pg_url), Outbox(tmp_path / "outbox.db")
    relay = Relay(outbox, nats_server.url, lambda ids: set(), "w1")
    relay.start()
    submit_all(outbox, 0, 100)
    wait_for(lambda: relay.published_total >= 100)
    relay.stop()
    store.append([make_record(i) for i in range(60)])  # what the dead ingester committed
    stats = ingest_until_idle(store, nats_server.url)
    assert (stats.created, stats.repeats) == (40, 60)
    assert store.ledger_size() == 100 and store.verify().ok
    outbox.close()
    store.close()


def test_with_nats_down_the_outbox_keeps_records_and_relays_them_later(
    tmp_path: Path, pg_url: str, nats_server: NatsServer
) -> None:
    """NATS killed: submits still commit locally; after a restart they reach the ledger, once."""
    store, outbox = PgStore(pg_url), Outbox(tmp_path / "outbox.db")
    relay = Relay(outbox, nats_server.url, store.has_records, "w1", retry_s=0.2)
    relay.start()
    submit_all(outbox, 0, 50)
    wait_for(lambda: relay.published_total >= 50)
    nats_server.kill()
    got = submit_all(outbox, 50, 150)  # served while the queue is down
    assert all(isinstance(r, AppendResult) for r in got) and outbox.depth() == 200
    nats_server.start()
    wait_for(lambda: relay.published_total >= 200)
    stats = ingest_until_idle(store, nats_server.url)
    assert stats.created == 200 and store.ledger_size() == 200 and store.verify().ok
    wait_for(lambda: outbox.depth() == 0)
    relay.stop()
    outbox.close()
    store.close()


def test_a_cluster_worker_bills_the_openai_client_through_the_queue(
    tmp_path: Path, pg_url: str, nats_server: NatsServer
) -> None:
    """serve --db --queue: responses return from the outbox; the ingester puts them in PostgreSQL."""
    from infermeter.billing.queued_store import QueuedStore
    from tests.conftest import fake_service, run_server

    service = fake_service(tmp_path / "home", db=pg_url, queue=nats_server.url)
    assert isinstance(service.store, QueuedStore)
    gen = run_server(service)
    live = next(gen)
    try:
        for i in range(4):
            live.client("alpha").chat.completions.create(
                model="tiny-gpt", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=3
            )
        tenant = live.tenant_ids["alpha"]
        relay = service.store.relay
        wait_for(lambda: relay.published_total >= 4)
        with PgStore(pg_url) as ingest_store:
            ingest_until_idle(ingest_store, nats_server.url)
            records = [r for _, r in ingest_store.list_records(tenant, limit=100)]
            assert len(records) == 4 and ingest_store.verify().ok
        wait_for(lambda: service.store.outbox_depth() == 0)  # type: ignore[attr-defined]
    finally:
        for _ in gen:
            pass
        service.stop()
