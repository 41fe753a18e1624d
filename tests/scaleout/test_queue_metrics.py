"""Prometheus series of the usage queue: outbox depth, relay lag, ingest lag and batch size."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from infermeter.billing.ingest import Ingester
from infermeter.billing.outbox import Outbox
from infermeter.billing.pg_store import PgStore
from infermeter.billing.relay import Relay
from infermeter.observability.metrics import IngestMetrics
from tests.billing.ledger_records import make_record
from tests.conftest import fake_service, run_server

from .conftest import NatsServer
from .test_queue import ingest_until_idle


def wait_for(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def scrape(url: str, admin: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", headers={"authorization": f"Bearer {admin}"}).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def test_a_workers_metrics_show_its_outbox_and_relay_lag_until_ingested(
    tmp_path: Path, pg_url: str, nats_server: NatsServer
) -> None:
    """Two records not yet ingested: outbox 2 and a positive lag; after ingest both are 0."""
    service = fake_service(tmp_path / "home", db=pg_url, queue=nats_server.url, checkpoint_interval_s=0)
    gen = run_server(service)
    live = next(gen)
    try:
        client = live.client("alpha")
        for i in range(2):
            client.completions.create(model="tiny-gpt", prompt=f"hi {i}", max_tokens=2)
        wait_for(lambda: scrape(live.url, live.admin_key)["infermeter_relay_connected"] == 1)
        before = scrape(live.url, live.admin_key)
        assert before["infermeter_outbox_records"] == 2 and before["infermeter_relay_lag_seconds"] > 0
        ingest_until_idle(service.store.pg, nats_server.url)  # type: ignore[attr-defined]
        wait_for(lambda: scrape(live.url, live.admin_key)["infermeter_outbox_records"] == 0)
        assert scrape(live.url, live.admin_key)["infermeter_relay_lag_seconds"] == 0
    finally:
        for _ in gen:
            pass
        service.stop()


def test_the_ingester_reports_batch_sizes_and_lag_per_committed_batch(
    tmp_path: Path, pg_url: str, nats_server: NatsServer
) -> None:
    """300 records in batches of at most 100: the histograms count every batch and record."""
    store, outbox = PgStore(pg_url), Outbox(tmp_path / "outbox.db")
    relay = Relay(outbox, nats_server.url, store.has_records, "w1")
    relay.start()
    for i in range(300):
        outbox.submit(make_record(i), lambda _: None)
    outbox.flush(30)
    wait_for(lambda: relay.published_total >= 300)
    metrics = IngestMetrics()
    ingester = Ingester(store, nats_server.url, batch=100, fetch_timeout_s=0.5, on_batch=metrics.observe)
    stats = asyncio.run(ingester.run(asyncio.Event(), idle_exit_s=2.0))
    value = metrics.registry.get_sample_value
    assert value("infermeter_ingest_batch_size_count") == stats.batches >= 3
    assert value("infermeter_ingest_batch_size_sum") == 300 == value("infermeter_ingest_entries_total")
    assert value("infermeter_ingest_lag_seconds_count") == stats.batches
    lag = value("infermeter_ingest_lag_seconds_sum")
    assert lag is not None and lag > 0  # make_record ends its requests on 2026-11-03
    relay.stop()
    outbox.close()
    store.close()
