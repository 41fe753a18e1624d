"""``infermeter ingest``: the usage stream (NATS JetStream) into the PostgreSQL ledger.

Run one or two per cluster (two for availability: they never enter a record twice). Needs
``--db postgresql://…`` (or INFERMETER_DB) and ``--queue nats://…`` (or INFERMETER_QUEUE).
"""

from __future__ import annotations

import argparse
from typing import Any

from infermeter.core.errors import ConfigError

from .commands import _emit_json, out, settings_from


def cmd_ingest(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from infermeter.billing.ingest import Ingester
    from infermeter.billing.pg_store import PgStore, redact

    settings = settings_from(args, queue=args.queue)
    if settings.db is None or settings.queue is None:
        raise ConfigError(
            "ingest needs --db postgresql://… and --queue nats://… (or INFERMETER_DB and "
            "INFERMETER_QUEUE); e.g. infermeter ingest --db postgresql://postgres@127.0.0.1/im "
            "--queue nats://127.0.0.1:4222"
        )
    if args.batch < 1 or args.batch > 10_000:
        raise ConfigError(f"--batch {args.batch} must be between 1 and 10000 (1000 is the default)")
    on_batch = None
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        from infermeter.observability.metrics import IngestMetrics

        metrics = IngestMetrics()
        start_http_server(args.metrics_port, addr="127.0.0.1", registry=metrics.registry)
        on_batch = metrics.observe
    store = PgStore(settings.db)
    ingester = Ingester(store, settings.queue, batch=args.batch, on_batch=on_batch)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await ingester.run(stop, idle_exit_s=args.exit_when_idle)

    if not args.json:
        out.print(f"ingesting {settings.queue} into {redact(settings.db)} (batch {args.batch}); Ctrl-C stops")
    try:
        asyncio.run(main())
    finally:
        store.close()
    s = ingester.stats
    if args.json:
        _emit_json({"batches": s.batches, "received": s.received, "created": s.created,
                    "repeats": s.repeats, "rejected": s.rejected})  # fmt: skip
    else:
        out.print(f"ingested {s.created} new records in {s.batches} batches ({s.repeats} repeats dropped)")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("ingest", help="append the usage stream (NATS) to the PostgreSQL ledger, in batches")
    p.add_argument(
        "--queue", help="NATS URL of the usage stream, e.g. nats://127.0.0.1:4222 (env INFERMETER_QUEUE)"
    )
    p.add_argument("--batch", type=int, default=1000, help="records per ledger transaction (default 1000)")
    p.add_argument(
        "--exit-when-idle",
        dest="exit_when_idle",
        type=float,
        metavar="SECONDS",
        help="stop once the stream has been empty this long (default: run until stopped)",
    )
    p.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        help="serve Prometheus metrics (batch size, ingest lag) on 127.0.0.1:PORT/metrics",
    )
    p.add_argument("--json", action="store_true", help="print the counts as JSON when it stops")
    p.set_defaults(handler=cmd_ingest)
