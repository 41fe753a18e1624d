"""Benchmark: durable ledger appends per second through ``submit`` and group commit.

    PYTHONPATH=src python -m infermeter.billing.bench_ledger --n 100000

Every append is encoded, hash-linked and committed with ``synchronous=FULL`` in WAL mode
(fsync at each group commit); the clock stops when the last callback has run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from infermeter.billing.sqlite_store import SqliteStore
from infermeter.billing.store import AppendResult
from infermeter.core.records import UsageRecord
from infermeter.core.types import Precision, ServiceTier, Status


def sample_records(n: int, tenants: int = 8) -> list[UsageRecord]:
    """``n`` realistic, distinct usage records spread over a few tenants and two tiers."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        started = base + timedelta(milliseconds=37 * i)
        device_us = 5_000 + (i * 7919) % 50_000
        ru_micros = device_us * 1_150
        flex = i % 3 == 0
        out.append(
            UsageRecord(
                record_id=f"rec_bench{i:012d}",
                request_id=f"req_bench{i:012d}",
                tenant_id=f"ten_bench{i % tenants:04d}",
                model="tiny-gpt",
                engine_id="tiny-gpt/ort/int8/cpu" if flex else "tiny-gpt/ort/fp32/cpu",
                device="cpu",
                precision=Precision.INT8 if flex else Precision.FP32,
                service_tier=ServiceTier.FLEX if flex else ServiceTier.DEFAULT,
                status=Status.COMPLETED,
                prompt_tokens=20 + i % 200,
                completion_tokens=1 + i % 64,
                cached_tokens=0,
                device_us=device_us,
                prefill_us=device_us // 3,
                decode_us=device_us - device_us // 3,
                kv_mb_s=Decimal(i % 1000).scaleb(-3),
                ru_micros=ru_micros,
                cost=Decimal(ru_micros * (2 if flex else 5)).scaleb(-12),
                currency="USD",
                queue_ms=i % 7,
                latency_ms=10 + i % 90,
                started_at=started,
                ended_at=started + timedelta(microseconds=device_us),
                cost_model_version="cm-2026-01",
                ru_table_version="ru-2026-01",
                price_plan_version="plan-2026-01",
            )
        )
    return out


def bench_appends(path: Path | str, n: int = 100_000, batch: int | None = None) -> float:
    """Appends/s: submit ``n`` records to a fresh store at ``path`` and wait for every callback.

    ``batch`` caps the records per group commit (the store's ``max_group``; None = default).
    Building the records is not timed; encoding, hashing, inserting and fsync are.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; bench_appends needs a fresh file path")
    records = sample_records(n)
    created = 0

    def callback(result: AppendResult | BaseException) -> None:
        nonlocal created
        if isinstance(result, BaseException):
            raise result
        created += result.created

    store = SqliteStore(path, synchronous="FULL", **({} if batch is None else {"max_group": batch}))
    try:
        started = time.perf_counter()
        for record in records:
            store.submit(record, callback)
        store.flush()
        elapsed = time.perf_counter() - started
        if created != n:
            raise RuntimeError(f"bench: {created} of {n} appends were created; expected all")
    finally:
        store.close()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000, help="appends to time")
    parser.add_argument("--batch", type=int, default=None, help="max records per group commit")
    parser.add_argument("--dir", type=Path, default=None, help="directory for the database")
    parser.add_argument("--verify", action="store_true", help="also time a full verify")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "bench.db"
        rate = bench_appends(path, args.n, args.batch)
        print(f"{args.n} durable appends (WAL, synchronous=FULL): {rate:,.0f} appends/s")
        if args.verify:
            with SqliteStore(path) as store:
                started = time.perf_counter()
                report = store.verify()
                seconds = time.perf_counter() - started
            print(f"verify: ok={report.ok} {report.entries / seconds:,.0f} entries/s")


if __name__ == "__main__":
    main()
