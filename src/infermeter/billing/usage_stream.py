"""The usage stream on NATS JetStream: its configuration, created by the code, and the message.

Stream ``INFERMETER_USAGE`` (subjects ``infermeter.usage.>``; a worker publishes on
``infermeter.usage.<worker>``):

- file storage, one replica (raise ``num_replicas`` on a cluster of three servers);
- limits retention, 7 days or 10 GiB, whichever comes first, with **discard new**: a full
  stream refuses publishes (the relay keeps the rows in its outbox and retries) instead of
  dropping records nobody has ingested yet;
- duplicate window 10 minutes: a publish repeating a ``Nats-Msg-Id`` (the record id) within
  it is acknowledged as a duplicate and not stored again. Outside it, a repeat is stored
  again and the ledger drops it (its UNIQUE record id under the head-row lock), so the
  window is an optimisation, not the guarantee.

Durable pull consumer ``ledger``: explicit acks, one per message (ack-all would let one
ingester acknowledge another's uncommitted batch; see ``billing.ingest``), ``ack_wait``
60 s (a message not acknowledged by then is delivered again), unlimited deliveries,
20,000 unacknowledged at most. Several ingesters may pull from it at once.

A message is the record's canonical CloudEvent JSON (``core.records``), header
``Nats-Msg-Id`` = record id.
"""

from __future__ import annotations

import json
from typing import Any

from infermeter.core.records import UsageRecord

STREAM = "INFERMETER_USAGE"
SUBJECTS = "infermeter.usage.>"
CONSUMER = "ledger"
DUPLICATE_WINDOW_S = 600.0
MAX_AGE_S = 7 * 86400.0
MAX_BYTES = 10 * 2**30
ACK_WAIT_S = 60.0
MAX_ACK_PENDING = 20_000


def subject_for(worker: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in worker) or "worker"
    return f"infermeter.usage.{safe}"


async def ensure_stream(js: Any) -> None:
    """Create the stream if it does not exist (an existing one is left as the operator set it)."""
    from nats.js import api
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(STREAM)
        return
    except NotFoundError:
        pass
    await js.add_stream(
        api.StreamConfig(
            name=STREAM,
            subjects=[SUBJECTS],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.NEW,
            max_age=MAX_AGE_S,
            max_bytes=MAX_BYTES,
            duplicate_window=DUPLICATE_WINDOW_S,
            num_replicas=1,
        )
    )


async def ensure_consumer(js: Any) -> None:
    """Create the durable ``ledger`` consumer if it does not exist."""
    from nats.js import api
    from nats.js.errors import NotFoundError

    await ensure_stream(js)
    try:
        await js.consumer_info(STREAM, CONSUMER)
        return
    except NotFoundError:
        pass
    await js.add_consumer(
        STREAM,
        api.ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            max_deliver=-1,
            max_ack_pending=MAX_ACK_PENDING,
            deliver_policy=api.DeliverPolicy.ALL,
        ),
    )


def decode(data: bytes) -> UsageRecord:
    """The record a message carries (ValueError/KeyError/TypeError if it is not one)."""
    return UsageRecord.from_cloudevent(json.loads(data))


__all__ = [
    "CONSUMER",
    "DUPLICATE_WINDOW_S",
    "STREAM",
    "SUBJECTS",
    "decode",
    "ensure_consumer",
    "ensure_stream",
    "subject_for",
]
