"""Shared admission: one tenant limit in PostgreSQL, enforced across workers atomically."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from infermeter.app.service import Service
from infermeter.billing.pg_budgets import PgBudgets
from infermeter.billing.pg_store import PgStore
from infermeter.core.errors import BudgetExceeded
from infermeter.core.records import UsageRecord
from tests.api.test_budget_caps import PacedFake, mixed_bodies, send_all
from tests.billing.ledger_records import make_record
from tests.conftest import LiveServer, fake_service, run_server
from tests.pgtools import raw_query


@pytest.fixture
def store(pg_url: str) -> Iterator[PgStore]:
    with PgStore(pg_url) as s:
        yield s


def budgets(url: str, worker: str, **kwargs: float) -> PgBudgets:
    return PgBudgets(url, worker, **kwargs)  # type: ignore[arg-type]


def account(store: object, tenant_id: str) -> tuple[Decimal, Decimal]:
    rows = raw_query(store, "SELECT spent, reserved FROM budget_accounts WHERE tenant_id = ?", tenant_id)
    return (Decimal(str(rows[0][0])), Decimal(str(rows[0][1]))) if rows else (Decimal(0), Decimal(0))


def test_two_workers_never_reserve_past_one_limit(store: PgStore, pg_url: str) -> None:
    """Eight threads on two workers race for a limit of 10: at most 10 is granted, all recorded."""
    tenant = store.create_tenant("acme", Decimal(10))
    workers = [budgets(pg_url, "w1"), budgets(pg_url, "w2")]
    granted: list[Decimal] = []
    refused = 0
    lock = threading.Lock()

    def race(n: int) -> None:
        nonlocal refused
        for i in range(10):
            try:
                grant = workers[n % 2].reserve_up_to(tenant.tenant_id, f"r{n}-{i}", Decimal(1), Decimal(1))
            except BudgetExceeded:
                with lock:
                    refused += 1
            else:
                with lock:
                    granted.append(grant.amount)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 10 and refused == 70
    assert account(store, tenant.tenant_id) == (Decimal(0), Decimal(10))
    for w in workers:
        w.close()
    assert account(store, tenant.tenant_id) == (Decimal(0), Decimal(0))  # a clean close gives every hold back


def test_reserve_up_to_grants_what_is_left_and_extend_grows_from_it(store: PgStore, pg_url: str) -> None:
    """A request gets the remainder when it is at least its minimum; extend takes only what is left."""
    tenant = store.create_tenant("acme", Decimal(10))
    w = budgets(pg_url, "w1")
    assert w.reserve_up_to(tenant.tenant_id, "a", Decimal(7), Decimal(1)).amount == 7
    grant = w.reserve_up_to(tenant.tenant_id, "b", Decimal(7), Decimal(1))
    assert grant.amount == 3 and grant.capped
    with pytest.raises(BudgetExceeded, match="limit 10"):
        w.reserve_up_to(tenant.tenant_id, "c", Decimal(1), Decimal("0.5"))
    assert w.release("a") and w.extend("b", Decimal(5), Decimal(1)) == 5
    assert w.extend("b", Decimal(5), Decimal(3)) == 0  # 2 left, below the minimum of 3
    assert w.reserved_for("b") == 8 and w.snapshot(tenant.tenant_id) == (Decimal(10), Decimal(0), Decimal(8))
    w.close()


def test_a_settled_reservation_counts_until_its_record_is_in_the_ledger(store: PgStore, pg_url: str) -> None:
    """settle replaces the hold by the cost; the append moves it from reserved to spent, once."""
    tenant = store.create_tenant("acme", Decimal(10))
    w = budgets(pg_url, "w1")
    w.reserve_up_to(tenant.tenant_id, "req-1", Decimal(4), Decimal(1))
    assert w.settle("req-1", Decimal("1.5")) and not w.settle("req-1", Decimal("1.5"))
    assert account(store, tenant.tenant_id) == (Decimal(0), Decimal("1.5"))
    record = make_record(request_id="req-1", tenant_id=tenant.tenant_id, cost=Decimal("1.5"))
    store.append([record])
    store.append([record])  # a repeat enters nothing and charges nothing
    assert account(store, tenant.tenant_id) == (Decimal("1.5"), Decimal(0))
    assert store.spent(tenant.tenant_id) == Decimal("1.5")
    w.close()


def test_unlimited_tenants_hold_nothing(store: PgStore, pg_url: str) -> None:
    """A tenant without a limit is admitted with an uncapped grant and no reservation row."""
    tenant = store.create_tenant("free")
    w = budgets(pg_url, "w1")
    grant = w.reserve_up_to(tenant.tenant_id, "r", Decimal(5), Decimal(1))
    assert grant == type(grant)(Decimal(5), False)
    assert raw_query(store, "SELECT count(*) FROM budget_reservations") == [(0,)]
    w.close()


HOLDER = """
import sys, time
from decimal import Decimal
from infermeter.billing.pg_budgets import PgBudgets
b = PgBudgets(sys.argv[1], "doomed", lease_s=1.0, heartbeat_s=0.2)
b.start()
b.reserve_up_to(sys.argv[2], "held-by-doomed", Decimal(6), Decimal(1))
print("reserved", flush=True)
time.sleep(600)
"""


def test_a_killed_workers_reservation_is_released(store: PgStore, pg_url: str, tmp_path: Path) -> None:
    """kill -9 a worker holding 6 of 10: after its lease runs out a live worker's sweep frees it."""
    tenant = store.create_tenant("acme", Decimal(10))
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, pg_url, tenant.tenant_id], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "reserved"
    finally:
        proc.kill()
        proc.wait(10)
    assert account(store, tenant.tenant_id) == (Decimal(0), Decimal(6))
    live = budgets(pg_url, "survivor", lease_s=1.0)
    with pytest.raises(BudgetExceeded):  # the dead worker's hold still counts
        live.reserve_up_to(tenant.tenant_id, "x", Decimal(5), Decimal(5))
    deadline = time.monotonic() + 30
    while account(store, tenant.tenant_id)[1] != 0:
        assert time.monotonic() < deadline, "the dead worker's reservation was never released"
        live.tick()
        time.sleep(0.2)
    assert live.swept == 1
    assert live.reserve_up_to(tenant.tenant_id, "y", Decimal(10), Decimal(10)).amount == 10
    live.close()


