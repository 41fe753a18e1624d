"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import infermeter
from infermeter.api import (
    admin,
    commitments,
    completions,
    docs,
    errors,
    exports,
    ledger,
    openapi,
    plans,
    system,
    usage,
)
from infermeter.api import log as public_log
from infermeter.api.body_limit import BodyLimit
from infermeter.api.service import ServingService
from infermeter.dashboard import routes as dashboard


def create_app(service: ServingService, *, manage: bool = True) -> FastAPI:
    """Serve ``service``. With ``manage``, the app starts and stops it with its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage:
            service.start()
        try:
            yield
        finally:
            if manage:
                service.stop()

    app = FastAPI(
        title="infermeter",
        version=infermeter.__version__,
        lifespan=lifespan,
        docs_url=None,  # served by api.docs from vendored assets (works offline)
        redoc_url=None,
    )
    app.state.service = service
    errors.install(app)
    app.include_router(completions.router)
    app.include_router(usage.router)
    app.include_router(ledger.router)
    app.include_router(public_log.router)
    app.include_router(system.router)
    admin.install(app)
    app.include_router(plans.router)
    app.include_router(commitments.router)
    app.include_router(exports.router)
    app.include_router(dashboard.router)
    app.include_router(docs.router)
    api = [completions.router, usage.router, ledger.router, public_log.router, system.router, admin.router]
    api += [plans.router, commitments.router, exports.router]
    openapi.install(app, api, list(service.router.models()))
    app.add_middleware(BodyLimit, max_bytes=service.settings.max_body_bytes)
    return app
