"""The API's view of the service: every attribute and method a route may use, typed.

The HTTP layer reaches the running service only through ``ServingService``, so mypy
--strict checks each use, and ``create_app`` accepts anything that has these members
(``app.service.Service`` in production; tests may hand it their own). A route gets it
with ``service_of(request)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, cast

from fastapi import Request

if TYPE_CHECKING:
    from infermeter.app.limits import RateLimits
    from infermeter.app.pipeline import MeteringPipeline
    from infermeter.app.prices import Prices
    from infermeter.billing.budgets import BudgetBook
    from infermeter.billing.checkpoint_log import CheckpointLog
    from infermeter.billing.log_publisher import LogPublisher
    from infermeter.billing.pricing import PricePlan
    from infermeter.billing.public_log import PublicLog
    from infermeter.billing.store import Store
    from infermeter.config import Settings
    from infermeter.metering.window_ledger import WindowLedger, WindowMeters
    from infermeter.observability.metrics import Metrics
    from infermeter.runtime.admission import Admission
    from infermeter.runtime.engine import EngineInfo, Tokenizer
    from infermeter.runtime.router import Router
    from infermeter.runtime.worker import Worker


class ServingService(Protocol):
    """What the routes use of the service (``app.service.Service`` has all of it)."""

    settings: Settings
    store: Store
    metrics: Metrics
    checkpoints: CheckpointLog
    public_log: PublicLog | None
    log_publisher: LogPublisher | None
    budgets: BudgetBook
    plan: PricePlan
    prices: Prices
    rate_limits: RateLimits
    pipeline: MeteringPipeline
    worker: Worker
    tokenizers: dict[str, Tokenizer]
    router: Router
    admission: Admission
    window_ledger: WindowLedger | None
    started: bool
    state: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def engine_infos(self) -> list[EngineInfo]: ...

    def window_meters(self, request_id: str) -> WindowMeters | None: ...

    def health(self) -> str | None:
        """None while the ledger can append; else the cause."""
        ...

    def readiness(self) -> str | None:
        """None when ready for traffic; else why not (starting, draining, unhealthy)."""
        ...

    def check_admission(self) -> None:
        """Raise ``Unavailable`` naming the cause while new requests must be refused."""
        ...


def service_of(request: Request) -> ServingService:
    """The service the app was created with (``create_app`` stores it on ``app.state``)."""
    return cast("ServingService", request.app.state.service)


__all__ = ["ServingService", "service_of"]
