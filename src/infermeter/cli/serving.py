"""What ``infermeter serve`` does around the app: check the ledger first, drain on SIGTERM.

``check_ledger`` runs before any engine loads: the ledger must verify (``billing.
checkpoint_log.verify_at_start``) or ``serve`` exits 1 naming the first bad entry, unless
``--allow-unverified`` (then it says so on stderr and in the log, and serves anyway).

``run`` serves with uvicorn. On SIGTERM (or Ctrl-C) uvicorn stops accepting connections and
waits at most ``graceful_timeout`` seconds for the requests in flight; then it cancels what
is left, and the service's shutdown cancels anything still in the worker, prices each for
the work done (``status=cancelled``) and commits every record before the process exits.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from rich.console import Console

from infermeter.billing.checkpoint_log import verify_at_start
from infermeter.billing.signing import LedgerKeys
from infermeter.config import Settings
from infermeter.core.errors import LedgerIntegrityError

if TYPE_CHECKING:
    from infermeter.app.service import Service

log = logging.getLogger("infermeter.serve")
CUTOFF_GRACE_S = 5  # after the drain deadline: for cancelled requests to answer and commit
err = Console(stderr=True, highlight=False)


def check_ledger(settings: Settings) -> str:
    """Verify the ledger and sign a checkpoint over it; returns a line saying what passed.

    Raises LedgerIntegrityError (exit 1) when it fails, unless ``settings.allow_unverified``.
    """
    from infermeter.app.stores import make_checkpoint_log, make_store

    settings.home.mkdir(parents=True, exist_ok=True)
    store = make_store(settings)
    try:
        cplog = make_checkpoint_log(settings, LedgerKeys(settings.home / "keys"), store)
        try:
            found = verify_at_start(cplog, store.verify)
        finally:
            cplog.close()
    finally:
        store.close()
    if found.problem is None:
        cp = found.checkpoint
        signed = f"; checkpoint {cp.number} covers {cp.tree_size:,}" if cp is not None else ""
        return f"ledger verified: {found.entries:,} entries{signed}"
    where = "" if found.first_bad_seq is None else f" (first bad entry: {found.first_bad_seq})"
    if not settings.allow_unverified:
        raise LedgerIntegrityError(
            f"refusing to serve: the ledger at {settings.db or settings.db_path} failed verification{where}: "
            f"{found.problem} Inspect it with `infermeter ledger verify`; to serve on it anyway "
            "(records appended now chain onto the damaged ledger), pass --allow-unverified.",
            seq=found.first_bad_seq,
        )
    warning = (
        f"SERVING ON AN UNVERIFIED LEDGER (--allow-unverified){where}: {found.problem} "
        "No checkpoint was signed over it."
    )
    log.critical(warning)
    err.print(f"[bold red]WARNING:[/] {warning}")
    return "ledger NOT verified (--allow-unverified)"


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the service when shutdown begins (readiness goes 503)."""

    def __init__(self, config: uvicorn.Config, service: Service, drain_s: float) -> None:
        super().__init__(config)
        self.service = service
        self.drain_s = drain_s
        self._cutoff: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.service.begin_drain()
        if self._cutoff is None:
            # At the drain deadline the service cancels what is left itself, so each request
            # ends as a normal response (billed `cancelled`, its record committed) within
            # CUTOFF_GRACE_S, before uvicorn would cancel the tasks mid-response.
            self._cutoff = threading.Timer(self.drain_s, self._cut_off)
            self._cutoff.daemon = True
            self._cutoff.start()
        super().handle_exit(sig, frame)

    def _cut_off(self) -> None:
        left = self.service.worker.cancel_all(timeout=CUTOFF_GRACE_S)
        if left:
            log.warning("drain deadline: cancelled %d request(s), each billed for the work done", left)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # uvicorn re-raises the captured signal after shutdown, so the process would die
            # of SIGTERM; a completed drain (every record committed) exits 0 instead.
            getattr(self, "_captured_signals", []).clear()


def banner(url: str, models: list[str]) -> str:
    """The start-up line: where the API is and every model it serves."""
    named = f"model {models[0]}" if len(models) == 1 else f"models {', '.join(models)}"
    return (
        f"OpenAI-compatible API on [bold]{url}/v1[/] ({named}); "
        f"dashboard at {url}/dashboard; API docs at {url}/docs; metrics at {url}/metrics (admin key)"
    )


def serve(settings: Settings, make_service: Callable[[Settings], Service], out: Console) -> int:
    """``infermeter serve``: check the ledger, load engines, make first-start keys, serve."""
    from infermeter.api.app import create_app

    out.print(f"infermeter: data in [bold]{settings.home.resolve()}[/]")
    out.print(check_ledger(settings) + "; loading engines…")
    service = make_service(settings)
    if not service.store.list_tenants():
        tenant = service.store.create_tenant("demo")
        _, secret = service.store.create_key(tenant.tenant_id)
        _, admin = service.store.create_key(None, admin=True)
        out.print("First start: created tenant [bold]demo[/] and keys (shown once, stored hashed):")
        out.print(f"  tenant key (demo): [bold green]{secret}[/]")
        out.print(f"  admin key:         [bold yellow]{admin}[/]")
    app = create_app(service)
    url = f"http://{settings.host}:{settings.port}"
    out.print(banner(url, service.router.models()))
    run(app, service, settings)
    out.print("stopped: every usage record is committed")
    return 0


def server_loop_and_parser() -> tuple[str, str]:
    """uvloop's event loop and the httptools HTTP parser (both dependencies) where they are
    installed; asyncio's loop and h11 otherwise (uvloop has no Windows build)."""
    import importlib.util

    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    return loop, http


def run(app: Any, service: Service, settings: Settings) -> None:
    """Serve ``app`` until SIGTERM/SIGINT; drain at most ``settings.graceful_timeout`` s."""
    loop, http = server_loop_and_parser()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # uvicorn's own deadline comes CUTOFF_GRACE_S after the service's cut-off, so that the
        # cancelled requests' responses can finish instead of being cut mid-body
        timeout_graceful_shutdown=settings.graceful_timeout + CUTOFF_GRACE_S,
        loop=loop,
        http=http,
    )
    DrainingServer(config, service, settings.graceful_timeout).run()
