"""Prometheus instruments: where every device-millisecond went.

One registry per service instance (tests run several in one process).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        billing = ["tenant", "tier", "model"]
        self.requests = Counter(
            "infermeter_requests", "Requests finished, by status.", [*billing, "status"], registry=r
        )
        self.tokens = Counter(
            "infermeter_tokens", "Tokens processed (kind=prompt|completion).", [*billing, "kind"], registry=r
        )
        self.device_ms = Counter(
            "infermeter_device_ms", "Device milliseconds billed to requests.", billing, registry=r
        )
        self.ru = Counter(
            "infermeter_ru",
            "Resource Units billed (1 RU = 1 ms FP16 on A100-SXM4-80GB).",
            billing,
            registry=r,
        )
        self.cost = Counter(
            "infermeter_cost",
            "Money billed (observability only; the ledger is exact).",
            [*billing, "currency"],
            registry=r,
        )
        self.refusals = Counter(
            "infermeter_refusals", "Requests refused before any work, by reason.", ["reason"], registry=r
        )
        self.step_seconds = Histogram(
            "infermeter_step_seconds",
            "Device time of one batched step.",
            ["engine"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.step_batch = Histogram(
            "infermeter_step_batch_size",
            "Sequences in one step.",
            ["engine"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.engine_device_ms = Counter(
            "infermeter_engine_device_ms",
            "Device milliseconds measured per engine, by use (billed|warmup|unattributed).",
            ["engine", "use"],
            registry=r,
        )
        self.queue_depth = Gauge("infermeter_queue_depth", "Requests waiting for a first step.", registry=r)
        self.in_flight = Gauge(
            "infermeter_requests_in_flight", "Requests admitted and not finished.", registry=r
        )
        self.ledger_entries = Gauge("infermeter_ledger_entries", "Entries in the usage ledger.", registry=r)
        # for the operator view: utilization = Σ engine_device_ms / (now - start_time)
        self.start_time = Gauge(
            "infermeter_start_time_seconds", "Unix time at which this service's metrics began.", registry=r
        )
        self.start_time.set_to_current_time()
        self.engine_info = Gauge(
            "infermeter_engine_info",
            "Engines served (value 1), labelled with what they run on.",
            ["engine", "model", "backend", "precision", "device"],
            registry=r,
        )

        # cluster mode (serve --queue): the worker's side of the usage queue, set at each scrape
        self.outbox_records = Gauge(
            "infermeter_outbox_records",
            "Usage records in this worker's outbox that the ledger is not yet seen to hold.",
            registry=r,
        )
        self.relay_lag = Gauge(
            "infermeter_relay_lag_seconds",
            "Age of the oldest record in the outbox (its request's end to now); 0 when empty.",
            registry=r,
        )
        self.relay_connected = Gauge(
            "infermeter_relay_connected", "1 while the relay is connected to NATS JetStream.", registry=r
        )

    def describe_engine(self, engine: str, model: str, backend: str, precision: str, device: str) -> None:
        """Publish one engine in ``infermeter_engine_info`` (idempotent)."""
        self.engine_info.labels(engine, model, backend, precision, device).set(1)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value, 0.0 when the series has no sample yet."""
        found = self.registry.get_sample_value(name, labels or {})
        return 0.0 if found is None else found


LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000)


class IngestMetrics:
    """``infermeter ingest --metrics-port``: what the ingester appended, and how late."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.batch_size = Histogram(
            "infermeter_ingest_batch_size",
            "Messages per ledger transaction.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.lag = Histogram(
            "infermeter_ingest_lag_seconds",
            "From a request's end to the commit of its ledger entry (the oldest record of each batch).",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.created = Counter("infermeter_ingest_entries", "Ledger entries appended.", registry=r)
        self.repeats = Counter(
            "infermeter_ingest_repeats", "Records dropped as already in the ledger.", registry=r
        )

    def observe(self, size: int, created: int, lag_s: float) -> None:
        """One committed batch (the ingester's ``on_batch`` hook)."""
        self.batch_size.observe(size)
        self.lag.observe(max(0.0, lag_s))
        self.created.inc(created)
        self.repeats.inc(size - created)
