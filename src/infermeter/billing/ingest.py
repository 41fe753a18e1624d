"""The ingester: the usage stream → the PostgreSQL ledger, in batches, exactly once per record.

Each turn fetches up to ``batch`` messages from the durable ``ledger`` consumer, appends
their records in ONE PostgreSQL transaction (``PgStore.append_prepared``: head-row lock,
dedupe on request and record id under it, COPY, commit), and only then acknowledges them:
``ack`` for each, ``ack_sync`` for the last, which returns once the server has processed
every ack sent before it on this connection. The consumer acknowledges explicitly, one
message at a time, not "all up to here": with two ingesters pulling at once, one's
ack-all would also acknowledge the other's batch before that batch is committed.

Crash between commit and ack: the batch is delivered again after ``ack_wait`` and every
record is dropped under the head-row lock (created = False). Crash before commit: the
transaction rolls back and the batch is delivered again. PostgreSQL down: the batch is
retried (``in_progress`` keeps it from being redelivered meanwhile) until it commits or the
ingester stops. A message that is not a usage record is logged and terminated (never
redelivered) so it cannot stall the stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from infermeter.billing.ledger import PreparedEntry, prepare
from infermeter.billing.pg_store import PgStore
from infermeter.billing.usage_stream import CONSUMER, STREAM, decode, ensure_consumer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class IngestStats:
    batches: int = 0
    received: int = 0
    created: int = 0  # new ledger entries
    repeats: int = 0  # records the ledger already held (redeliveries, republishes)
    rejected: int = 0  # messages that were not usage records
    batch_sizes: list[int] = field(default_factory=list)


class Ingester:
    """Consumes the usage stream at ``url`` into ``store``."""

    def __init__(
        self,
        store: PgStore,
        url: str,
        *,
        batch: int = 1000,
        fetch_timeout_s: float = 1.0,
        retry_s: float = 1.0,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.store = store
        # after each committed batch: (records, new entries, seconds from the oldest
        # record's request end to the commit), e.g. observability.metrics.IngestMetrics.observe
        self.on_batch = on_batch
        self.url = url
        self.batch = batch
        self.fetch_timeout_s = fetch_timeout_s
        self.retry_s = retry_s
        self.stats = IngestStats()

    async def run(self, stop: asyncio.Event, *, idle_exit_s: float | None = None) -> IngestStats:
        """Ingest until ``stop`` is set (or, with ``idle_exit_s``, the stream was empty that long)."""
        import nats
        from nats.errors import TimeoutError as FetchTimeout

        nc = await nats.connect(
            self.url, connect_timeout=5, max_reconnect_attempts=-1, reconnect_time_wait=0.5
        )
        try:
            js = nc.jetstream()
            await ensure_consumer(js)
            sub = await js.pull_subscribe_bind(CONSUMER, stream=STREAM)
            idle_since = time.monotonic()
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(self.batch, timeout=self.fetch_timeout_s)
                except (FetchTimeout, TimeoutError):  # nats-py raises either for an empty poll
                    if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                        break
                    continue
                if msgs:
                    await self._ingest(msgs, stop)
                    idle_since = time.monotonic()
        finally:
            await nc.close()
        return self.stats

    async def _ingest(self, msgs: list[Any], stop: asyncio.Event) -> None:
        entries: list[PreparedEntry] = []
        keep: list[Any] = []
        for msg in msgs:
            try:
                entries.append(prepare(decode(msg.data)))
                keep.append(msg)
            except (ValueError, KeyError, TypeError) as exc:
                self.stats.rejected += 1
                log.error(
                    "ingest: stream message %s is not a usage record (%r); terminated: %r",
                    msg.metadata.sequence.stream, exc, msg.data[:200],
                )  # fmt: skip
                await msg.term()
        while entries:
            try:
                results = await asyncio.to_thread(self.store.append_prepared, entries)
                break
            except Exception as exc:
                if stop.is_set():
                    return  # not acknowledged: delivered again to whoever runs next
                log.warning("ingest: ledger append of %d failed (%r); retrying", len(entries), exc)
                for msg in keep:
                    await msg.in_progress()
                await asyncio.sleep(self.retry_s)
        else:
            results = []
        for msg in keep[:-1]:
            await msg.ack()
        if keep:
            await keep[-1].ack_sync(timeout=10)
        created = sum(r.created for r in results)
        if self.on_batch is not None and entries:
            oldest = min(e.record.ended_at for e in entries)
            self.on_batch(len(entries), created, time.time() - oldest.timestamp())
        self.stats.batches += 1
        self.stats.received += len(msgs)
        self.stats.created += created
        self.stats.repeats += len(results) - created
        if len(self.stats.batch_sizes) < 10_000:
            self.stats.batch_sizes.append(len(msgs))


__all__ = ["IngestStats", "Ingester"]
