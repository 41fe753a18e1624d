"""A receipt asked for before its record reaches the ledger says so, with a retry hint."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import fake_service, run_server

from .conftest import NatsServer
from .test_queue import ingest_until_idle


def test_a_receipt_of_a_record_in_the_outbox_is_404_with_retry_after_until_ingested(
    tmp_path: Path, pg_url: str, nats_server: NatsServer
) -> None:
    """Before ingest: 404 not_in_ledger_yet + Retry-After; after ingest: the receipt itself."""
    service = fake_service(tmp_path / "home", db=pg_url, queue=nats_server.url, checkpoint_interval_s=0)
    gen = run_server(service)
    live = next(gen)
    try:
        headers = {"authorization": f"Bearer {live.keys['alpha']}"}
        done = httpx.post(
            live.url + "/v1/completions",
            json={"model": "tiny-gpt", "prompt": "hi", "max_tokens": 3},
            headers=headers,
        ).json()
        record_id = done["usage"]["metering"]["record_id"]
        early = httpx.get(f"{live.url}/v1/receipts/{record_id}", headers=headers)
        assert early.status_code == 404 and early.headers["retry-after"] == "1"
        assert early.json()["error"]["code"] == "not_in_ledger_yet"
        other = {"authorization": f"Bearer {live.keys['beta']}"}  # another tenant learns nothing
        hidden = httpx.get(f"{live.url}/v1/receipts/{record_id}", headers=other)
        assert hidden.status_code == 404 and "retry-after" not in hidden.headers
        unknown = httpx.get(f"{live.url}/v1/receipts/rec_nothing", headers=headers)
        assert unknown.status_code == 404 and "retry-after" not in unknown.headers
        ingest_until_idle(service.store.pg, nats_server.url)  # type: ignore[attr-defined]
        admin = {"authorization": f"Bearer {live.admin_key}"}
        assert httpx.post(f"{live.url}/v1/admin/checkpoints", headers=admin).status_code == 200
        late = httpx.get(f"{live.url}/v1/receipts/{record_id}", headers=headers)
        assert late.status_code == 200, late.text
        assert late.json()["record_id"] == record_id
    finally:
        for _ in gen:
            pass
        service.stop()
