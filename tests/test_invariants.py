"""One test per invariant of docs/architecture.md, end to end where the invariant is end to end."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from infermeter.app.service import Service
from infermeter.billing.invoices import build_invoice
from infermeter.billing.pricing import DEFAULT_PLAN
from infermeter.billing.sqlite_store import SqliteStore
from infermeter.core.ids import request_id
from infermeter.core.money import Money
from infermeter.core.types import ServiceTier
from infermeter.metering.ru import SEED_TABLE
from infermeter.runtime.fake_engine import FakeEngine
from infermeter.runtime.worker import GenerationRequest
from tests.conftest import LiveServer, fake_service


def run_requests(svc: Service, n: int) -> None:
    done = threading.Semaphore(0)
    engine_id = svc.engine_infos()[0].engine_id
    for i in range(n):
        svc.worker.submit(
            GenerationRequest(
                request_id=request_id(),
                tenant_id="t",
                model="tiny-gpt",
                engine_id=engine_id,
                tier=ServiceTier.DEFAULT,
                prompt_ids=list(range(1, 2 + i * 3)),
                max_tokens=2 + i % 5,
                on_finish=lambda _: done.release(),
            )
        )
    for _ in range(n):
        assert done.acquire(timeout=30)


def test_1_conservation(tmp_path: Path) -> None:
    """Σ device_us over records + unattributed (warm-up included) == Σ measured step time, exactly."""
    engine = FakeEngine()
    svc = fake_service(tmp_path, engine)
    svc.start()
    run_requests(svc, 12)
    svc.stop()
    measured = sum(step.device_us for step in engine.history)
    store = SqliteStore(svc.settings.db_path)
    records = [r for _, r in store.list_records(None, limit=10_000, include_warmup=True)]
    store.close()
    billed = sum(r.device_us for r in records if not r.warmup)
    warm = sum(r.device_us for r in records if r.warmup)
    book = svc.pipeline.book
    assert warm == book.warmup_us
    assert billed + warm + book.unattributed_us == measured


def test_2_idempotency(fake_server: LiveServer) -> None:
    """Appending a record for a request id twice keeps one entry and returns the first record."""
    store = fake_server.service.store
    resp = fake_server.client().completions.create(model="tiny-gpt", prompt="x", max_tokens=2)
    first = store.get_record(resp.usage.model_extra["metering"]["record_id"])
    assert first is not None
    from dataclasses import replace

    dup = replace(first, record_id="rec_duplicate", cost=Decimal("99"))
    size = store.ledger_size()
    [result] = store.append([dup])
    assert result.created is False and result.record.record_id == first.record_id
    assert store.ledger_size() == size


def test_3_durable_before_acknowledged(fake_server: LiveServer) -> None:
    """When the response (or the final stream chunk) arrives, its record is already committed."""
    db = fake_server.service.settings.db_path
    resp = fake_server.client().completions.create(model="tiny-gpt", prompt="x", max_tokens=2)
    rid = resp.usage.model_extra["metering"]["record_id"]
    with sqlite3.connect(db) as con:  # a separate connection sees only committed data
        assert con.execute("SELECT count(*) FROM ledger WHERE record_id = ?", (rid,)).fetchone()[0] == 1
    stream = fake_server.client().completions.create(
        model="tiny-gpt", prompt="y", max_tokens=2, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        if chunk.usage is not None:
            rid = chunk.usage.model_extra["metering"]["record_id"]
            with sqlite3.connect(db) as con:
                assert (
                    con.execute("SELECT count(*) FROM ledger WHERE record_id = ?", (rid,)).fetchone()[0] == 1
                )


def test_4_append_only(fake_server: LiveServer) -> None:
    """The ledger table refuses UPDATE and DELETE."""
    fake_server.client().completions.create(model="tiny-gpt", prompt="x", max_tokens=1)
    with sqlite3.connect(fake_server.service.settings.db_path) as con:
        with pytest.raises(sqlite3.DatabaseError):
            con.execute("UPDATE ledger SET cost = '0'")
        with pytest.raises(sqlite3.DatabaseError):
            con.execute("DELETE FROM ledger")


def test_5_tamper_evidence(tmp_path: Path) -> None:
    """Editing a stored entry is detected by verify, which names it."""
    svc = fake_service(tmp_path)
    svc.start()
    run_requests(svc, 3)
    svc.stop()
    con = sqlite3.connect(svc.settings.db_path)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        con.execute(f"DROP TRIGGER {name}")
    con.execute("UPDATE ledger SET tenant_id = 'someone-else' WHERE seq = 2")
    con.commit()
    con.close()
    store = SqliteStore(svc.settings.db_path)
    report = store.verify()
    store.close()
    assert not report.ok and report.first_bad_seq == 2


def test_6_money_is_never_a_float(fake_server: LiveServer) -> None:
    """Money refuses floats; records hold Decimals; the API sends cost as a decimal string."""
    with pytest.raises(TypeError):
        Money(0.1)  # type: ignore[arg-type]
    raw = httpx.post(
        fake_server.url + "/v1/completions",
        json={"model": "tiny-gpt", "prompt": "x", "max_tokens": 2},
        headers={"authorization": f"Bearer {fake_server.keys['alpha']}"},
    ).json()
    assert isinstance(raw["usage"]["metering"]["cost"], str)
    record = fake_server.service.store.get_record(raw["usage"]["metering"]["record_id"])
    assert record is not None and isinstance(record.cost, Decimal)


def test_7_warmup_is_never_billed(fake_server: LiveServer) -> None:
    """Warm-up is recorded with warmup=true at zero cost and appears on no invoice."""
    store = fake_server.service.store
    warm = [r for _, r in store.list_records(None, include_warmup=True) if r.warmup]
    assert warm and all(r.cost == 0 and r.ru_micros == 0 for r in warm)
    inv = build_invoice("platform", datetime.now(UTC).strftime("%Y-%m"), warm, "USD")
    assert inv.lines == () or all(line.amount == 0 for line in inv.lines)


def test_8_every_record_is_recomputable(fake_server: LiveServer) -> None:
    """RU and cost recompute exactly from a record's own fields and the versions it names."""
    fake_server.client().completions.create(model="tiny-gpt", prompt="hello", max_tokens=4)
    fake_server.client().completions.create(
        model="tiny-gpt", prompt="hi", max_tokens=3, extra_body={"service_tier": "flex"}
    )
    for _, r in fake_server.service.store.list_records(fake_server.tenant_ids["alpha"]):
        assert r.ru_table_version == SEED_TABLE.version and r.price_plan_version == DEFAULT_PLAN.version
        assert r.cost_model_version and r.engine_id
        ru = SEED_TABLE.ru_micros("cpu", r.precision, r.prefill_us, r.decode_us)
        assert ru == r.ru_micros
        assert DEFAULT_PLAN.cost(ru, r.service_tier) == r.cost
        assert r.prefill_us + r.decode_us == r.device_us


