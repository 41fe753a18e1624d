"""The relay: outbox rows → the JetStream usage stream; rows trimmed once the ledger has them.

One thread with its own asyncio loop. Each pass it publishes the oldest unpublished rows
(``publish_async``, header ``Nats-Msg-Id`` = record id, so a repeat inside the stream's
duplicate window is acknowledged as a duplicate and stored once) and marks the rows the
stream acknowledged — a duplicate acknowledgement counts, it means "already stored". It
asks the PostgreSQL ledger which published record ids it holds and deletes those rows; a
published row the ledger still lacks after ``republish_after_s`` is published again with the
same id (a PubAck is not durability: the server may not have synced it to disk). Nothing is
deleted on the strength of a PubAck alone.

NATS down: publishes fail, rows stay, the relay retries every ``retry_s``. PostgreSQL down:
nothing is trimmed, the outbox grows, requests are still served (they only need the outbox).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence

from infermeter.billing.outbox import Outbox
from infermeter.billing.usage_stream import STREAM, ensure_stream, subject_for

log = logging.getLogger(__name__)


class Relay:
    """Publishes ``outbox`` to the stream at ``url``; ``has_records`` asks the ledger."""

    def __init__(
        self,
        outbox: Outbox,
        url: str,
        has_records: Callable[[Sequence[str]], set[str]],
        worker: str,
        *,
        batch: int = 1000,
        idle_s: float = 0.02,
        retry_s: float = 1.0,
        republish_after_s: float = 30.0,
    ) -> None:
        self.outbox = outbox
        self.url = url
        self.has_records = has_records
        self.subject = subject_for(worker)
        self.batch = batch
        self.idle_s = idle_s
        self.retry_s = retry_s
        self.republish_after_s = republish_after_s
        self.published_total = 0
        self.trimmed_total = 0
        self.connected = False
        self._sent_at: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="infermeter-relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _main(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        import nats

        while not self._stop.is_set():
            try:
                nc = await nats.connect(
                    self.url, connect_timeout=2, max_reconnect_attempts=-1, reconnect_time_wait=0.5
                )
            except Exception as exc:
                self.connected = False
                log.warning("relay: cannot reach NATS at %s (%r); retrying", self.url, exc)
                await asyncio.sleep(self.retry_s)
                continue
            try:
                js = nc.jetstream()
                await ensure_stream(js)
                self.connected = True
                while not self._stop.is_set():
                    busy = await self._publish(js)
                    busy |= await self._confirm()
                    if not busy:
                        await asyncio.sleep(self.idle_s)
            except Exception as exc:
                self.connected = False
                log.warning("relay: %r; retrying in %.1f s", exc, self.retry_s)
                await asyncio.sleep(self.retry_s)
            finally:
                try:
                    await nc.close()
                except Exception:
                    pass

    async def _publish(self, js: object) -> bool:
        rows = self.outbox.unpublished(self.batch)
        if not rows:
            return False
        futures = [
            await js.publish_async(  # type: ignore[attr-defined]
                self.subject, row.event.encode(), stream=STREAM, headers={"Nats-Msg-Id": row.record_id}
            )
            for row in rows
        ]
        try:
            acks = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10.0)
        except TimeoutError:
            raise ConnectionError("no acknowledgement from JetStream within 10 s") from None
        ok = [row.n for row, ack in zip(rows, acks, strict=True) if not isinstance(ack, BaseException)]
        now = time.monotonic()
        for n in ok:
            self._sent_at[n] = now
        self.outbox.mark_published(ok)
        self.published_total += len(ok)
        failed = len(rows) - len(ok)
        if failed:
            first = next(a for a in acks if isinstance(a, BaseException))
            raise ConnectionError(f"{failed} of {len(rows)} publishes failed, e.g. {first!r}")
        return True

    async def _confirm(self) -> bool:
        rows = self.outbox.published(5000)
        if not rows:
            return False
        try:
            held = await asyncio.to_thread(self.has_records, [r.record_id for r in rows])
        except Exception as exc:  # the ledger is down: keep everything, try later
            log.warning("relay: cannot ask the ledger (%r); the outbox keeps %d rows", exc, len(rows))
            await asyncio.sleep(self.retry_s)
            return False
        if held:
            self.outbox.trim(sorted(held))
            self.trimmed_total += len(held)
        now = time.monotonic()
        stale = [
            r.n
            for r in rows
            if r.record_id not in held and now - self._sent_at.setdefault(r.n, now) > self.republish_after_s
        ]
        if stale:
            log.info("relay: %d published records are not in the ledger yet; publishing again", len(stale))
            self.outbox.mark_unpublished(stale)
        for r in rows:
            if r.record_id in held:
                self._sent_at.pop(r.n, None)
        return bool(held)


__all__ = ["Relay"]
