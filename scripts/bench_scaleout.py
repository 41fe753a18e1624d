"""Scale-out throughput on this machine: chained PostgreSQL appends, and outbox → JetStream → ledger.

    PYTHONPATH=src python scripts/bench_scaleout.py [--records 20000]

Uses the PostgreSQL at postgresql://postgres@127.0.0.1:5432 (a scratch database, dropped
after) and a private nats-server on a free port (its store in a temporary directory).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infermeter.billing.ingest import Ingester
from infermeter.billing.ledger import prepare
from infermeter.billing.outbox import Outbox
from infermeter.billing.pg_store import PgStore
from infermeter.billing.relay import Relay
from tests.billing.ledger_records import make_record

SERVER = "postgresql://postgres@127.0.0.1:5432"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rec(k: int) -> object:
    return make_record(k % 1000, record_id=f"rec_b{k}", request_id=f"req_b{k}")


def chained(url: str, batch: int, n: int, offset: int) -> float:
    store = PgStore(url)
    entries = [prepare(rec(offset + i)) for i in range(n)]
    t = time.perf_counter()
    for i in range(0, n, batch):
        store.append_prepared(entries[i : i + batch])
    dt = time.perf_counter() - t
    store.close()
    return n / dt


def end_to_end(url: str, n: int, tmp: Path) -> tuple[float, float]:
    port = free_port()
    nats = subprocess.Popen(
        [shutil.which("nats-server") or "/usr/sbin/nats-server", "-js", "-a", "127.0.0.1",
         "-p", str(port), "-sd", str(tmp / "js")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)
    nurl = f"nats://127.0.0.1:{port}"
    try:
        store = PgStore(url)
        outbox = Outbox(tmp / "outbox.db")
        relay = Relay(outbox, nurl, store.has_records, "bench")
        records = [rec(10_000_000 + i) for i in range(n)]
        t0 = time.perf_counter()
        relay.start()
        for r in records:
            outbox.submit(r, lambda _: None)
        outbox.flush(120)
        t_outbox = time.perf_counter() - t0
        ingest = Ingester(store, nurl, batch=1000, fetch_timeout_s=0.5)

        async def run() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(ingest.run(stop))
            while ingest.stats.created < n:
                await asyncio.sleep(0.05)
                if relay.published_total >= n and not hasattr(run, "pub"):
                    run.pub = time.perf_counter() - t0  # type: ignore[attr-defined]
                    print(f"  all published after {run.pub:.2f} s; ingested so far {ingest.stats.created}")
            stop.set()
            await task

        asyncio.run(run())
        total = time.perf_counter() - t0
        relay.stop()
        outbox.close()
        assert store.verify().ok
        store.close()
        return n / t_outbox, n / total
    finally:
        nats.kill()
        nats.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()
    name = f"infermeter_bench_{secrets.token_hex(4)}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = f"{SERVER}/{name}"
    try:
        n = args.records
        for batch in (100, 1000):
            rate = chained(url, batch, n, offset=batch * 10_000_000)
            print(f"PostgreSQL chained append, batch {batch}: {rate:,.0f} records/s ({n} records)")
        with tempfile.TemporaryDirectory() as tmp:
            into_outbox, e2e = end_to_end(url, n, Path(tmp))
        print(f"outbox submit (group commit, synchronous=FULL): {into_outbox:,.0f} records/s")
        print(f"end to end outbox -> JetStream -> chained PostgreSQL ledger: {e2e:,.0f} records/s ({n})")
    finally:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
