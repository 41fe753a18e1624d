"""Window ledger: exact joins by request id, append-only rows, and the crash property."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import httpx

from infermeter.app.service import Service
from infermeter.billing.sqlite_store import SqliteStore
from infermeter.core.records import StepShares
from infermeter.core.types import ServiceTier
from infermeter.metering.sampler import ClosedWindow, WindowSampler
from infermeter.metering.sources import Sample, ScriptedSource
from infermeter.metering.window_ledger import WindowLedger
from infermeter.runtime.sampling import SamplingParams
from infermeter.runtime.worker import GenerationRequest
from tests.conftest import fake_service

MS = 1_000_000
T = TypeVar("T")


def windows(activity: float | None = 0.5) -> list[ClosedWindow]:
    """Two 100 ms windows; request a runs in both, b in the second only."""
    samples = [
        Sample(0, 0),
        Sample(100 * MS, 1_000, activity, 0.1, activity, 10),
        Sample(200 * MS, 3_000, activity, 0.1, activity, 10),
    ]
    out: list[ClosedWindow] = []
    sampler = WindowSampler(ScriptedSource(samples=samples), out.append, idle_power_mw=0)
    sampler.record_step(10 * MS, 30 * MS, StepShares(1, 20_000, {"a": 20_000}, 0))
    sampler.record_step(110 * MS, 150 * MS, StepShares(2, 40_000, {"a": 10_000, "b": 30_000}, 0))
    for _ in samples:
        sampler.poll()
    sampler.flush()
    return out


def test_meters_join_windows_by_request_exactly(tmp_path: Path) -> None:
    """Energy sums in mJ, device and weighted ms exact to the nanosecond, window counts."""
    ledger = WindowLedger(tmp_path / "db.sqlite")
    for w in windows():
        ledger.write(w)
    a, b = ledger.meters("a"), ledger.meters("b")
    assert a is not None and b is not None
    assert (a.windows, b.windows) == (2, 1)
    assert a.energy_mj == 1_000 + 500 and b.energy_mj == 1_500
    assert a.device_ms == Decimal("30.000000")
    assert a.weighted_device_ms == Decimal("15.000000")  # 30 ms x SM 0.5
    assert b.dram_score == Decimal("15.000000")  # 30 ms x DRAM 0.5
    assert ledger.meters("nobody") is None
    pool = ledger.pool()
    assert (pool.windows, pool.valid, pool.energy_mj) == (2, 2, 3_000)
    assert pool.attributed_energy_mj + pool.unattributed_energy_mj == 3_000


def test_windows_go_through_the_stores_writer_when_given(tmp_path: Path) -> None:
    """With the store's writer injected, every window row is written by the store's one writer thread."""
    threads: list[str] = []
    with SqliteStore(tmp_path / "im.db") as store:

        def write(fn: Callable[[sqlite3.Connection], T]) -> T:
            def on_writer(conn: sqlite3.Connection) -> T:
                threads.append(threading.current_thread().name)
                return fn(conn)

            return store.write(on_writer)

        ledger = WindowLedger(store.path, write=write)
        for w in windows():
            ledger.write(w)
        a = ledger.meters("a")
        ledger.close()
        assert a is not None and a.windows == 2 and a.energy_mj == 1_500
        assert set(threads) == {"infermeter-ledger-writer"} and len(threads) == 3  # tables + 2 windows
        assert store.verify().ok


def test_rejected_activity_leaves_weighted_meters_empty(tmp_path: Path) -> None:
    """Windows whose activity was rejected give energy but no weighted ms (None, not 0)."""
    ledger = WindowLedger(tmp_path / "db.sqlite")
    for w in windows(activity=0.0):
        ledger.write(w)
    a = ledger.meters("a")
    assert a is not None and a.weighted_windows == 0
    assert a.weighted_device_ms is None and a.dram_score is None
    assert a.energy_mj > 0
    assert ledger.pool().rejected == 2


def test_rows_are_append_only_and_replays_are_idempotent(tmp_path: Path) -> None:
    """Writing a window twice changes no request total; nothing is updated or deleted."""
    ledger = WindowLedger(tmp_path / "db.sqlite")
    ws = windows()
    for w in ws + ws:
        ledger.write(w)
    a = ledger.meters("a")
    assert a is not None and a.windows == 2 and a.energy_mj == 1_500
    ledger.close()
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM window_usage").fetchone()[0] == 3


def _complete(svc: Service, prompt: list[int]) -> object:
    done = threading.Event()
    result: list[object] = []

    def finished(outcome: object) -> None:
        result.append(outcome)
        done.set()

    engine_id = svc.engine_infos()[0].engine_id
    svc.worker.submit(
        GenerationRequest(
            request_id="req-crash",
            tenant_id="t",
            model="tiny-gpt",
            engine_id=engine_id,
            tier=ServiceTier.DEFAULT,
            prompt_ids=prompt,
            max_tokens=6,
            sampling=SamplingParams(temperature=0.0),
            on_finish=finished,
        )
    )
    assert done.wait(30)
    return result[0]


def test_a_crash_between_record_and_windows_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """The record is acknowledged after its own durable write; the sampler then 'crashes'
    (dropped unflushed). Reopened, the record is intact; window values missing or partial."""
    home = tmp_path / "home"
    service = fake_service(home, sampler="scripted", window_ms=20)
    service.start()
    record = _complete(service, list(range(20)))
    assert getattr(record, "request_id", None) == "req-crash"
    assert service.sampler is not None
    service.sampler.stop(flush=False)  # the crash: pending windows are never written
    service.worker.stop()
    service.store.close()

    store = SqliteStore(home / "infermeter.db")
    try:
        stored = store.get_by_request("req-crash")
        assert stored == record
        assert store.verify().ok
    finally:
        store.close()
    meters = WindowLedger(home / "infermeter.db").meters("req-crash")
    assert meters is None or meters.energy_mj >= 0  # missing or partial, never an error


def test_record_view_joins_window_meters(tmp_path: Path, server_factory: object) -> None:
    """GET /v1/usage/records/{id} shows energy_mj and window_count joined by request id."""
    service = fake_service(tmp_path / "home", sampler="scripted", window_ms=20)
    live = server_factory(service)  # type: ignore[operator]
    headers = {"authorization": f"Bearer {live.keys['alpha']}"}
    with httpx.Client(base_url=live.url, headers=headers, timeout=30) as client:
        resp = client.post("/v1/completions", json={"model": "tiny-gpt", "prompt": "hello", "max_tokens": 8})
        assert resp.status_code == 200, resp.text
        record_id = resp.json()["usage"]["metering"]["record_id"]
        deadline = time.monotonic() + 10
        view: dict[str, object] = {}
        while time.monotonic() < deadline:
            view = client.get(f"/v1/usage/records/{record_id}").json()
            if view.get("window_count"):
                break
            time.sleep(0.05)
        count = view.get("window_count")
        assert isinstance(count, int) and count >= 1
        assert isinstance(view["energy_mj"], int)
        listed = client.get("/v1/usage/records").json()["data"]
        assert any(r.get("window_count") for r in listed)