# two real servers sharing one budget ------------------------------------------------------


def pg_service(home: Path, pg_url: str) -> Service:
    return fake_service(home, PacedFake(), db=pg_url)


def slack_of(services: list[Service], record: UsageRecord) -> Decimal:
    """One step's share of this request at most: its costliest step, whole, at the dearer phase."""
    for svc in services:
        engine = svc._engines[0].engine
        assert isinstance(engine, PacedFake)
        steps = [s.device_us for s in engine.history if any(i[0] == record.request_id for i in s.inputs)]
        if steps:
            info = engine.info
            us = max(steps)
            ru = max(
                svc.ru_table.ru_micros(info.device_class, info.precision, us, 0),
                svc.ru_table.ru_micros(info.device_class, info.precision, 0, us),
            )
            return svc.plan.cost(ru, record.service_tier)
    raise AssertionError(f"no worker ran {record.request_id}")


async def send_split(lives: list[LiveServer], secret: str, bodies: list[dict[str, Any]]) -> list[int]:
    halves = [bodies[0::2], bodies[1::2]]
    done = await asyncio.gather(
        *(send_all(live, secret, half) for live, half in zip(lives, halves, strict=True))
    )
    return [r.status_code for group in done for r in group]


@pytest.fixture
def two_workers(tmp_path: Path, pg_url: str) -> Iterator[tuple[list[Service], list[LiveServer]]]:
    services = [pg_service(tmp_path / "a", pg_url), pg_service(tmp_path / "b", pg_url)]
    gens = [run_server(svc, ()) for svc in services]
    lives = [next(g) for g in gens]
    try:
        yield services, lives
    finally:
        for g in gens:
            for _ in g:
                pass
        for svc in services:
            svc.stop()


def test_a_budget_worth_n_requests_admits_about_n_across_two_workers(
    two_workers: tuple[list[Service], list[LiveServer]],
) -> None:
    """Identical requests alternating between two workers: N admitted in all, not N per worker."""
    services, lives = two_workers
    store = services[0].store
    body = {"model": "tiny-gpt", "prompt": "hello there", "max_tokens": 12, "temperature": 0}
    probe = store.create_tenant("probe")
    _, probe_key = store.create_key(probe.tenant_id)
    one = Decimal(
        httpx.post(
            lives[0].url + "/v1/completions", json=body, headers={"authorization": f"Bearer {probe_key}"}
        ).json()["usage"]["metering"]["cost"]
    )
    n = 4
    tenant = store.create_tenant("worth-four", one * n)
    _, secret = store.create_key(tenant.tenant_id)
    admitted = 0
    for i in range(4 * n):
        resp = httpx.post(
            lives[i % 2].url + "/v1/completions", json=body, headers={"authorization": f"Bearer {secret}"}
        )
        assert resp.status_code in (200, 402), resp.text
        admitted += resp.status_code == 200
    assert n - 1 <= admitted <= n + 1, f"{admitted} requests admitted against a budget worth {n}"
    assert store.spent(tenant.tenant_id) <= one * (n + 1)


def test_two_servers_sharing_a_tenant_stay_within_budget_plus_one_step_each(
    two_workers: tuple[list[Service], list[LiveServer]], pg_url: str
) -> None:
    """64 concurrent requests split over two workers: the tenant ends within budget + slack."""
    services, lives = two_workers
    store = services[0].store
    free = store.create_tenant("unlimited")
    _, free_key = store.create_key(free.tenant_id)
    assert set(asyncio.run(send_split(lives, free_key, mixed_bodies(0)))) == {200}
    store.flush()
    mix_cost = store.spent(free.tenant_id)
    for repeat in range(3):
        limit = (mix_cost / 5).quantize(Decimal("1e-18"))
        tenant = store.create_tenant(f"small-{repeat}", limit)
        _, secret = store.create_key(tenant.tenant_id)
        codes = asyncio.run(send_split(lives, secret, mixed_bodies(repeat)))
        assert set(codes) <= {200, 402}, codes
        for svc in services:
            svc.store.flush()
        records = [r for _, r in store.list_records(tenant.tenant_id, limit=10_000)]
        spent = sum((r.cost for r in records), Decimal(0))
        slack = sum((slack_of(services, r) for r in records), Decimal(0))
        assert spent <= limit + slack, f"spent {spent} > limit {limit} + one step per request {slack}"
        stopped = [r for r in records if r.stopped_by == "budget"]
        assert 402 in codes or stopped, "the budget never bound: the test did not exercise the cap"
        assert account(store, tenant.tenant_id) == (spent, Decimal(0))
        assert store.spent(tenant.tenant_id) == spent
    for svc in services:
        svc.store.flush()
    with PgStore(pg_url) as check:
        assert raw_query(check, "SELECT count(*) FROM budget_reservations") == [(0,)]
        assert check.verify().ok
