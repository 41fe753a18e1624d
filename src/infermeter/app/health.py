"""Fail closed: the service stops taking work the moment the ledger cannot append.

The store reports its health (``Store.health()``: None, or why its last commit failed).
``LedgerWatch`` is a daemon thread that reads it every ``poll_s``. Once it reads a fault it
cancels every request in flight (each is cut at the worker's next step; its record cannot
be written either, so its client gets an error, never the rest of the output for free) and
then probes the store every ``probe_s`` with a real write that adds no entry, until one
commits. While the fault lasts, ``Service.check_admission`` refuses every new request with
a 503 naming the cause, and ``/healthz`` and ``/readyz`` answer 503 with it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from infermeter.billing.store import Store

log = logging.getLogger(__name__)


def fault_message(cause: str, db_path: Path) -> str:
    """What a client, a probe and the log are told while the ledger cannot append."""
    return (
        f"the usage ledger cannot append ({cause}); no request is admitted until it can "
        f"(retried every second): free space on, or repair, the disk holding {db_path}"
    )


class LedgerWatch:
    """Watches ``store.health()``; on a fault calls ``on_fault`` and probes until it clears."""

    def __init__(
        self,
        store: Store,
        on_fault: Callable[[str], None],
        *,
        poll_s: float = 0.05,
        probe_s: float = 1.0,
    ) -> None:
        self.store = store
        self.on_fault = on_fault
        self.poll_s = poll_s
        self.probe_s = probe_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="infermeter-ledger-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            cause = self.store.health()
            if cause is None:
                continue
            log.error("ledger fault: %s; refusing requests and cutting those in flight", cause)
            while cause is not None and not self._stop.is_set():
                try:
                    self.on_fault(cause)  # again each round: nothing admitted in a race runs on
                    if self._stop.wait(self.probe_s):
                        return
                    cause = self.store.probe()
                except Exception:  # the watch must outlive any one failure
                    log.exception("ledger health probe failed")
            if cause is None:
                log.warning("ledger recovered: appends commit again; admitting requests")


__all__ = ["LedgerWatch", "fault_message"]