def test_9_tenant_isolation(fake_server: LiveServer) -> None:
    """A tenant key cannot read another tenant's record or admin data; secrets are stored hashed."""
    resp = fake_server.client("beta").completions.create(model="tiny-gpt", prompt="x", max_tokens=1)
    rid = resp.usage.model_extra["metering"]["record_id"]
    alpha = {"authorization": f"Bearer {fake_server.keys['alpha']}"}
    assert httpx.get(f"{fake_server.url}/v1/usage/records/{rid}", headers=alpha).status_code == 404
    dump = "\n".join(sqlite3.connect(fake_server.service.settings.db_path).iterdump())
    for secret in (*fake_server.keys.values(), fake_server.admin_key):
        assert secret not in dump


def test_10_bad_input_costs_nothing(fake_server: LiveServer) -> None:
    """A refused request leaves no ledger entry and no reservation behind."""
    store = fake_server.service.store
    before = store.ledger_size()
    resp = httpx.post(
        fake_server.url + "/v1/chat/completions",
        json={"model": "tiny-gpt", "messages": [{"role": "user", "content": "x" * 5000}]},
        headers={"authorization": f"Bearer {fake_server.keys['alpha']}"},
    )
    assert resp.status_code == 400
    store.flush()
    assert store.ledger_size() == before
    _, _spent, reserved = fake_server.service.budgets.snapshot(fake_server.tenant_ids["alpha"])
    assert reserved == 0
