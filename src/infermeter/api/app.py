"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

import infermeter
from infermeter.api import admin, completions, errors, ledger, system, usage
from infermeter.api import log as public_log
from infermeter.dashboard import routes as dashboard


def create_app(service: Any, *, manage: bool = True) -> FastAPI:
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

    app = FastAPI(title="infermeter", version=infermeter.__version__, lifespan=lifespan)
    app.state.service = service
    errors.install(app)
    app.include_router(completions.router)
    app.include_router(usage.router)
    app.include_router(ledger.router)
    app.include_router(public_log.router)
    app.include_router(system.router)
    admin.install(app)
    app.include_router(dashboard.router)
    return app
